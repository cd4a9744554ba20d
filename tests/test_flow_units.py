"""The flow's pieces that need no server: retry classification, params resolution, the worker's budget."""

from __future__ import annotations

import sqlite3
import time

import pytest

from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.params import Params, ParamsError, load_params
from char_rnn.training import TrainingDiverged
from char_rnn.validation import ValidationFailed
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


def test_overrides_are_validated_like_params_yaml(layout: Layout) -> None:
    assert resolve_params(layout, None, {"train.epochs": 2}).train.epochs == 2
    with pytest.raises(ParamsError, match="train.epochs"):
        resolve_params(layout, None, {"train.epochs": 0})


def test_run_params_are_written_into_params_yaml_keeping_comments(layout: Layout, tiny_params: Params) -> None:
    assert write_params(layout, tiny_params) == ["evaluate.sample_length", "train.epochs"]
    assert load_params(layout.params) == tiny_params
    assert "# the blog's SimpleRNN(units=100)" in layout.params.read_text(encoding="utf-8")
    assert write_params(layout, tiny_params) == []


def test_a_stage_past_its_budget_is_stopped(layout: Layout, tiny_params: Params) -> None:
    worker = ModelWorker(layout.root)
    start = time.monotonic()
    with pytest.raises(StageTimedOut, match="budget of 2 s"), worker:
        worker.call("train", tiny_params, timeout_s=2)
    assert worker.process.poll() is not None
    assert time.monotonic() - start < 15
    assert not layout.fit_model.exists()
    assert isinstance(StageTimedOut("x"), PipelineError)
