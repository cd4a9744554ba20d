"""Where every stage reads and writes: one place for the file names that dvc.yaml also lists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def find_root(start: Path | None = None) -> Path:
    """The project root: `CHAR_RNN_ROOT`, else the nearest folder at or above `start` with params.yaml."""
    if env := os.environ.get("CHAR_RNN_ROOT"):
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


@dataclass(frozen=True)
class Layout:
    """`root` holds the data, the shared reports and the MLflow store; `run_dir` (default: `root`)
    holds what one training produces, so that a sweep can train several models side by side."""

    root: Path
    run_dir: Path | None = None

    @property
    def _run(self) -> Path:
        return self.run_dir or self.root

    def for_run(self, run_dir: Path) -> Layout:
        return Layout(self.root, run_dir)

    @classmethod
    def discover(cls) -> Layout:
        return cls(find_root())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def corpus(self) -> Path:
        return self.root / "data" / "corpus.txt"

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
    def model(self) -> Path:
        return self._run / "models" / "model.keras"

    @property
    def hybrid(self) -> Path:
        """The hybrid's mixture weights (RNN, n-gram, cache), fitted by the train stage on the tuning slice."""
        return self._run / "models" / "hybrid.json"

    @property
    def ngram(self) -> Path:
        """The Kneser-Ney model of the baseline stage: the n-gram that is scored and mixed in."""
        return self.root / "models" / "ngram.npz"

    @property
    def train_run(self) -> Path:
        """Links the train stage's MLflow run to evaluate and register, which log into the same run."""
        return self._run / "models" / "run.json"

    @property
    def history(self) -> Path:
        return self._run / "reports" / "history.csv"

    @property
    def metrics(self) -> Path:
        return self._run / "reports" / "metrics.json"

    @property
    def plot(self) -> Path:
        return self._run / "reports" / "loss_accuracy.png"

    @property
    def sample(self) -> Path:
        return self._run / "reports" / "sample.txt"

    @property
    def registration(self) -> Path:
        return self._run / "reports" / "registration.json"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"
