"""Evaluation: the numbers `dvc metrics show` prints, the blog's twin-axis plot and a generated sample.

Metrics are computed on the validation windows when there is a split, else on the training windows
exactly like the blog's `model.evaluate(xdata, ydata)`. Bits per character is the cross-entropy in
base 2; perplexity is e to the cross-entropy in nats.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn.params import EvaluateParams
from char_rnn.windows import WindowSpec, window_dataset


def score(model: Any, ids: np.ndarray, spec: WindowSpec, batch_size: int) -> dict[str, float]:
    data = window_dataset(ids, spec.length, spec.stride, batch_size, shuffle_seed=None)
    loss, accuracy = model.evaluate(data, verbose=0)
    return {
        "loss": float(loss),
        "accuracy": float(accuracy),
        "bits_per_char": float(loss) / math.log(2),
        "perplexity": math.exp(min(float(loss), 700.0)),
    }


def read_history(path: Path) -> dict[str, list[float]]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch"} if rows else {}


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """The blog's figure: loss (yellow) and accuracy (blue) per epoch on twin axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_ax = plt.subplots(figsize=(7, 4.5))
    acc_ax = loss_ax.twinx()
    epochs = range(1, len(history["loss"]) + 1)
    loss_ax.plot(epochs, history["loss"], "y", label="train loss")
    acc_ax.plot(epochs, history["accuracy"], "b", label="train accuracy")
    if "val_loss" in history:
        loss_ax.plot(epochs, history["val_loss"], "r", label="val loss")
        acc_ax.plot(epochs, history["val_accuracy"], "g", label="val accuracy")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy")
    loss_ax.legend(loc="upper left")
    acc_ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    model: Any,
    chars: list[str],
    spec: WindowSpec,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    history: dict[str, list[float]],
    params: EvaluateParams,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """Returns (metrics, sample); the stage writes and logs them."""
    from char_rnn.generate import generate

    on_val = spec.val_windows > 0
    metrics: dict[str, Any] = score(model, val_ids if on_val else train_ids, spec, batch_size)
    metrics["scored_on"] = "validation windows" if on_val else "training windows (no split, as in the blog)"
    metrics["train_loss"] = history["loss"][-1]
    metrics["train_accuracy"] = history["accuracy"][-1]
    metrics["epochs"] = len(history["loss"])
    sample = generate(model, chars, params.prompt, params.sample_length, params.temperature, seed)
    return metrics, sample


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
