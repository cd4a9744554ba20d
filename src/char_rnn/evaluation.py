"""Evaluation: the numbers `dvc metrics show` prints, and the blog's twin-axis plot.

With held-out text, the figures of each held-out split: the **test** text, reported and never used to
choose anything, and the **validation** text beside it, on which early stopping and the configs
were chosen. On each, `bits_per_char` and `perplexity` are scored honestly: every character exactly
once, predicted from at least `evaluate.context` units before it (`char_rnn.heldout`), next to the
Kneser-Ney n-gram on the same characters and, with a tuning slice, the hybrid (`char_rnn.hybrid`)
and the RNN under dynamic evaluation (`char_rnn.dynamic`), with what the tune stage chose; `loss`
and `accuracy` are Keras' averages over that split's windows.

Without held-out text (the blog's memorisation setting) the figures come from the training windows,
exactly like the blog's `model.evaluate(xdata, ydata)`: bits per character = loss / ln 2,
perplexity = e^loss.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from char_rnn.dynamic import dynamic_char_probabilities
from char_rnn.heldout import HELD_OUT, SPLIT_NAMES, Span, rnn_char_probabilities, scored_span
from char_rnn.hybrid import DynamicChoice, Hybrid, Weights
from char_rnn.inference import NumpyModel
from char_rnn.ngram import KneserNey, bits_per_char, perplexity
from char_rnn.training import History
from char_rnn.windows import WindowSpec, window_views


def score(model: NumpyModel, ids: np.ndarray, spec: WindowSpec, batch_size: int) -> dict[str, float]:
    """Keras' `evaluate` over the windows of `ids`, in NumPy: the mean cross-entropy and accuracy over
    every position of every window (all windows are equally long, so Keras' per-batch means average
    to the same figure). Per unit: with closed units, per character as in the blog."""
    inputs, targets = window_views(np.asarray(ids, dtype=np.int32), spec.length, spec.stride)
    nats, hits = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        probs = model.probabilities(inputs[start : start + batch_size])
        true = np.take_along_axis(probs, targets[start : start + batch_size, :, None], axis=-1)[..., 0]
        nats -= float(np.log(np.clip(true, 1e-7, 1 - 1e-7)).sum())  # as Keras clips them
        hits += int((probs.argmax(axis=-1) == targets[start : start + batch_size]).sum())
    loss = nats / max(targets.size, 1)
    return {"loss": loss, "accuracy": hits / max(targets.size, 1)}


def memorised_metrics(model: NumpyModel, ids: np.ndarray, spec: WindowSpec, batch_size: int) -> dict[str, float]:
    """The blog's figures, on the training windows it memorised: bits per character = loss / ln 2
    (closed units: a unit is a character), perplexity = e^loss."""
    metrics = score(model, ids[: spec.train_units], spec, batch_size)
    per_char = spec.train_units / spec.train_chars  # 1 with closed units
    return {
        **metrics,
        "bits_per_char": metrics["loss"] * per_char / math.log(2),
        "perplexity": math.exp(min(metrics["loss"] * per_char, 700.0)),
    }


def heldout_metrics(
    model: Any, ngram: KneserNey, weights: Weights | None, ids: np.ndarray, span: Span, context: int
) -> dict[str, float]:
    """RNN, n-gram and (with the weights the tune stage fitted on the tuning slice) hybrid on one held-out span."""
    start, end, chars = span.start, span.end, span.chars
    p_rnn = rnn_char_probabilities(model, ids, start, end, warmup=context)
    p_kn = ngram.char_probabilities(ids, start, end)
    rnn, kn = bits_per_char(p_rnn, chars), bits_per_char(p_kn, chars)
    metrics = {
        "chars": chars,
        "bits_per_char": rnn,
        "perplexity": perplexity(p_rnn, chars),
        "ngram_bits_per_char": kn,
        "rnn_vs_ngram": rnn / kn - 1,
    }
    if weights is not None:
        hybrid = weights.score(p_rnn, p_kn, ids, start, end)
        metrics |= {"hybrid_bits_per_char": bits_per_char(hybrid, chars)}
        metrics |= {"hybrid_vs_ngram": metrics["hybrid_bits_per_char"] / kn - 1}
    return metrics


def dynamic_metrics(model: Any, ids: np.ndarray, span: Span, dynamic: DynamicChoice) -> dict[str, float]:
    """The RNN alone under dynamic evaluation, with the rate the tune stage chose and the segment and
    context it chose it for."""
    probs = dynamic_char_probabilities(model, ids, span.start, span.end, dynamic.rate, dynamic.segment, dynamic.context)
    return {
        "dynamic_bits_per_char": bits_per_char(probs, span.chars),
        "dynamic_perplexity": perplexity(probs, span.chars),
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

    With held-out text: one section per held-out split, the reported test text first and the
    validation text beside it, each with the RNN, the n-gram, the hybrid and dynamic evaluation on
    its characters and Keras' window figures. Without (the blog's setting): the memorised figures.
    `model` (the NumPy runtime) scores; `trainable`, the Keras model, is needed only for dynamic
    evaluation, which takes gradient steps (the stage loads it only then).
    """
    metrics: dict[str, Any] = {}
    for split in spec.held_out:
        span = scored_span(spec, split)
        figures = heldout_metrics(model, ngram, hybrid.weights, ids, span, context)
        if hybrid.dynamic is not None:
            figures |= dynamic_metrics(trainable, ids, span, hybrid.dynamic)
            figures["dynamic_vs_ngram"] = figures["dynamic_bits_per_char"] / figures["ngram_bits_per_char"] - 1
        figures |= score(model, ids[span.start : span.end], spec, batch_size)
        metrics[SPLIT_NAMES[split]] = figures
    if spec.held_out:
        if hybrid.weights is not None:
            metrics |= hybrid.weights.metrics()
        if hybrid.dynamic is not None:
            metrics["dynamic_rate"] = hybrid.dynamic.rate
    else:
        metrics |= memorised_metrics(model, ids, spec, batch_size)
        metrics["scored_on"] = "training windows (no held-out text, as in the blog)"
    metrics["train_loss"] = history["loss"][-1]
    metrics["train_accuracy"] = history["accuracy"][-1]
    metrics["epochs"] = len(history["loss"])
    return metrics


DERIVED = ("perplexity", "dynamic_perplexity", "rnn_vs_ngram", "hybrid_vs_ngram", "dynamic_vs_ngram")


def for_the_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """What `reports/metrics.json` keeps of the held-out figures: each model's bits per character, the
    window figures and the counts. Perplexities and ratios to the n-gram follow from them; they are in
    the run and the summary, and would only widen `dvc metrics show` past any terminal."""
    return {key: {k: v for k, v in value.items() if k not in DERIVED} if key in HELD_OUT else value
            for key, value in metrics.items()}  # fmt: skip


def chosen_on(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures a choice between configs is made on: the validation text's, never the test text's
    (without a validation text, the memorised figures: the blog's setting has nothing held out)."""
    return metrics.get("validation", metrics if "test" not in metrics else {})


def reported(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures that are reported and registered: the test text's, else the validation text's, else
    the memorised ones."""
    for name in ("test", "validation"):
        if name in metrics:
            return metrics[name]
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
