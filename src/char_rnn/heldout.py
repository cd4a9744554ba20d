"""Honest held-out scoring of the Keras model, and its interpolation with the Kneser-Ney n-gram.

Averaging the loss over every window position scores the first characters of each window with
almost no context; an n-gram model always sees its full context. Here every scored character is
predicted exactly once, from the characters before it: the scored slice is cut into chunks, and each
chunk is run through the model together with the `warmup` characters before it (training text
included), keeping only the predictions for the chunk itself. Every character thus sees at least
`warmup` characters of context (all of it when the text before it is shorter) and at most
`warmup + chunk - 1`; memory is bounded by one batch of chunks, never length x vocabulary of the text.

The hybrid `p = w_rnn * p_rnn + w_kn * p_kn (+ w_cache * p_cache)` fits its weights on a tuning slice
that neither model was trained on and that is not the scored text (the end of the training split, held
out from the first fit); the validation text is then scored with those fixed weights.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn import cache
from char_rnn.errors import PipelineError
from char_rnn.ngram import KneserNey

log = logging.getLogger(__name__)

WARMUP = 500  # characters of context run through the model before the first scored one of a chunk
CHUNK = 500  # characters scored per row of a batch


def scoring_rows(n_ids: int, start: int, end: int, warmup: int, chunk: int) -> list[tuple[int, int, int]]:
    """(input start, first scored, scored end) per chunk; the input is ids[input start : scored end - 1].

    The model's output at input position j predicts position j + 1, so the first character of the
    text (t = 0) has nothing to be predicted from: start must be >= 1.
    """
    if not 1 <= start <= end <= n_ids:
        raise ValueError(f"need 1 <= start <= end <= {n_ids}, got start={start}, end={end}")
    if warmup < 1 or chunk < 1:
        raise ValueError(f"need warmup (context) >= 1 and chunk (segment) >= 1, got {warmup} and {chunk}")
    return [(max(a - warmup, 0), a, min(a + chunk, end)) for a in range(start, end, chunk)]


def rnn_char_probabilities(
    model: Any,
    ids: np.ndarray,
    start: int,
    end: int | None = None,
    warmup: int = WARMUP,
    chunk: int = CHUNK,
    batch_size: int = 16,
) -> np.ndarray:
    """P(ids[t] | context) from the model for every t in [start, end), each once, in order.

    `ids[:start]` is context only; start must be >= 1 (see `scoring_rows`).
    """
    ids = np.asarray(ids, dtype=np.int32)
    end = len(ids) if end is None else end
    rows = scoring_rows(len(ids), start, end, warmup, chunk)
    probs = np.empty(end - start)
    # Rows of equal shape batch together: all of them except near the text's start and end.
    by_shape: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for s, a, e in rows:
        by_shape.setdefault((e - 1 - s, a - s), []).append((s, a, e))
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            batch = group[i : i + batch_size]
            for (_, a, e), p in zip(batch, _batch_probabilities(model, ids, batch)):
                probs[a - start : e - start] = p
    return probs


def _batch_probabilities(model: Any, ids: np.ndarray, rows: list[tuple[int, int, int]]) -> list[np.ndarray]:
    """One forward pass over rows of equal shape; only the outputs that predict a scored character are kept."""
    out = np.asarray(model.predict_on_batch(np.stack([ids[s : e - 1] for s, _, e in rows])))
    # The output at input position t - 1 predicts character t: rows keep outputs a-1 .. e-2 for a .. e-1.
    return [o[a - 1 - s : e - 1 - s][np.arange(e - a), ids[a:e]] for o, (s, a, e) in zip(out, rows)]


def average_rnns(
    models: Sequence[Any], ids: np.ndarray, start: int, end: int | None = None, **kwargs: Any
) -> np.ndarray:
    """Several RNNs as one: the mean of their probabilities of the true characters."""
    if not models:
        raise ValueError("need at least one model")
    return np.mean([rnn_char_probabilities(m, ids, start, end, **kwargs) for m in models], axis=0)


class HybridError(PipelineError):
    """hybrid.json holds weights that are not a distribution (or not the train stage's at all)."""


@dataclass(frozen=True)
class Weights:
    """The hybrid's mixture weights, fitted on the tuning slice: RNN, n-gram and (with a window) cache."""

    rnn: float
    ngram: float
    cache: float = 0.0
    cache_window: int = 0  # characters the cache looks back; 0 = no cache part

    def __post_init__(self) -> None:
        parts = (self.rnn, self.ngram, self.cache)
        finite = all(isinstance(w, (int, float)) and math.isfinite(w) for w in parts)
        if not finite or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
            raise ValueError(f"hybrid weights must be finite, >= 0 and sum to 1, got {parts}")
        if not isinstance(self.cache_window, int) or self.cache_window < 0 or (self.cache and not self.cache_window):
            raise ValueError(f"the cache window must be an integer >= 0, and >= 1 with a cache weight; got {self}")

    def mix(self, p_rnn: np.ndarray, p_kn: np.ndarray, p_cache: np.ndarray | None = None) -> np.ndarray:
        """The hybrid's probabilities; works on per-character vectors and on full distributions alike."""
        mixed = self.rnn * np.asarray(p_rnn, dtype=np.float64) + self.ngram * np.asarray(p_kn, dtype=np.float64)
        if not self.cache:
            return mixed
        if p_cache is None:
            raise ValueError("these weights give the cache a share: pass its probabilities")
        return mixed + self.cache * np.asarray(p_cache, dtype=np.float64)

    def metrics(self) -> dict[str, float]:
        return {"hybrid_weight_rnn": self.rnn, "hybrid_weight_ngram": self.ngram, "hybrid_weight_cache": self.cache}


def fit_weights(parts: Sequence[np.ndarray], tolerance: float = 1e-12, max_steps: int = 100_000) -> np.ndarray:
    """Mixture weights that maximise the log-likelihood of a tuning slice, by expectation-maximisation.

    `parts[i][t]` is model i's probability of character t. Each step sets every weight to the mean
    share of that model in the mixture's probability; the log-likelihood never decreases and is
    concave in the weights, so the steps climb to its maximum (Jelinek & Mercer's interpolation).
    They stop when a step gains less than `tolerance` nats per character.
    """
    probs = np.asarray(parts, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"need non-empty probability vectors of the same length, got shape {probs.shape}")
    weights, previous = np.full(len(probs), 1.0 / len(probs)), -np.inf
    for _ in range(max_steps):
        mixed = weights @ probs
        with np.errstate(divide="ignore"):
            likelihood = float(np.mean(np.log(mixed)))
        if not math.isfinite(likelihood):
            raise ValueError("a tuning character has probability 0 under every part: no weights can score it")
        if likelihood - previous < tolerance:
            return weights
        weights, previous = np.mean(weights[:, None] * probs / mixed, axis=1), likelihood
    log.warning("the hybrid's weights did not converge in %d steps; using the last ones, %s", max_steps, weights)
    return weights


def read_weights(path: Path) -> Weights | None:
    """The weights in a train stage's hybrid.json; None when there was no tuning slice to fit them on."""
    return weights_of(json.loads(path.read_text(encoding="utf-8")), path)


def weights_of(hybrid: dict[str, Any], path: Path) -> Weights | None:
    """The weights of an already loaded hybrid.json (`path` names it in errors).

    A hybrid.json from before the cache holds one weight, `lambda`, for the RNN: it reads as
    (lambda, 1 - lambda, no cache), so hybrids registered then still load and generate as scored.
    """
    weights = hybrid.get("weights")
    if "weights" not in hybrid and hybrid.get("lambda") is not None:
        weights = {"rnn": hybrid["lambda"], "ngram": 1.0 - hybrid["lambda"]}
    if weights is None:
        return None
    try:
        return Weights(**weights)
    except (TypeError, ValueError) as error:
        raise HybridError(f"{path}: unusable hybrid weights ({error}); rerun the train stage") from error


def fit_hybrid_weights(
    models: Sequence[Any], ids: np.ndarray, tune: tuple[int, int], order: int, context: int, cache_window: int
) -> Weights:
    """Weights on ids[t0:t1] for RNNs trained on ids[:t0] only, against an n-gram fitted on ids[:t0] too.

    Neither model has read the tuning slice, so the weights measure them as they do on unseen text; the
    cache reads the text before each character, as it will on the scored text; nothing after t1 (the
    scored text) is read. Several RNNs count as one, their probabilities averaged.
    """
    t0, t1 = tune
    if not 1 <= t0 < t1 <= len(ids):
        raise ValueError(f"need a non-empty tuning slice after the first character, got {tune}")
    ngram = KneserNey.fit(ids[:t0], int(models[0].output_shape[-1]), order)
    parts = [average_rnns(models, ids, t0, t1, warmup=context), ngram.char_probabilities(ids, t0, t1)]
    if cache_window:
        parts.append(cache.char_probabilities(ids, t0, t1, cache_window))
    fitted = [float(w) for w in fit_weights(parts)]
    return Weights(*fitted, cache_window=cache_window)
