"""Evaluation: the numbers `dvc metrics show` prints, the blog's twin-axis plot and a generated sample.

`loss` and `accuracy` are Keras' averages over windows: on the validation windows when there is a
split, else on the training windows exactly like the blog's `model.evaluate(xdata, ydata)`.

With a validation split, `bits_per_char` and `perplexity` are held-out figures scored honestly:
every validation character exactly once, predicted from at least `evaluate.context` characters
before it (see `char_rnn.heldout`), next to the Kneser-Ney n-gram on the same characters and, with
a tuning slice, the RNN + n-gram (+ cache) hybrid and, with `evaluate.dynamic_rates`, the RNN alone
under dynamic evaluation (`char_rnn.dynamic`). Without a split they come from the window loss
(the blog's memorisation setting): bits per character = loss / ln 2, perplexity = e^loss.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn.heldout import Weights, rnn_char_probabilities
from char_rnn.params import Params
from char_rnn.windows import WindowSpec, window_dataset

HELDOUT_METHOD = "every validation character once, predicted from at least evaluate.context characters before it"


def score(model: Any, ids: np.ndarray, spec: WindowSpec, batch_size: int) -> dict[str, float]:
    data = window_dataset(ids, spec.length, spec.stride, batch_size, shuffle_seed=None)
    loss, accuracy = model.evaluate(data, verbose=0)
    return {
        "loss": float(loss),
        "accuracy": float(accuracy),
        "bits_per_char": float(loss) / math.log(2),
        "perplexity": math.exp(min(float(loss), 700.0)),
    }


def fit_ngram(ids: np.ndarray, spec: WindowSpec, order: int) -> Any:
    """The Kneser-Ney n-gram on all text before the validation tail (the training text without a split)."""
    from char_rnn.ngram import KneserNey

    return KneserNey.fit(ids[: validation_start(spec)], spec.vocab_size, order)


def ngram_probabilities(ngram: Any, ids: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """P(true char) under the n-gram for the validation text; without a split, for the training text,
    like the blog's evaluation."""
    start = validation_start(spec)
    return ngram.char_probabilities(ids, start) if spec.val_chars else ngram.char_probabilities(ids, 1, start)


def validation_start(spec: WindowSpec) -> int:
    return spec.train_chars + spec.tune_chars


def heldout_metrics(
    model: Any, ngram: Any, weights: Weights | None, ids: np.ndarray, spec: WindowSpec, context: int
) -> dict[str, float]:
    """RNN, n-gram and (with the weights the train stage fitted on the tuning slice) hybrid on the validation text."""
    from char_rnn import cache
    from char_rnn.ngram import bits_per_char, perplexity

    p_rnn = rnn_char_probabilities(model, ids, validation_start(spec), warmup=context)
    p_kn = ngram_probabilities(ngram, ids, spec)
    metrics = {
        "heldout_chars": len(p_rnn),
        "bits_per_char": bits_per_char(p_rnn),
        "perplexity": perplexity(p_rnn),
        "ngram_bits_per_char": bits_per_char(p_kn),
        "rnn_vs_ngram": bits_per_char(p_rnn) / bits_per_char(p_kn) - 1,
    }
    if weights is not None:
        start, window = validation_start(spec), weights.cache_window
        hybrid = weights.mix(p_rnn, p_kn, cache.char_probabilities(ids, start, None, window) if window else None)
        metrics |= {
            **weights.metrics(),
            "hybrid_bits_per_char": bits_per_char(hybrid),
            "hybrid_vs_ngram": bits_per_char(hybrid) / bits_per_char(p_kn) - 1,
        }
    return metrics


def dynamic_metrics(model: Any, ids: np.ndarray, spec: WindowSpec, dynamic: dict[str, Any]) -> dict[str, float]:
    """The RNN alone under dynamic evaluation, with the rate, segment and context of the train stage's
    choice on the tuning slice (hybrid.json's `dynamic`)."""
    from char_rnn.dynamic import dynamic_char_probabilities
    from char_rnn.ngram import bits_per_char, perplexity

    rate = dynamic["rate"]
    probs = dynamic_char_probabilities(
        model, ids, validation_start(spec), None, rate, dynamic["segment"], dynamic["context"]
    )
    return {
        "dynamic_rate": rate,
        "dynamic_bits_per_char": bits_per_char(probs),
        "dynamic_perplexity": perplexity(probs),
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
    generator: Any,
    ngram: Any,
    weights: Weights | None,
    spec: WindowSpec,
    ids: np.ndarray,
    history: dict[str, list[float]],
    params: Params,
    dynamic: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Returns (metrics, sample) for the whole-corpus `ids`; the stage writes and logs them.

    `generator` holds the model (and, when the hybrid is what gets registered, the mixture the sample
    is drawn from); `ngram` is the baseline's; `weights` and `dynamic` (rate, segment, context) are what
    the train stage chose on the tuning slice (None when it chose none).
    """
    from char_rnn.generate import generate

    on_val = spec.val_chars > 0
    windows = ids[validation_start(spec) :] if on_val else ids[: spec.train_chars]
    model = generator.model
    metrics: dict[str, Any] = score(model, windows, spec, params.train.batch_size)
    metrics["scored_on"] = "validation windows" if on_val else "training windows (no split, as in the blog)"
    if on_val:
        metrics |= heldout_metrics(model, ngram, weights, ids, spec, params.evaluate.context)
        if dynamic is not None:
            metrics |= dynamic_metrics(model, ids, spec, dynamic)
            metrics["dynamic_vs_ngram"] = metrics["dynamic_bits_per_char"] / metrics["ngram_bits_per_char"] - 1
        metrics["bits_per_char_method"] = HELDOUT_METHOD
    metrics["train_loss"] = history["loss"][-1]
    metrics["train_accuracy"] = history["accuracy"][-1]
    metrics["epochs"] = len(history["loss"])
    evaluate = params.evaluate
    sample = generate(generator, evaluate.prompt, evaluate.sample_length, evaluate.temperature, params.train.seed)
    return metrics, sample


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
