"""Dynamic evaluation: the RNN keeps learning from the text it has already scored (Krause et al., 2018).

The scored text is read in segments, in order. Each segment is scored first, from the context before
it, and only then does the model take one SGD step on that segment's loss, so every character is
still predicted exactly once and only from the text before it, like the static scoring in
`char_rnn.heldout`. What the model learns carries over to the next segments: a document's own
phrases, which a static model met in training only if they occurred there. The n-gram + cache hybrid
exploits the same repetition; this is the RNN doing it alone.

The learning rate is chosen on the tuning slice by the tune stage (the RNNs' first fit has not read
it), never on the scored text. The model's weights are restored afterwards: scoring changes nothing
that is saved, generated or served.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from char_rnn.heldout import scoring_rows
from char_rnn.ngram import bits_per_char


def dynamic_char_probabilities(
    model: Any, ids: np.ndarray, start: int, end: int | None, rate: float, segment: int, context: int
) -> np.ndarray:
    """P(ids[t]) for t in [start, end), each scored before an SGD step on its segment.

    Character t is predicted from the `context` to `context + segment - 1` characters before it, by
    weights that have learnt from ids[start:a] (a: t's segment start) and nothing later. With rate 0
    this is exactly the static scoring of `rnn_char_probabilities` with warmup `context` and chunk
    `segment`.
    """
    import keras
    import tensorflow as tf

    ids = np.asarray(ids, dtype=np.int32)
    end = len(ids) if end is None else end
    rows = scoring_rows(len(ids), start, end, context, segment)
    if not rate >= 0:
        raise ValueError(f"need a learning rate >= 0, got {rate}")
    weights = model.trainable_weights
    optimizer = keras.optimizers.SGD(rate) if rate else None  # plain SGD: stateless, nothing to reset

    @tf.function(reduce_retracing=True)
    def score_then_learn(inputs: tf.Tensor, targets: tf.Tensor, scored: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probs = model(inputs, training=False)[0, -scored:]  # no dropout: it is scoring
            true = tf.gather(probs, targets[0, -scored:], axis=1, batch_dims=1)
            loss = -tf.reduce_mean(tf.math.log(tf.maximum(true, 1e-12)))
        if optimizer is not None:
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return true

    saved = model.get_weights()
    out = np.empty(end - start)
    try:
        for s, a, e in rows:
            true = score_then_learn(ids[None, s : e - 1], ids[None, s + 1 : e], tf.constant(e - a))
            out[a - start : e - start] = true.numpy()
    finally:
        model.set_weights(saved)
    return out


def tune_rate(
    model: Any,
    ids: np.ndarray,
    tune: tuple[int, int],
    rates: Sequence[float],
    segment: int,
    context: int,
    chars: int | None = None,
) -> tuple[float, dict[str, float | None]]:
    """The rate (0 = static, always a candidate) with the fewest bits/char on ids[t0:t1] (units that
    spell `chars` characters), and every figure (None where the rate diverged).

    `model` must not have read the tuning slice; nothing after t1 is read. Each rate is one pass
    over the slice (with its own traced step), so the grid's size is the cost.
    """
    t0, t1 = tune
    text = np.asarray(ids[:t1])
    tried = {}
    for rate in (0.0, *rates):
        tried[rate] = finite_bits(dynamic_char_probabilities(model, text, t0, t1, rate, segment, context), chars)
    best = min(tried, key=tried.__getitem__)
    return best, {str(rate): figure if math.isfinite(figure) else None for rate, figure in tried.items()}


def finite_bits(probs: np.ndarray, chars: int | None = None) -> float:
    """Bits per character, or infinity where a rate diverged (a probability of 0 or NaN), so it loses:
    NaN would compare as neither better nor worse."""
    return bits_per_char(probs, chars) if np.all(probs > 0) else math.inf
