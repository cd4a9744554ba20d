"""Evaluation: the numbers `dvc metrics show` prints, and the blog's twin-axis plot.

`loss` and `accuracy` are Keras' averages over windows: on the validation windows when there is a
split, else on the training windows exactly like the blog's `model.evaluate(xdata, ydata)`.

With a validation split, `bits_per_char` and `perplexity` are held-out figures scored honestly:
every validation character exactly once, predicted from at least `evaluate.context` characters
before it (`char_rnn.heldout`), next to the Kneser-Ney n-gram on the same characters and, with a
tuning slice, the hybrid (`char_rnn.hybrid`) and the RNN under dynamic evaluation
(`char_rnn.dynamic`), with what the tune stage chose. Without a split they come from the window loss
(the blog's memorisation setting): bits per character = loss / ln 2, perplexity = e^loss.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from char_rnn import cache
from char_rnn.dynamic import dynamic_char_probabilities
from char_rnn.heldout import rnn_char_probabilities, scored_span
from char_rnn.hybrid import DynamicChoice, Hybrid, Weights
from char_rnn.inference import NumpyModel
from char_rnn.ngram import KneserNey, bits_per_char, perplexity
from char_rnn.training import History
from char_rnn.windows import WindowSpec, window_views

HELDOUT_METHOD = "every validation character once, predicted from at least evaluate.context characters before it"


def score(model: NumpyModel, ids: np.ndarray, spec: WindowSpec, batch_size: int) -> dict[str, float]:
    """Keras' `evaluate` over the windows of `ids`, in NumPy: the mean cross-entropy and accuracy over
    every position of every window (all windows are equally long, so Keras' per-batch means average
    to the same figure)."""
    inputs, targets = window_views(np.asarray(ids, dtype=np.int32), spec.length, spec.stride)
    nats, hits = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        probs = model.probabilities(inputs[start : start + batch_size])
        true = np.take_along_axis(probs, targets[start : start + batch_size, :, None], axis=-1)[..., 0]
        nats -= float(np.log(np.clip(true, 1e-7, 1 - 1e-7)).sum())  # as Keras clips them
        hits += int((probs.argmax(axis=-1) == targets[start : start + batch_size]).sum())
    loss = nats / targets.size
    return {
        "loss": loss,
        "accuracy": hits / targets.size,
        "bits_per_char": loss / math.log(2),
        "perplexity": math.exp(min(loss, 700.0)),
    }


def heldout_metrics(
    model: Any, ngram: KneserNey, weights: Weights | None, ids: np.ndarray, spec: WindowSpec, context: int
) -> dict[str, float]:
    """RNN, n-gram and (with the weights the tune stage fitted on the tuning slice) hybrid on the validation text."""
    start, end = scored_span(spec)
    p_rnn = rnn_char_probabilities(model, ids, start, end, warmup=context)
    p_kn = ngram.char_probabilities(ids, start, end)
    metrics = {
        "heldout_chars": len(p_rnn),
        "bits_per_char": bits_per_char(p_rnn),
        "perplexity": perplexity(p_rnn),
        "ngram_bits_per_char": bits_per_char(p_kn),
        "rnn_vs_ngram": bits_per_char(p_rnn) / bits_per_char(p_kn) - 1,
    }
    if weights is not None:
        window = weights.cache_window
        hybrid = weights.mix(p_rnn, p_kn, cache.char_probabilities(ids, start, end, window) if window else None)
        metrics |= {
            **weights.metrics(),
            "hybrid_bits_per_char": bits_per_char(hybrid),
            "hybrid_vs_ngram": bits_per_char(hybrid) / bits_per_char(p_kn) - 1,
        }
    return metrics


def dynamic_metrics(model: Any, ids: np.ndarray, spec: WindowSpec, dynamic: DynamicChoice) -> dict[str, float]:
    """The RNN alone under dynamic evaluation, with the rate the tune stage chose and the segment and
    context it chose it for."""
    start, end = scored_span(spec)
    probs = dynamic_char_probabilities(model, ids, start, end, dynamic.rate, dynamic.segment, dynamic.context)
    return {
        "dynamic_rate": dynamic.rate,
        "dynamic_bits_per_char": bits_per_char(probs),
        "dynamic_perplexity": perplexity(probs),
    }


def evaluate(
    model: NumpyModel,
    ngram: KneserNey,
    hybrid: Hybrid,
    spec: WindowSpec,
    ids: np.ndarray,
    history: History,
    context: int,
    batch_size: int,
    trainable: Any = None,
) -> dict[str, Any]:
    """Every figure of `reports/metrics.json` for the whole-corpus `ids`, which the stage writes and logs.

    `model` (the NumPy runtime) scores; `trainable`, the Keras model, is needed only for dynamic
    evaluation, which takes gradient steps (the stage loads it only then).
    """
    on_val = spec.val_chars > 0
    windows = ids[spec.val_start :] if on_val else ids[: spec.train_chars]
    metrics: dict[str, Any] = score(model, windows, spec, batch_size)
    metrics["scored_on"] = "validation windows" if on_val else "training windows (no split, as in the blog)"
    if on_val:
        metrics |= heldout_metrics(model, ngram, hybrid.weights, ids, spec, context)
        if hybrid.dynamic is not None:
            metrics |= dynamic_metrics(trainable, ids, spec, hybrid.dynamic)
            metrics["dynamic_vs_ngram"] = metrics["dynamic_bits_per_char"] / metrics["ngram_bits_per_char"] - 1
        metrics["bits_per_char_method"] = HELDOUT_METHOD
    metrics["train_loss"] = history["loss"][-1]
    metrics["train_accuracy"] = history["accuracy"][-1]
    metrics["epochs"] = len(history["loss"])
    return metrics


def plot_history(history: History, refit: bool = False) -> bytes:
    """The blog's figure as PNG bytes: loss (yellow) and accuracy (blue) per epoch on twin axes.

    After a refit the scored model's epochs are the refit's, and the title says so.
    """
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
    loss_ax.set_title("refit on training + tuning text" if refit else "training")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy")
    loss_ax.legend(loc="upper left")
    acc_ax.legend(loc="lower left")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()
