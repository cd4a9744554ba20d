"""Shared fixtures: a throw-away project folder with its own real MLflow store for every test.

Environment first, before anything imports prefect or mlflow: tests never write under ~/.prefect
or into the repository's own mlruns/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

_HOME = Path(tempfile.mkdtemp(prefix="char-rnn-tests-"))
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("CHAR_RNN_ROOT", None)
# As the documented serve command runs: every model a test loads (or serves) must load without pickle.
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"

import pytest  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

from char_rnn.layout import Layout  # noqa: E402
from char_rnn.params import Params, load_params, with_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TEXT_VOCAB = 40  # ids of the `text` fixture, which `untrained` predicts

# Small and fast: the blog's model on the blog's sentence, a few epochs.
TINY = {"train.epochs": 3, "evaluate.sample_length": 5}
SEED = (  # the blog's sentence, char_rnn/seed.txt
    "알엔엔 으로 자연어 처리하기 어렵지 않아요 기본은 전부 같기때문이죠 "
    "그래서 제가 쉽게 설명드리려고 하는겁니다 왜냐하면 쉬우니까요"
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def seed_project(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path, repo_params: Params) -> Layout:
    """The blog's pipeline as `make run` runs it (default params, 100 epochs), trained and registered once
    per session: the tests that only read a trained project share it instead of each training their own."""
    from char_rnn import stages

    layout = Layout(tmp_path_factory.mktemp("seed-project"))
    shutil.copy(REPO / "params.yaml", layout.params)
    layout.mlruns.mkdir()
    shutil.copy(migrated_store, layout.mlruns / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
        results = stages.run_all(repo_params, layout)
    (layout.root / "results.json").write_text(json.dumps(results, default=str), encoding="utf-8")
    return layout


@pytest.fixture
def tiny_params(repo_params: Params) -> Params:
    return with_overrides(repo_params, TINY)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Creating an MLflow sqlite store runs its migrations (~4 s): do it once, copy the file per test."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # no global URI: tests pick their own
    return db


@pytest.fixture
def layout(tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """A project root with the repository's params.yaml and a fresh copy of the MLflow store."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(migrated_store, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Layout(tmp_path)


def write_windows(
    text: str,
    folder: Path,
    length: int = 20,
    stride: int = 1,
    val: float = 0.0,
    tune: float = 0.0,
    test: float = 0.0,
    units: str = "closed",
):
    """The window stage's files for `text` under `folder` (vocab.json, windows/); returns their spec."""
    from char_rnn.params import SplitParams, VocabParams, WindowParams
    from char_rnn.windows import cut_windows, save_windows

    split = SplitParams(test_fraction=test, val_fraction=val, tune_fraction=tune)
    windows = cut_windows(text, WindowParams(length=length, stride=stride), split, VocabParams(units=units))
    save_windows(windows, folder / "vocab.json", folder / "windows")
    return windows.spec


def as_runtime(model: object) -> object:
    """A Keras model as every generator reads it: saved, then loaded by the NumPy runtime."""
    from char_rnn import inference
    from char_rnn.model import save_model

    with tempfile.TemporaryDirectory() as folder:
        save_model(model, Path(folder) / "model.keras")
        return inference.load(Path(folder) / "model.keras")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The installed `char-rnn` console script in a child process, as DVC runs it."""
    return subprocess.run(
        [str(BIN / "char-rnn"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def untrained():
    """A freshly initialised model: its predictions are close to uniform, but not exactly."""
    import keras

    from char_rnn.model import build_model
    from char_rnn.params import ModelParams

    keras.utils.set_random_seed(7)
    params = ModelParams(
        cell="gru", units=16, layers=1, dropout=0.0, recurrent_dropout=0.0, input="one_hot", embedding_dim=8, ensemble=1
    )
    return build_model(params, TEXT_VOCAB)


@pytest.fixture(scope="module")
def text() -> np.ndarray:
    """Random text with some repetition, so that the n-gram and the RNN disagree in interesting ways."""
    import numpy as np

    rng = np.random.default_rng(3)
    words = [rng.integers(0, TEXT_VOCAB, size=rng.integers(2, 6)) for _ in range(12)]
    return np.concatenate([words[i] for i in rng.integers(0, 12, size=120)]).astype(np.int32)[:400]


def saved_epoch(folder: Path, member: int) -> int:
    """The last epoch a member's checkpoint holds (0 when it has none yet), read as the stage wrote it."""
    from char_rnn.checkpoint import Checkpoints

    state = Checkpoints(folder, "").load(member) if (folder / f"member{member + 1}.npz").is_file() else None
    return state.epoch if state and not state.done else 0


