"""Training: seeded, deterministic Keras fit over streamed windows, logged live to MLflow.

A run that ends in NaN, an error or an interrupt is marked FAILED in MLflow and writes no model
file, so the previous model (and every registered version) stays as it was.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn.errors import PipelineError
from char_rnn.params import Params
from char_rnn.windows import WindowSpec, count_windows, window_dataset


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


def mlflow_epoch_logger(prefix: str = "") -> Any:
    import keras
    import mlflow

    class EpochLogger(keras.callbacks.Callback):
        """Logs every epoch as it ends, so a long run can be watched in the UI while it trains."""

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            finite = {prefix + k: float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
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
    params: Params,
    spec: WindowSpec,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    callbacks: Sequence[Any] = (),
    member: int = 0,
    refit_epochs: int | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Build, compile and fit one RNN; `callbacks` come after the NaN guard and the MLflow epoch logger.

    Member i of an ensemble is seeded `train.seed + i` and logs its epochs as `member<i+1>_<metric>`
    (the first one under the plain names). A refit (`refit_epochs`) trains that many epochs without
    early stopping, on the same learning rate schedule, and logs them as `refit_<metric>`.
    """
    import keras

    from char_rnn.model import build_model, compile_model

    seed = params.train.seed + member
    seed_everything(seed)
    name = f"member_{member + 1}" if params.model.ensemble > 1 else None
    model = build_model(params.model, spec.vocab_size, name, seed)
    windows = count_windows(len(train_ids), spec.length, spec.stride)
    compile_model(model, params.train, steps_per_epoch=-(-windows // params.train.batch_size))
    batches = {"batch_size": params.train.batch_size, "length": spec.length, "stride": spec.stride}
    train_data = window_dataset(train_ids, shuffle_seed=seed, **batches)
    val_data = window_dataset(val_ids, shuffle_seed=None, **batches) if spec.val_windows else None
    stopping = early_stopping(params) if refit_epochs is None else []
    prefix = (f"member{member + 1}_" if member else "") + ("refit_" if refit_epochs else "")
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=refit_epochs or params.train.epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), mlflow_epoch_logger(prefix), *stopping, *callbacks],
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    ).history
    last = {k: v[-1] for k, v in history.items()}
    if not all(math.isfinite(v) for v in last.values()):
        raise TrainingDiverged(f"training diverged at epoch {len(history['loss'])}: {last}; lower train.learning_rate")
    return model, history


def best_epochs(params: Params, history: dict[str, list[float]]) -> int:
    """Epochs up to the weights training kept: the best val_loss with early stopping, else all."""
    if params.train.early_stopping_patience and "val_loss" in history:
        return int(np.argmin(history["val_loss"])) + 1
    return len(history["loss"])


def fit_with_hybrid(
    params: Params, spec: WindowSpec, ids: np.ndarray, callbacks: Sequence[Any] = ()
) -> tuple[Any, dict[str, list[float]], dict[str, Any]]:
    """Fit the RNN(s) on the training text; with a tuning slice, fit the hybrid's weights, then maybe refit.

    The weights are fitted with RNNs and an n-gram that have all read only the training text, so the
    tuning slice is unseen by both (a cache reads the text before each character, as it always
    does). The scored n-gram then counts the tuning slice too (it is fitted on all text before the
    validation tail); `train.refit_with_tune` gives the scored RNNs the same text: fresh models,
    same seeds, trained on training + tuning text for the epochs that their first fit kept. No fit
    reads the validation text except as Keras' val_loss, which early stopping (and so the refit's
    epoch count) watches, as the issue asks: one integer chosen on the scored text. Returns the
    model (the members averaged), the first member's final history (its refit's, after a refit) and
    the hybrid.json content (`weights`: None without a tuning slice; fitted ones are also logged
    to the active MLflow run; with `evaluate.dynamic_rates`, the dynamic evaluation's rate too).
    """
    import mlflow

    from char_rnn.heldout import fit_hybrid_weights
    from char_rnn.model import average

    start = spec.train_chars + spec.tune_chars
    val_ids = ids[start:]
    fits = [fit(params, spec, ids[: spec.train_chars], val_ids, callbacks, i) for i in range(params.model.ensemble)]
    hybrid: dict[str, Any] = {"weights": None, "tune_chars": spec.tune_chars, "refit_with_tune": False}
    if spec.tune_chars:
        weights = fit_hybrid_weights(
            [model for model, _ in fits],
            ids,
            (spec.train_chars, start),
            params.baseline.order,
            params.evaluate.context,
            params.baseline.cache_window,
        )
        hybrid["weights"] = asdict(weights)
        mlflow.log_metrics(weights.metrics())
        hybrid |= {"ngram_order": params.baseline.order, "context": params.evaluate.context}
    if spec.tune_chars and params.evaluate.dynamic_rates:
        hybrid |= tune_dynamic_rate(params, [model for model, _ in fits], ids, (spec.train_chars, start))
    if spec.tune_chars and params.train.refit_with_tune:
        epochs = [best_epochs(params, history) for _, history in fits]
        fits = [fit(params, spec, ids[:start], val_ids, callbacks, i, e) for i, e in enumerate(epochs)]
        hybrid |= {"refit_with_tune": True, "refit_epochs": epochs}
    return average([model for model, _ in fits]), fits[0][1], hybrid


def tune_dynamic_rate(params: Params, models: list[Any], ids: np.ndarray, tune: tuple[int, int]) -> dict[str, Any]:
    """Dynamic evaluation's learning rate, chosen on the tuning slice by the RNNs that have not read it.

    After a refit the scored RNNs are others, which have read the slice; they inherit the rate, as
    they inherit the hybrid's weights.
    """
    import mlflow

    from char_rnn.dynamic import tune_rate
    from char_rnn.model import average

    segment, context = params.evaluate.dynamic_segment, params.evaluate.dynamic_context
    rate, tried = tune_rate(average(models), ids, tune, params.evaluate.dynamic_rates, segment, context)
    mlflow.log_metric("dynamic_rate", rate)
    # The evaluate stage scores with these, the settings the rate was chosen for.
    return {"dynamic": {"rate": rate, "segment": segment, "context": context, "tune_bits_per_char": tried}}


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
    ids: np.ndarray,
    mlruns: Path,
    model_path: Path,
    history_path: Path,
    hybrid_path: Path,
    extra_artifacts: list[Path],
    tags: dict[str, str] | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """The train stage on the whole-corpus `ids`; its MLflow run is closed here and resumed by evaluate."""
    import mlflow
    import mlflow.keras

    from char_rnn.tracking import connect

    experiment_id = connect(mlruns)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags or {}) as run:
        mlflow.log_params({**params.flat(), **{f"data.{k}": v for k, v in asdict(spec).items()}})
        for artifact in extra_artifacts:
            mlflow.log_artifact(str(artifact), artifact_path="data")
        model, history, hybrid = fit_with_hybrid(params, spec, ids, callbacks)
        save_model_atomically(model, model_path)
        write_history(history, history_path)
        hybrid_path.write_text(json.dumps(hybrid, indent=1) + "\n", encoding="utf-8")
        for artifact in (history_path, hybrid_path):
            mlflow.log_artifact(str(artifact), artifact_path="reports")
        info = mlflow.keras.log_model(
            model, name="model", signature=signature(spec.vocab_size), pip_requirements=pip_requirements()
        )
    return TrainResult(run_id=run.info.run_id, model_uri=info.model_uri, history=history)
