"""The match model (as PAQ-family compressors have it): text that has been written once is often
written again, and then the unit that followed the earlier copy comes next.

Reading a text unit by unit, it keeps the position after the most recent earlier occurrence of the
last `min_len` units; while the text goes on as the copy did, it follows the copy, and the unit that
came next there is its prediction. How far to trust it is learnt as it reads: the share of right
predictions so far among those made after a match of the same length (longer matches are right more
often). Its distribution is `p * [the predicted unit] + (1 - p) * base`, where `base` is the hybrid's
mixture (with no match, the mixture's alone): a near-copy of an earlier document, a bill amending a law
in the words of another, is then predicted from the copy, which a 5-gram's contexts cannot see and an
RNN's 500 units of context may not reach. Its trust comes from what it has read, not from the tuning
slice: a slice without copies would weigh it down exactly where copies come. Like every other model
here it reads only the text before the predicted unit; unlike the others, all of it (`char_rnn.hybrid`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LONGEST = 32  # match lengths are counted up to this many units (and back-checked as far when found)


class Match:
    """One text's state: what it has read, where each `min_len`-gram last ended, the copy followed and
    how often each match length was right."""

    def __init__(self, min_len: int) -> None:
        if min_len < 1:
            raise ValueError(f"the match length must be at least 1, got {min_len}")
        self.min_len = min_len
        self.text: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # a min_len-gram -> the position after its latest occurrence
        self.copy = 0  # the position in `text` whose unit is predicted next
        self.length = 0  # units matched before `copy`; 0 = no prediction
        self.right = [0] * (LONGEST + 1)
        self.made = [0] * (LONGEST + 1)

    def prediction(self) -> tuple[int, float] | None:
        """The unit the copy continues with, and how far to trust it (None: no earlier copy)."""
        if not self.length:
            return None
        length = min(self.length, LONGEST)
        return self.text[self.copy], (self.right[length] + 0.5) / (self.made[length] + 1)

    def push(self, unit: int) -> None:
        """Read one more unit: score the prediction made for it, then follow the copy or look for one."""
        text, length = self.text, min(self.length, LONGEST)
        followed = bool(self.length) and text[self.copy] == unit
        if self.length:
            self.made[length] += 1
            self.right[length] += followed
        text.append(unit)
        self.copy, self.length = (self.copy + 1, self.length + 1) if followed else (0, 0)
        if len(text) < self.min_len:
            return
        gram = tuple(text[-self.min_len :])
        if not self.length and gram in self.ends:
            self.copy = self.ends[gram]
            self.length = self._matched(self.copy)
        self.ends[gram] = len(text)

    def _matched(self, copy: int) -> int:
        """How many units before `copy` equal the last ones read (at least min_len; counted to LONGEST)."""
        text, n = self.text, self.min_len
        while n < LONGEST and n < copy and text[copy - n - 1] == text[-n - 1]:
            n += 1
        return n


def copies(ids: np.ndarray, start: int, end: int, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(copied, kept) for t in [start, end): under the match model over a base, P(ids[t] | ids[:t]) is
    `copied[t] + kept[t] * base[t]` (`copied`: the trust where the copy's unit is ids[t], else 0; `kept`:
    1 - the trust, 1 without a copy). Every unit from the first is read, so the copy may lie anywhere in
    the text before."""
    ids = np.asarray(ids, dtype=np.int64)
    if not 0 <= start <= end <= len(ids):
        raise ValueError(f"need 0 <= start <= end <= {len(ids)}, got {start}, {end}")
    match, copied, kept = Match(min_len), np.zeros(end - start), np.ones(end - start)
    for t, unit in enumerate(ids[:end].tolist()):
        if t >= start and (predicted := match.prediction()) is not None:
            guess, trust = predicted
            copied[t - start], kept[t - start] = trust * (unit == guess), 1 - trust
        match.push(unit)
    return copied, kept


def char_probabilities(ids: np.ndarray, start: int, end: int, base: np.ndarray, min_len: int) -> np.ndarray:
    """P(ids[t] | ids[:t]) for t in [start, end) under the match model over `base` (the mixture's
    probabilities of the same units)."""
    if len(base) != end - start:
        raise ValueError(f"need a base probability per scored unit: {len(base)} for {end - start}")
    copied, kept = copies(ids, start, end, min_len)
    return copied + kept * np.asarray(base, dtype=np.float64)


class Matches:
    """One `Match` per row, as generation appends a unit to each row: the rows' distributions over a
    base (the mixture's), the prompts read first."""

    def __init__(self, prompts: Sequence[np.ndarray] | np.ndarray, min_len: int) -> None:
        self.rows = []
        for prompt in prompts:
            match = Match(min_len)
            for unit in np.asarray(prompt).tolist():
                match.push(unit)
            self.rows.append(match)

    def distribution(self, base: np.ndarray) -> np.ndarray:
        """(batch, V): each row's `base` with the share it trusts its copy moved onto the copy's unit."""
        out = np.asarray(base, dtype=np.float64).copy()
        for row, match in enumerate(self.rows):
            if (predicted := match.prediction()) is not None:
                guess, trust = predicted
                out[row] *= 1 - trust
                out[row, guess] += trust
        return out

    def push(self, ids: np.ndarray) -> None:
        for match, unit in zip(self.rows, np.asarray(ids).tolist(), strict=True):
            match.push(unit)

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows from now on (the others' requests are done)."""
        self.rows = [self.rows[i] for i in rows]

    def join(self, other: Matches) -> Matches:
        """`other`'s rows after these (requests that joined the batch)."""
        self.rows += other.rows
        return self
