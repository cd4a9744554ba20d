"""Honest held-out scoring: which characters are scored, and the RNN's probability of each.

Averaging the loss over every window position scores the first characters of each window with
almost no context; an n-gram model always sees its full context. Here every scored character is
predicted exactly once, from the characters before it: the scored slice is cut into chunks, and each
chunk is run through the model together with the `warmup` characters before it (training text
included), keeping only the predictions for the chunk itself. Every character thus sees at least
`warmup` characters of context (all of it when the text before it is shorter) and at most
`warmup + chunk - 1`; memory is bounded by one batch of chunks, never length x vocabulary of the text.

Every model (the RNN, the n-gram, the hybrid, the RNN under dynamic evaluation) is scored on the
same characters, `scored_span`: the test text (reported), the validation text (beside it), or without
either the training text itself, as the blog evaluates. Scoring is per unit (`char_rnn.units`); a
span also knows how many characters its units spell, so every figure is bits per character.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from char_rnn.windows import WindowSpec

WARMUP = 500  # characters of context run through the model before the first scored one of a chunk
CHUNK = 500  # characters scored per row of a batch
SPLIT_NAMES = {"test": "test", "val": "validation", "train": "memorised"}  # metrics.json's and the run's names
HELD_OUT = ("test", "validation")  # the held-out texts' names, the reported one first


@dataclass(frozen=True)
class Span:
    """Scored units [start, end) of the whole text's ids, and the characters they spell."""

    start: int
    end: int
    chars: int
    split: str  # test, val, or train (no held-out text: the blog's memorised setting)


def scored_span(spec: WindowSpec, split: str | None = None) -> Span:
    """A held-out split's units (default: the reported one, test before validation), or without
    held-out text all of the training text from its second character (the first has nothing before it)."""
    split = split or (spec.held_out[0] if spec.held_out else "train")
    if split == "train":
        return Span(spec.first_units, spec.train_units, spec.train_chars - 1, split)
    start = spec.start(split)
    return Span(start, start + getattr(spec, f"{split}_units"), getattr(spec, f"{split}_chars"), split)


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

    `ids[:start]` is context only; start must be >= 1 (see `scoring_rows`). `model` is anything with
    Keras' `predict_on_batch`: ids (batch, time) -> probabilities (batch, time, vocab).
    """
    return _score(
        model, ids, start, end, warmup, chunk, batch_size, lambda dist, true: dist[np.arange(len(true)), true]
    )


def rnn_char_hits(
    model: Any, ids: np.ndarray, start: int, end: int | None = None, warmup: int = WARMUP, chunk: int = CHUNK
) -> np.ndarray:
    """1 where the model's most likely next character is ids[t], else 0; scored like the probabilities."""
    return _score(model, ids, start, end, warmup, chunk, 16, lambda dist, true: dist.argmax(axis=-1) == true)


def _score(
    model: Any, ids: np.ndarray, start: int, end: int | None, warmup: int, chunk: int, batch_size: int, pick: Any
) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int32)
    end = len(ids) if end is None else end
    rows = scoring_rows(len(ids), start, end, warmup, chunk)
    scores = np.empty(end - start)
    # Rows of equal shape batch together: all of them except near the text's start and end.
    by_shape: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for s, a, e in rows:
        by_shape.setdefault((e - 1 - s, a - s), []).append((s, a, e))
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            batch = group[i : i + batch_size]
            out = np.asarray(model.predict_on_batch(np.stack([ids[s : e - 1] for s, _, e in batch])))
            # The output at input position t - 1 predicts character t: keep outputs a-1 .. e-2 for a .. e-1.
            for o, (s, a, e) in zip(out, batch):
                scores[a - start : e - start] = pick(o[a - 1 - s : e - 1 - s], ids[a:e])
    return scores


def average_rnns(
    models: Sequence[Any], ids: np.ndarray, start: int, end: int | None = None, **kwargs: Any
) -> np.ndarray:
    """Several RNNs as one: the mean of their probabilities of the true characters."""
    if not models:
        raise ValueError("need at least one model")
    return np.mean([rnn_char_probabilities(m, ids, start, end, **kwargs) for m in models], axis=0)


def by_figure(metrics: dict[str, Any]) -> dict[str, Any]:
    """`reports/metrics.json`'s layout: each figure with the held-out texts under it
    (`hybrid_bits_per_char.test`, `hybrid_bits_per_char.validation`), so that `dvc metrics show`, which
    sorts its columns by name, prints every test figure with the validation figure beside it."""
    out = {key: value for key, value in metrics.items() if key not in HELD_OUT}
    for text in HELD_OUT:
        for key, value in metrics.get(text, {}).items():
            out.setdefault(key, {})[text] = value
    return out


def by_text(figures: dict[str, Any]) -> dict[str, Any]:
    """`by_figure`'s file read back: one section of figures per held-out text, as `evaluate` returns them."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            for text, figure in value.items():
                out.setdefault(text, {})[key] = figure
        else:
            out[key] = value
    return out
