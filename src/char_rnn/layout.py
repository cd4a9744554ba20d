"""Where every stage reads and writes (one place for the file names that dvc.yaml also lists), and
how a file is replaced whole."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from char_rnn.errors import PipelineError

# Where DVC runs an experiment outside the workspace (`dvc exp run --temp`, `--queue`): a temporary copy
# of the repository that DVC deletes afterwards. DVC names the repository it belongs to in DVC_ROOT.
DVC_TEMP_COPIES = (".dvc", "tmp", "exps")


class StoreUnreachable(PipelineError):
    """An experiment in a temporary copy that cannot name the project's MLflow store: nothing is logged
    or registered into a store that DVC deletes with the copy."""


def find_root(start: Path | None = None) -> Path:
    """The project root: `CHAR_RNN_ROOT`, else the nearest folder at or above `start` with params.yaml."""
    if env := os.environ.get("CHAR_RNN_ROOT"):
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def store_home(root: Path) -> Path:
    """The folder whose `mlruns/` is the project's MLflow store: `root`, or, for an experiment DVC runs
    in a temporary copy, the repository DVC_ROOT names (the copy's own store would vanish with it)."""
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and Path(dvc_root).resolve() != root.resolve():
        return Path(dvc_root).resolve()
    parts = root.resolve().parts
    in_copy = any(parts[i : i + 3] == DVC_TEMP_COPIES for i in range(len(parts)))
    if in_copy and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise StoreUnreachable(
            f"{root} is a temporary copy that DVC deletes after the experiment, and neither DVC_ROOT nor"
            " MLFLOW_TRACKING_URI names the project's MLflow store: not logging or registering into the"
            " copy's own store; run the experiment with DVC (`dvc exp run`), which sets DVC_ROOT"
        )
    return root


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write a sibling, then rename it over `path`: a failure midway leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        if isinstance(content, str):
            partial.write_text(content, encoding="utf-8", newline="")
        else:
            partial.write_bytes(content)
        partial.replace(path)
    except OSError as exc:  # name the file: a failed write() does not
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        partial.unlink(missing_ok=True)  # a full disk leaves no half file behind


def replace_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """`write` a sibling folder, then swap it in: a failure midway leaves the previous folder whole."""
    partial, previous = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".previous")
    for leftover in (partial, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        try:
            write(partial)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(folder)) from exc
        if folder.exists():
            folder.rename(previous)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


@dataclass(frozen=True)
class Layout:
    """`root` holds the data, the reports, the models and (unless an experiment's copy) the MLflow store."""

    root: Path

    @classmethod
    def discover(cls) -> Layout:
        return cls(find_root())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def check(self) -> Path:
        """What the check stage found: the corpus source and its length, once every param passed."""
        return self.root / "reports" / "check.json"

    @property
    def corpus(self) -> Path:
        return self.root / "data" / "corpus.txt"

    @property
    def documents(self) -> Path:
        """The corpus's documents: names, sha256 and places (`char_rnn.corpus.manifest`)."""
        return self.root / "data" / "documents.json"

    @property
    def profile(self) -> Path:
        """What the model trains on (`char_rnn.drift.training_profile`), logged with its run."""
        return self.root / "data" / "profile.json"

    @property
    def drift_report(self) -> Path:
        return self.root / "reports" / "drift.json"

    @property
    def vocab(self) -> Path:
        return self.root / "data" / "vocab.json"

    @property
    def windows(self) -> Path:
        return self.root / "data" / "windows"

    @property
    def validation_report(self) -> Path:
        return self.root / "reports" / "validation.json"

    @property
    def baseline(self) -> Path:
        return self.root / "reports" / "baseline.json"

    @property
    def fit_model(self) -> Path:
        """The first fit: the RNN(s) trained on the training text alone, which the tune stage weighs."""
        return self.root / "models" / "fit.keras"

    @property
    def fit_record(self) -> Path:
        """Each member's seed and epochs (trained, kept): what the refit repeats."""
        return self.root / "models" / "fit.json"

    @property
    def fit_history(self) -> Path:
        return self.root / "reports" / "fit_history.csv"

    @property
    def model(self) -> Path:
        """The model that is scored, registered and generates: the refit, or the first fit without one."""
        return self.root / "models" / "model.keras"

    @property
    def hybrid(self) -> Path:
        """What the tune stage chose on the tuning slice: the hybrid's weights, dynamic evaluation's rate."""
        return self.root / "models" / "hybrid.json"

    @property
    def ngram(self) -> Path:
        """The Kneser-Ney model of the baseline stage: the n-gram that is scored and mixed in."""
        return self.root / "models" / "ngram.npz"

    @property
    def train_run(self) -> Path:
        """Links the train stage's MLflow run to the later stages, which log into the same run."""
        return self.root / "models" / "run.json"

    @property
    def history(self) -> Path:
        """The scored model's epochs: the refit's, or the first fit's (member 1 of an ensemble)."""
        return self.root / "reports" / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "reports" / "metrics.json"

    @property
    def plot(self) -> Path:
        return self.root / "reports" / "loss_accuracy.png"

    @property
    def sample(self) -> Path:
        return self.root / "reports" / "sample.txt"

    @property
    def registration(self) -> Path:
        return self.root / "reports" / "registration.json"

    @property
    def checkpoints(self) -> Path:
        """Training's state at each epoch's end, to resume after a kill: in no DVC output, not in git."""
        return self.root / "models" / "checkpoints"

    @property
    def lock(self) -> Path:
        """Held by the run that is using the project (`char_rnn.lock`); says who holds it; not in git."""
        return self.root / ".char-rnn.lock"

    @property
    def mlruns(self) -> Path:
        """The MLflow store: the project's, also for an experiment in a temporary copy (`store_home`)."""
        return store_home(self.root) / "mlruns"
