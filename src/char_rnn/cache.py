"""The cache model (Kuhn & De Mori 1990): the next character is often one of the last few.

P(c | text) = the share of c among the last `window` characters. Text quotes itself: an article of
the constitution repeats its own terms, a bill its own names and numbers. A character that is rare in
the training text is improbable to the RNN and to the n-gram alike, until it has just appeared. The
cache gives nothing to a character outside its window, so it is only ever one part of the hybrid's
mixture (`char_rnn.hybrid`), next to the RNN and the n-gram, weighted on the tuning slice. It reads
only text before the predicted character, like every other model here.
"""

from __future__ import annotations

import numpy as np


def char_probabilities(ids: np.ndarray, start: int, end: int | None, window: int) -> np.ndarray:
    """P(ids[t] | ids[t - window : t]) for every t in [start, end), in O(n log n) without a loop.

    Occurrences are sorted by (character, position); the count of ids[t] in its window is then the
    distance between two `searchsorted` positions.
    """
    ids = np.asarray(ids, dtype=np.int64)
    end = len(ids) if end is None else end
    if not 1 <= start <= end <= len(ids) or window < 1:
        raise ValueError(f"need 1 <= start <= end <= {len(ids)} and window >= 1, got {start}, {end}, {window}")
    lo = max(start - window, 0)
    text = ids[lo:end]
    span = len(text) + 1
    keys = np.sort(text * span + np.arange(len(text)))
    t = np.arange(start - lo, end - lo)
    here = np.searchsorted(keys, text[t] * span + t)
    first = np.searchsorted(keys, text[t] * span + np.maximum(t - window, 0))
    return (here - first) / np.minimum(t + lo, window)


class Recent:
    """The last `window` characters of each row, counted, as generation appends one character at a time:
    the cache's distribution is then one division, not a count over the window per character."""

    def __init__(self, prompt: np.ndarray, vocab_size: int, window: int) -> None:
        recent = np.asarray(prompt, dtype=np.int64)[:, -window:]
        if not recent.shape[1]:
            raise ValueError("the cache needs at least one character of context")
        self.window, self.size = window, recent.shape[1]
        self.ring = np.zeros((len(recent), window), dtype=np.int64)
        self.ring[:, : self.size] = recent
        self.oldest = self.size % window  # where the next character goes: the oldest one once the ring is full
        self.counts = np.zeros((len(recent), vocab_size))
        np.add.at(self.counts, (np.arange(len(recent))[:, None], recent), 1.0)

    def distribution(self) -> np.ndarray:
        """(batch, V): each character's share of the last `window` (or fewer, at first) characters."""
        return self.counts / self.size

    def push(self, ids: np.ndarray) -> None:
        rows = np.arange(len(ids))
        if self.size == self.window:
            self.counts[rows, self.ring[:, self.oldest]] -= 1.0
        else:
            self.size += 1
        self.ring[:, self.oldest] = ids
        self.counts[rows, ids] += 1.0
        self.oldest = (self.oldest + 1) % self.window
