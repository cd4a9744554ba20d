"""Training: seeded, deterministic Keras fits of one RNN or an ensemble, over streamed windows.

Nothing here writes a file or talks to MLflow: the train and refit stages pass the callbacks that
log each epoch and write what a fit returns. A loss that becomes NaN raises `TrainingDiverged`
before any model exists to be saved, so the previous model stays as it was.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from char_rnn.checkpoint import Checkpoints, EpochState
from char_rnn.errors import PipelineError
from char_rnn.params import ModelParams, TrainParams
from char_rnn.windows import WindowSpec, count_windows, window_dataset

History = dict[str, list[float]]


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite; no model was written."""


@dataclass(frozen=True)
class Fit:
    """The fitted members averaged into one model, and each member's history (epoch by epoch)."""

    model: Any
    histories: list[History]


class MemberRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    epochs: int = Field(ge=1, description="epochs trained")
    kept_epochs: int = Field(ge=1, description="epochs up to the weights kept (early stopping's best)")


class FitRecord(BaseModel):
    """`models/fit.json`: what the refit needs from the first fit, one entry per ensemble member."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[MemberRecord] = Field(min_length=1)
    warm_start: str = "scratch"  # the version the weights started from (models:/name/N), for the refit


def seed_everything(seed: int) -> None:
    """Same seed, same params, same corpus: bit-identical loss histories on CPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(
    model_params: ModelParams,
    train_params: TrainParams,
    spec: WindowSpec,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    callbacks: Sequence[Any] = (),
    member: int = 0,
    epochs: int | None = None,
    checkpoints: Checkpoints | None = None,
    start: Callable[[int, Any], None] | None = None,
) -> tuple[Any, History]:
    """Build, compile and fit one RNN, seeded `train.seed + member`; `callbacks` follow the NaN guard.

    `epochs` (a refit) trains exactly that many epochs without early stopping, on the same learning
    rate schedule; otherwise `train.epochs`, with early stopping when it is on. With `checkpoints`,
    the state is saved at every epoch's end and a killed fit resumes from it (`char_rnn.checkpoint`).
    `start(member, model)` sets the built model's first weights (a warm start, `char_rnn.warm_start`).
    """
    import keras

    from char_rnn.model import build_model, compile_model

    seed = train_params.seed + member
    seed_everything(seed)
    name = f"member_{member + 1}" if model_params.ensemble > 1 else None
    model = build_model(model_params, spec.vocab_size, name, seed)
    if start is not None:
        start(member, model)
    windows = count_windows(len(train_ids), spec.length, spec.stride)
    compile_model(model, train_params, steps_per_epoch=-(-windows // train_params.batch_size))
    state = checkpoints.load(member) if checkpoints else None
    total = epochs or train_params.epochs
    if state is not None:
        _restore(model, state)
        if state.done:
            return model, state.history
        if state.epoch >= total or state.stopping.get("stopped_epoch"):  # killed between its last epoch and its end
            if state.best_weights is not None:
                model.set_weights(state.best_weights)  # what early stopping's end would have done
            checkpoints.save(member, _state(model, state.epoch, state.history, None, done=True))
            return model, state.history
    batches = {"batch_size": train_params.batch_size, "length": spec.length, "stride": spec.stride}
    train_data = window_dataset(train_ids, shuffle_seed=seed, **batches)
    first = state.epoch if state else 0
    for _ in range(first):  # epoch e's order is the dataset's e-th reshuffle: skip those already trained
        iter(train_data)
    val_data = window_dataset(val_ids, shuffle_seed=None, **batches) if spec.val_windows else None
    stopping = early_stopping(train_params) if epochs is None else []
    saver = [_epoch_saver(checkpoints, member, stopping, state)] if checkpoints else []
    with warnings.catch_warnings():
        # With fewer batches per epoch than STEPS_PER_EXECUTION, Keras warns that the data "ran out" at
        # every epoch's end: that is where the epoch ends, and nothing is lost.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        new = model.fit(
            train_data,
            validation_data=val_data,
            epochs=total,
            initial_epoch=first,
            callbacks=[keras.callbacks.TerminateOnNaN(), *stopping, *callbacks, *saver],
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
        ).history
    past = state.history if state else {}
    history = {key: [*past.get(key, []), *new.get(key, [])] for key in {**past, **new}}
    last = {k: v[-1] for k, v in history.items()}
    if not all(math.isfinite(v) for v in last.values()):
        raise TrainingDiverged(f"training diverged at epoch {len(history['loss'])}: {last}; lower train.learning_rate")
    if checkpoints:
        checkpoints.save(member, _state(model, len(history["loss"]), history, None, done=True))
    return model, history


def _state(model: Any, epoch: int, history: History, stopping: Any, done: bool = False) -> EpochState:
    counters = {}
    if stopping is not None:
        best = None if stopping.best is None else float(stopping.best)
        counters = {"wait": stopping.wait, "best": best, "best_epoch": stopping.best_epoch,
                    "stopped_epoch": stopping.stopped_epoch}  # fmt: skip
    return EpochState(
        epoch=epoch,
        variables=[np.array(v) for v in model.variables],
        optimizer=[np.array(v) for v in model.optimizer.variables],
        history=history,
        stopping=counters,
        best_weights=None if stopping is None or stopping.best_weights is None else list(stopping.best_weights),
        done=done,
    )


def _restore(model: Any, state: EpochState) -> None:
    """Every variable of the model and its optimizer as they were at the checkpoint."""
    model.optimizer.build(model.trainable_variables)
    for have, saved in ((model.variables, state.variables), (model.optimizer.variables, state.optimizer)):
        if len(have) != len(saved):
            raise ValueError(f"a checkpoint of {len(saved)} variables cannot restore a model of {len(have)}")
        for variable, value in zip(have, saved):
            variable.assign(value)


def _epoch_saver(checkpoints: Checkpoints, member: int, stopping: list[Any], state: EpochState | None) -> Any:
    """Saves the state at each epoch's end; first puts early stopping's counters back as they were.

    Placed after early stopping and the loggers, so what it saves has seen the epoch's figures.
    """
    import keras

    watcher = next((c for c in stopping if isinstance(c, keras.callbacks.EarlyStopping)), None)
    past = state.history if state else {}

    class EpochSaver(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            self.history = {key: list(values) for key, values in past.items()}
            if watcher is not None and state is not None and state.stopping:
                for field, value in state.stopping.items():
                    setattr(watcher, field, value)
                watcher.best_weights = state.best_weights

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            for key, value in (logs or {}).items():
                self.history.setdefault(key, []).append(float(value))
            if all(math.isfinite(float(v)) for v in (logs or {}).values()):
                checkpoints.save(member, _state(self.model, epoch + 1, self.history, watcher))

    return EpochSaver()


def fit_members(
    model_params: ModelParams,
    train_params: TrainParams,
    spec: WindowSpec,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    callbacks: Callable[[int], Sequence[Any]],
    epochs: Sequence[int] | None = None,
    checkpoints: Checkpoints | None = None,
    start: Callable[[int, Any], None] | None = None,
) -> Fit:
    """`model.ensemble` RNNs one after another (member i seeded `train.seed + i`), averaged into one model.

    `callbacks(i)` gives member i's callbacks; `epochs[i]`, when given, is member i's refit length. A
    rerun after a kill keeps the members that were done and resumes the one that was training.
    """
    from char_rnn.model import average

    data = (model_params, train_params, spec, train_ids, val_ids)
    fits = [
        fit(*data, callbacks(i), i, epochs[i] if epochs else None, checkpoints, start)
        for i in range(model_params.ensemble)
    ]
    return Fit(average([model for model, _ in fits]), [history for _, history in fits])


def kept_epochs(train_params: TrainParams, history: History) -> int:
    """Epochs up to the weights training kept: the best val_loss with early stopping, else all."""
    if train_params.early_stopping_patience and "val_loss" in history:
        return int(np.argmin(history["val_loss"])) + 1
    return len(history["loss"])


def record(train_params: TrainParams, fitted: Fit, warm_start: str) -> FitRecord:
    members = [
        MemberRecord(
            seed=train_params.seed + i, epochs=len(history["loss"]), kept_epochs=kept_epochs(train_params, history)
        )
        for i, history in enumerate(fitted.histories)
    ]
    return FitRecord(members=members, warm_start=warm_start)


def early_stopping(train_params: TrainParams) -> list[Any]:
    """Stop when val_loss stops improving and keep the best epoch's weights, not the last."""
    import keras

    if not train_params.early_stopping_patience:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=train_params.early_stopping_patience, restore_best_weights=True
        )
    ]


def history_csv(history: History) -> str:
    """One row per epoch (numbered from 1), one column per Keras metric: what `dvc plots` draws."""
    keys = sorted(history)
    out = io.StringIO()
    writer = csv.writer(out)  # rows end in CRLF, as csv writes them
    writer.writerow(["epoch", *keys])
    for epoch, row in enumerate(zip(*(history[k] for k in keys)), start=1):
        writer.writerow([epoch, *(f"{v:.6g}" for v in row)])
    return out.getvalue()


def read_history(path: Path) -> History:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch"} if rows else {}
