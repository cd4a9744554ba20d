"""Resume after a kill: a fit interrupted at an epoch's end and rerun ends with the uninterrupted weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from char_rnn import stages
from char_rnn.checkpoint import Checkpoints, EpochState, fingerprint
from char_rnn.layout import Layout
from char_rnn.params import Params, with_overrides

# An ensemble of two GRUs with dropout, early stopping on a validation split and several batches per
# epoch: every piece of state a resume has to put back (moments, seed states, patience, data order).
RESUMABLE = {
    "window.length": 8,
    "vocab.units": "open",
    "split.val_fraction": 0.3,
    "model.cell": "gru",
    "model.units": 16,
    "model.dropout": 0.2,
    "model.ensemble": 2,
    "train.epochs": 6,
    "train.batch_size": 8,
    "train.early_stopping_patience": 2,
    "train.lr_schedule": "cosine",
    "train.learning_rate": 0.004,
}


class Killed(Exception):
    """Stands in for the kill (tests/test_faults.py sends real SIGKILLs): raised in the middle of the epoch
    after `epoch`, so that the last checkpoint is that epoch's end."""


def kill_after(member: int, epoch: int, current: int) -> list[Any]:
    import keras

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            if current == member and self.epoch == epoch:
                raise Killed(f"member {member + 1}, during epoch {epoch + 1}")

        def on_epoch_begin(self, e: int, logs: dict[str, float] | None = None) -> None:
            self.epoch = e

    return [Kill()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, repo_params: Params) -> tuple[Params, Any]:
    from char_rnn.windows import load_windows

    params = with_overrides(repo_params, RESUMABLE)
    layout = Layout(tmp_path_factory.mktemp("resume"))
    stages.ingest(params, layout)
    stages.window(params, layout)
    return params, load_windows(layout.windows)


def fit_all(params: Params, windows: Any, checkpoints: Checkpoints | None, callbacks: Any = lambda i: []) -> Any:
    from char_rnn.training import fit_members

    spec, train_ids, val_ids = windows
    return fit_members(params.model, params.train, spec, train_ids, val_ids, callbacks, checkpoints=checkpoints)


@pytest.fixture(scope="module")
def uninterrupted(data: tuple[Params, Any]) -> Any:
    return fit_all(*data, None)


@pytest.mark.integration  # trains an ensemble a few times over
@pytest.mark.parametrize(
    ("member", "epoch"),
    [
        (1, 1),  # the first member done, the second killed in its second epoch
        (0, 2),  # the first member in its third epoch, early stopping counting
        (1, 0),  # the second member before its first epoch ended
    ],
)
def test_a_fit_killed_during_an_epoch_resumes_to_the_uninterrupted_weights(
    data, uninterrupted, tmp_path: Path, member: int, epoch: int
) -> None:
    params, windows = data
    key = fingerprint(params.model, params.train)
    checkpoints, _ = Checkpoints.open(tmp_path / "train", key)
    with pytest.raises(Killed):
        fit_all(params, windows, checkpoints, lambda i: kill_after(member, epoch, i))
    saved = checkpoints.load(member)
    assert saved.epoch == epoch and not saved.done if epoch else saved is None
    if member:
        assert checkpoints.load(0).done  # the first member ended before the kill: kept, not retrained

    resumed_from, _ = Checkpoints.open(tmp_path / "train", key)
    trained: list[tuple[int, int]] = []
    resumed = fit_all(params, windows, resumed_from, lambda i: [epoch_counter(i, trained)])
    assert trained[0] == (member, epoch + 1)
    assert all(m >= member for m, _ in trained)  # nothing before the kill was trained again
    for a, b in zip(uninterrupted.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.histories == uninterrupted.histories


def epoch_counter(member: int, trained: list[tuple[int, int]]) -> Any:
    import keras

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, e: int, logs: dict[str, float] | None = None) -> None:
            trained.append((member, e + 1))

    return Count()


def test_a_checkpoint_of_another_training_is_discarded_and_its_run_named(tmp_path: Path) -> None:
    checkpoints, discarded = Checkpoints.open(tmp_path / "train", fingerprint({"epochs": 6}, "data md5"))
    assert discarded is None
    checkpoints.remember(run_id="abc")
    state = EpochState(2, [np.ones((2, 3))], [np.zeros(1)], {"loss": [2.0, 1.5]}, {"wait": 1}, [np.ones((2, 3))])
    checkpoints.save(0, state)
    same, discarded = Checkpoints.open(tmp_path / "train", fingerprint({"epochs": 6}, "data md5"))
    assert discarded is None and same.meta["run_id"] == "abc"
    loaded = same.load(0)
    assert (loaded.epoch, loaded.history, loaded.stopping, loaded.done) == (2, {"loss": [2.0, 1.5]}, {"wait": 1}, False)
    np.testing.assert_array_equal(loaded.best_weights[0], np.ones((2, 3)))
    fresh, discarded = Checkpoints.open(tmp_path / "train", fingerprint({"epochs": 7}, "data md5"))
    assert discarded == {"key": same.key, "run_id": "abc"}
    assert fresh.load(0) is None and "run_id" not in fresh.meta
