"""The cache model (Kuhn & De Mori 1990): the next character is often one of the last few.

P(c | text) = the share of c among the last `window` characters. Text quotes itself: an article of
the constitution repeats its own terms, a bill its own names and numbers. A character that is rare in
the training text is improbable to the RNN and to the n-gram alike, until it has just appeared. The
cache gives nothing to a character outside its window, so it is only ever one part of the hybrid's
mixture (`char_rnn.hybrid`), next to the RNN and the n-gram, weighted on the tuning slice. It reads
only text before the predicted character, like every other model here.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    the cache's distribution is then one division, not a count over the window per character. Rows
    may start from prompts of different lengths (requests served together)."""

    def __init__(self, prompts: Sequence[np.ndarray] | np.ndarray, vocab_size: int, window: int) -> None:
        rows = [np.asarray(prompt, dtype=np.int64)[-window:] for prompt in prompts]
        if not all(len(row) for row in rows):
            raise ValueError("the cache needs at least one character of context")
        self.window = window
        self.size = np.array([len(row) for row in rows])
        self.oldest = self.size % window  # where each row's next character goes: its oldest once full
        self.ring = np.zeros((len(rows), window), dtype=np.int64)
        self.counts = np.zeros((len(rows), vocab_size))
        for i, row in enumerate(rows):
            self.ring[i, : len(row)] = row
            np.add.at(self.counts[i], row, 1.0)

    def distribution(self) -> np.ndarray:
        """(batch, V): each character's share of the last `window` (or fewer, at first) characters."""
        return self.counts / self.size[:, None]

    def push(self, ids: np.ndarray) -> None:
        rows = np.arange(len(ids))
        self.counts[rows, self.ring[rows, self.oldest]] -= self.size == self.window  # a full row forgets its oldest
        self.ring[rows, self.oldest] = ids
        self.counts[rows, ids] += 1.0
        self.size = np.minimum(self.size + 1, self.window)
        self.oldest = (self.oldest + 1) % self.window

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows from now on (the others' requests are done)."""
        self.size, self.oldest, self.ring, self.counts = (
            a[rows] for a in (self.size, self.oldest, self.ring, self.counts)
        )

    def join(self, other: Recent) -> Recent:
        """`other`'s rows after these (requests that joined the batch)."""
        self.size, self.oldest, self.ring, self.counts = (
            np.concatenate([a, b])
            for a, b in zip(
                (self.size, self.oldest, self.ring, self.counts), (other.size, other.oldest, other.ring, other.counts)
            )
        )
        return self
