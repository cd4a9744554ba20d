"""The flow's pieces that need no server: retry classification, params resolution, the worker's budget,
declared dependencies."""

from __future__ import annotations

import ast
import errno
import os
import re
import sqlite3
import sys
import time
import tomllib

import pytest

from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.params import Params, ParamsError, load_params
from char_rnn.training import TrainingDiverged
from char_rnn.validation import ValidationFailed
from conftest import REPO
from pipelines.failures import TransientError, is_transient
from pipelines.flow import resolve_params
from pipelines.versioning import write_params
from pipelines.worker import ModelWorker, StageTimedOut


@pytest.mark.parametrize(
    "exc",
    [
        ValidationFailed("x"),
        TrainingDiverged("x"),
        ParamsError("x"),
        StageTimedOut("x"),
        FileNotFoundError("data/corpus.txt"),
        KeyError("x"),
        ValueError("database is fine"),
    ],
)
def test_user_errors_and_bugs_are_not_retried(exc: Exception) -> None:
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database is locked"),
        ConnectionResetError(),
        TimeoutError(),
        RuntimeError("ERROR: Unable to acquire lock"),
        TransientError("dvc commit: busy"),
    ],
)
def test_transient_errors_are_retried(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS])
def test_a_write_the_machine_refuses_for_good_is_not_retried_and_says_so_in_one_line(code: int) -> None:
    """A full disk, a file-size or quota limit, a read-only file system: a retry meets the same refusal.
    (A real flow run on a full disk: tests/test_flow.py.)"""
    from pipelines.failures import machine_fault, one_line

    path = "/srv/project/models/model.keras"
    try:  # as `write_atomically` raises it: naming the file, from the write's own error
        raise OSError(code, os.strerror(code), path) from OSError(code, os.strerror(code))
    except OSError as refused:
        assert not is_transient(refused) and not is_transient(refused.__cause__)
        assert one_line(machine_fault(refused)).startswith(f"MachineFault: could not write {path}: {os.strerror(code)}")
    full = sqlite3.OperationalError("database or disk is full")  # SQLite's own words, as MLflow passes them on
    assert not is_transient(full) and one_line(machine_fault(full)).startswith("MachineFault: could not write")
    assert machine_fault(sqlite3.OperationalError("database is locked")) is None


def test_overrides_are_validated_like_params_yaml(layout: Layout) -> None:
    assert resolve_params(layout, None, {"train.epochs": 2}).train.epochs == 2
    with pytest.raises(ParamsError, match="train.epochs"):
        resolve_params(layout, None, {"train.epochs": 0})


def test_run_params_are_written_into_params_yaml_changing_nothing_else(layout: Layout, tiny_params: Params) -> None:
    before = layout.params.read_text(encoding="utf-8").splitlines()
    assert write_params(layout, tiny_params) == ["evaluate.sample_length", "train.epochs"]
    assert load_params(layout.params) == tiny_params
    after = layout.params.read_text(encoding="utf-8").splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert [new.split("#")[0].strip() for _, new in changed] == ["epochs: 3", "sample_length: 5"]
    assert "  random: null            # or N: a seeded sample of N configs of the grid" in after
    assert write_params(layout, tiny_params) == []


def test_a_failure_reads_as_one_line_naming_its_kind() -> None:
    from char_rnn.validation import ValidationFailed
    from pipelines.failures import RemotePipelineError, one_line

    assert one_line(ValidationFailed("validation failed:\n  corpus: a\n  windows: b")) == (
        "ValidationFailed: validation failed: corpus: a; windows: b"
    )
    assert one_line(RemotePipelineError("TrainingDiverged: loss is NaN")) == "TrainingDiverged: loss is NaN"


def test_the_run_report_links_the_mlflow_run_and_says_what_each_stage_did() -> None:
    from pipelines.flow import report

    markdown = report({"train": {"run_name": "seed · x", "run_url": "http://127.0.0.1:5000/#/r", "summary": "3 epochs"},
                       "register": {"summary": "char-rnn-seed version 2 is champion: better"}, "dvc": {}})  # fmt: skip
    assert "MLflow run [seed · x](http://127.0.0.1:5000/#/r)" in markdown
    assert "- **register**: char-rnn-seed version 2 is champion: better" in markdown


def test_a_stage_past_its_budget_is_stopped(layout: Layout, tiny_params: Params) -> None:
    worker = ModelWorker(layout.root)
    start = time.monotonic()
    with pytest.raises(StageTimedOut, match="budget of 2 s"), worker:
        worker.call("train", tiny_params, timeout_s=2)
    assert worker.process.poll() is not None
    assert time.monotonic() - start < 15
    assert not layout.fit_model.exists()
    assert isinstance(StageTimedOut("x"), PipelineError)


def test_every_package_the_code_imports_is_a_declared_dependency() -> None:
    """`pip install .` must bring what `char_rnn` and the drivers import, not leave it to another package's
    dependencies (psutil and ruamel.yaml came with MLflow and DVC until they were declared)."""
    from importlib import metadata

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [requirement for extra in project["optional-dependencies"].values() for requirement in extra]
    declared = {_canonical(re.match(r"[A-Za-z0-9._-]+", req)[0]) for req in [*project["dependencies"], *extras]}
    imported: set[str] = set()
    for path in [*(REPO / "src" / "char_rnn").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "char_rnn", "pipelines"}
    providers = metadata.packages_distributions()
    undeclared = sorted(top for top in third_party if not {_canonical(d) for d in providers.get(top, [])} & declared)
    assert undeclared == [], "imported but not in pyproject.toml's dependencies"
    assert {"psutil", "ruamel", "h5py", "mlflow"} <= third_party  # the premise: the walk finds the imports


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()