# ---- two registrations at once ---------------------------------------------------------------------

RACE_EPOCHS = (1, 4, 12)  # the champion to beat, then two candidates, worse to better on the blog's sentence
# One registering process: imports and connects first, says it is ready, then registers when told to go,
# so both racers read the champion within milliseconds of each other.
RACER = """
import json, sys, time
from pathlib import Path
import mlflow.pyfunc, char_rnn.gate, char_rnn.generate, char_rnn.serving
from char_rnn import stages, tracking
from char_rnn.layout import Layout
from char_rnn.params import load_params
root, go = Path(sys.argv[1]), Path(sys.argv[2])
tracking.connect(Layout(root).mlruns)
(root / "ready").touch()
while not go.exists():
    time.sleep(0.005)
print(json.dumps(stages.register(load_params(root / "params.yaml"), Layout(root)), default=str))
"""


@pytest.fixture(scope="session")
def racers(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path, repo_params: Params) -> list[Layout]:
    """Three projects trained on the blog's sentence, six times over, for RACE_EPOCHS epochs, every stage but
    register: the last repetition is test text, on which more epochs score better."""
    from char_rnn import stages
    from pipelines.versioning import write_params

    layouts = []
    for epochs in RACE_EPOCHS:
        root = tmp_path_factory.mktemp(f"racer-{epochs}")
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        (root / "mlruns").mkdir()
        shutil.copy(migrated_store, root / "mlruns" / "mlflow.db")
        (root / "data" / "raw").mkdir(parents=True)
        (root / "data" / "raw" / "seed.txt").write_text(SEED * 6, encoding="utf-8")  # test text: its tail
        overrides = {**TINY, "train.epochs": epochs, "registry.model_name": "char-rnn-race",  # not the pipeline's
                     "corpus.source": "data/raw/seed.txt", "split.test_fraction": 0.1}  # fmt: skip
        layout, params = Layout(root), with_overrides(repo_params, overrides)
        write_params(layout, params)
        for stage in stages.STAGES[:-1]:
            stage.run(params, layout)
        layouts.append(layout)
    return layouts


def register_at_once(racers: list[Layout], tracking_uri: str) -> list[dict]:
    """The first project registers alone (the champion to beat), then the other two at the same instant,
    each in its own process against `tracking_uri`; returns the three register stage results."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    go = racers[0].root / f"go-{free_port()}"
    for layout in racers:
        (layout.root / "ready").unlink(missing_ok=True)
    command = [sys.executable, "-c", RACER]
    first = register_here(racers[0], tracking_uri)
    both = [subprocess.Popen([*command, str(layout.root), str(go)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for layout in racers[1:]]  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not all((layout.root / "ready").exists() for layout in racers[1:]):
            assert time.monotonic() < deadline and all(p.poll() is None for p in both), "a racer did not get ready"
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=300) for p in both]
    finally:
        for process in both:
            process.kill()
    assert [p.returncode for p in both] == [0, 0], [err[-3000:] for _, err in outputs]
    return [first] + [json.loads(out.splitlines()[-1]) for out, _ in outputs]


def register_here(layout: Layout, tracking_uri: str) -> dict:
    """The register stage in this process, against `tracking_uri`."""
    from char_rnn import stages

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        return json.loads(json.dumps(stages.register(load_params(layout.params), layout), default=str))


def assert_one_champion_the_better(results: list[dict], racers: list[Layout], tracking_uri: str) -> None:
    """The better candidate is champion whichever registered first, and the registrations took turns: the
    later one was compared with the earlier one's version, not both with the champion they started from."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    bits = [json.loads(layout.metrics.read_text(encoding="utf-8"))["bits_per_char"]["test"] for layout in racers]
    assert bits[0] > bits[1] > bits[2], bits  # more epochs, better: the premise
    first, *pair = results
    name = first["model_name"]
    assert first["alias"] == "champion"
    assert str(client.get_model_version_by_alias(name, "champion").version) == results[2]["version"]
    earlier, later = sorted(pair, key=lambda result: int(result["version"]))
    assert earlier["gate"]["champion_version"] == first["version"]
    assert later["gate"]["champion_version"] == earlier["version"], "the two registrations overlapped"
    assert client.search_registered_models(f"name = '{name}.lock'") == []  # released
