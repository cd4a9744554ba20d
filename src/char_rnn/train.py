"""Training: seeded, deterministic Keras fit over streamed windows, logged live to MLflow.

A run that ends in NaN, an error or an interrupt is marked FAILED in MLflow and writes no model
file, so the previous model (and every registered version) stays as it was.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from char_rnn.errors import PipelineError
from char_rnn.params import Params
from char_rnn.windows import WindowSpec, window_dataset


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite; no model was written."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    history: dict[str, list[float]]


def seed_everything(seed: int) -> None:
    """Same seed, same params, same corpus: bit-identical loss histories on CPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def pip_requirements() -> list[str]:
    """Pinned from what is installed: without them MLflow asks pip over the network (23 s vs 0.3 s)."""
    return [f"{name}=={metadata.version(name)}" for name in ("tensorflow-cpu", "keras", "numpy")]


def mlflow_epoch_logger() -> Any:
    import keras
    import mlflow

    class EpochLogger(keras.callbacks.Callback):
        """Logs every epoch as it ends, so a long run can be watched in the UI while it trains."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            finite = {k: float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
            mlflow.log_metrics(finite, step=epoch)

    return EpochLogger()


def write_history(history: dict[str, list[float]], path: Path) -> None:
    keys = sorted(history)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch, row in enumerate(zip(*(history[k] for k in keys)), start=1):
            writer.writerow([epoch, *(f"{v:.6g}" for v in row)])


def signature(vocab_size: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.int32), (-1, -1), "ids")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, vocab_size), "next_char")]),
    )


def fit(
    params: Params, spec: WindowSpec, train_ids: np.ndarray, val_ids: np.ndarray, callbacks: Sequence[Any] = ()
) -> tuple[Any, dict[str, list[float]]]:
    """Build, compile and fit; `callbacks` come after the NaN guard and the MLflow epoch logger."""
    import keras

    from char_rnn.model import build_model, compile_model

    seed_everything(params.train.seed)
    model = build_model(params.model, spec.vocab_size)
    compile_model(model, params.train, steps_per_epoch=-(-spec.train_windows // params.train.batch_size))
    batches = {"batch_size": params.train.batch_size, "length": spec.length, "stride": spec.stride}
    train_data = window_dataset(train_ids, shuffle_seed=params.train.seed, **batches)
    val_data = window_dataset(val_ids, shuffle_seed=None, **batches) if spec.val_windows else None
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=params.train.epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), mlflow_epoch_logger(), *early_stopping(params), *callbacks],
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    ).history
    last = {k: v[-1] for k, v in history.items()}
    if not all(math.isfinite(v) for v in last.values()):
        raise TrainingDiverged(
            f"training diverged at epoch {len(history['loss'])}: {last}; lower train.learning_rate"
        )
    return model, history


def early_stopping(params: Params) -> list[Any]:
    """Stop when val_loss stops improving and keep the best epoch's weights, not the last."""
    import keras

    if not params.train.early_stopping_patience:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.train.early_stopping_patience, restore_best_weights=True
        )
    ]


def save_model_atomically(model: Any, path: Path) -> None:
    """Keras writes in place; a `.partial.keras` sibling plus rename never leaves a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.keras")
    model.save(partial)
    partial.replace(path)


def train(
    params: Params,
    spec: WindowSpec,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    mlruns: Path,
    model_path: Path,
    history_path: Path,
    extra_artifacts: list[Path],
    tags: dict[str, str] | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """The train stage; the MLflow run it opens is closed here and resumed by evaluate."""
    import mlflow
    import mlflow.keras

    from char_rnn.tracking import connect

    experiment_id = connect(mlruns)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags or {}) as run:
        mlflow.log_params({**params.flat(), **{f"data.{k}": v for k, v in asdict(spec).items()}})
        for artifact in extra_artifacts:
            mlflow.log_artifact(str(artifact), artifact_path="data")
        model, history = fit(params, spec, train_ids, val_ids, callbacks)
        save_model_atomically(model, model_path)
        write_history(history, history_path)
        mlflow.log_artifact(str(history_path), artifact_path="reports")
        info = mlflow.keras.log_model(
            model, name="model", signature=signature(spec.vocab_size), pip_requirements=pip_requirements()
        )
    return TrainResult(run_id=run.info.run_id, model_uri=info.model_uri, history=history)
