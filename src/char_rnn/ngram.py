"""Character n-gram language model with interpolated Kneser-Ney smoothing: the baseline the RNN must beat.

Counting and scoring are vectorised with NumPy, so fitting on a million characters takes seconds.
An n-gram is never stored as a tuple: the n-gram starting at position i of order k gets the rank of
`(rank of its first k-1 characters) * V + last character` among the sorted unique keys of order k.
Keys therefore stay below (distinct (k-1)-grams) x V whatever the order, and looking up a context of
new text is one `searchsorted` per order.

Smoothing (Chen & Goodman 1999, "interpolated Kneser-Ney"):

    P_k(w | h) = max(c_k(hw) - D_k, 0) / c_k(h.) + D_k N1+(h.) / c_k(h.) * P_{k-1}(w | h'),

where c_k is the raw count at the highest order and the continuation count N1+(.g) (distinct
characters seen before g) below it, h' drops the oldest character of h, D_k = n1 / (n1 + 2 n2) from
the counts of counts of order k, and P_0 is uniform over the vocabulary. Every vocabulary character,
seen or not, therefore gets a positive probability, and a context never seen backs off to the longest
seen suffix. The start of the training text counts as one extra left context (as `<s>` would).
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

UNSEEN = -1


@dataclass(frozen=True)
class _Order:
    """Tables of one order k: n-grams as sorted keys (context rank * V + char) and per-context sums."""

    keys: np.ndarray  # sorted unique int64 keys of the k-grams
    counts: np.ndarray  # raw (highest order) or continuation counts, aligned with keys
    totals: np.ndarray  # per context rank: sum of counts of its followers
    backoff: np.ndarray  # per context rank: D * (number of distinct followers) / total
    discount: float


def _gram_ranks(ids: np.ndarray, order: int, vocab_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For k = 0..order: sorted unique keys of the k-grams of `ids`, and the rank of the k-gram at each start."""
    keys = [np.zeros(1, dtype=np.int64)]
    ranks = [np.zeros(len(ids) + 1, dtype=np.int64)]
    for k in range(1, order + 1):
        n = len(ids) - k + 1
        key = ranks[k - 1][:n] * vocab_size + ids[k - 1 :].astype(np.int64)
        unique, rank = np.unique(key, return_inverse=True)
        keys.append(unique)
        ranks.append(rank.astype(np.int64))
    return keys, ranks


def _discount(counts: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2), Ney's estimate; 0.5 when the counts of counts cannot support it."""
    n1, n2 = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


def _continuation_counts(ranks: list[np.ndarray], n_grams: int, k: int) -> np.ndarray:
    """N1+(.g) for every k-gram g: distinct (k+1)-grams ending in g, plus one for the text's first k-gram."""
    _, first = np.unique(ranks[k + 1], return_index=True)
    counts = np.bincount(ranks[k][first + 1], minlength=n_grams).astype(np.float64)
    counts[ranks[k][0]] += 1.0
    return counts


@dataclass(frozen=True)
class KneserNey:
    """A fitted model; build it with `KneserNey.fit(ids, vocab_size, order)`."""

    order: int
    vocab_size: int
    tables: tuple[_Order, ...]  # tables[k - 1] holds order k

    @classmethod
    def fit(cls, ids: np.ndarray, vocab_size: int, order: int = 5) -> KneserNey:
        """Count every n-gram of `ids` (ints in [0, vocab_size)) up to `order`; seconds for a million ids."""
        ids = np.asarray(ids, dtype=np.int64)
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        if len(ids) < order + 1:
            raise ValueError(f"{len(ids)} training characters are too few for a {order}-gram model")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"ids must lie in [0, {vocab_size})")
        keys, ranks = _gram_ranks(ids, order, vocab_size)
        tables = []
        for k in range(1, order + 1):
            if k == order:
                counts = np.bincount(ranks[k], minlength=len(keys[k])).astype(np.float64)
            else:
                counts = _continuation_counts(ranks, len(keys[k]), k)
            tables.append(_order_table(keys[k], counts, len(keys[k - 1]), vocab_size))
        return cls(order=order, vocab_size=vocab_size, tables=tuple(tables))

    def context_ranks(self, ids: np.ndarray) -> list[np.ndarray]:
        """ranks[m][j]: rank of the training m-gram equal to ids[j:j+m], UNSEEN if training never had it."""
        ids = np.asarray(ids, dtype=np.int64)
        ranks = [np.zeros(len(ids) + 1, dtype=np.int64)]
        for m in range(1, self.order):
            n = max(len(ids) - m + 1, 0)
            prev = ranks[m - 1][:n]
            ranks.append(self._lookup(m, prev, ids[m - 1 : m - 1 + n]))
        return ranks

    def _lookup(self, k: int, context: np.ndarray, chars: np.ndarray) -> np.ndarray:
        """Rank among the training k-grams of (context rank, char) pairs; UNSEEN where there is none."""
        keys = self.tables[k - 1].keys
        key = context * self.vocab_size + chars
        pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        found = (context != UNSEEN) & (keys[pos] == key)
        return np.where(found, pos, UNSEEN)

    def char_probabilities(self, ids: np.ndarray, start: int, end: int | None = None) -> np.ndarray:
        """P(ids[t] | ids[:t]) for every t in [start, end): each character once, with all the context before it.

        `ids[:start]` is context only (for example the end of the training text before the validation slice).
        """
        ids = np.asarray(ids, dtype=np.int64)
        end = len(ids) if end is None else end
        if not 0 <= start <= end <= len(ids):
            raise ValueError(f"need 0 <= start <= end <= {len(ids)}, got start={start}, end={end}")
        lo = max(start - self.order + 1, 0)  # only the last order-1 characters of context matter
        window = ids[lo:end]
        ranks = self.context_ranks(window)
        positions = np.arange(start - lo, end - lo)
        probs = np.full(len(positions), 1.0 / self.vocab_size)
        for k, table in enumerate(self.tables, start=1):
            begin = positions - (k - 1)  # where the k-1 characters of context start
            usable = begin >= 0  # none for a text shorter than the order: ranks[k - 1] may then be empty
            context = np.full(len(positions), UNSEEN, dtype=np.int64)
            context[usable] = ranks[k - 1][begin[usable]]
            probs = _interpolate(table, context, self._gram_counts(k, context, window[positions]), probs)
        return probs

    def _gram_counts(self, k: int, context: np.ndarray, chars: np.ndarray) -> np.ndarray:
        rank = self._lookup(k, context, chars)
        return np.where(rank != UNSEEN, self.tables[k - 1].counts[np.maximum(rank, 0)], 0.0)

    def distribution(self, context: np.ndarray) -> np.ndarray:
        """The full next-character distribution after `context` (ids): sums to 1, positive everywhere."""
        return self.next_distributions(np.asarray(context, dtype=np.int64)[None, :])[0]

    def next_distributions(self, contexts: np.ndarray) -> np.ndarray:
        """(batch, V): the next character's distribution after each row of `contexts` (the ids so far,
        oldest first; all rows equally long), for every row and character at once."""
        return Suffixes(self, contexts).distributions()

    @cached_property
    def _flat(self) -> _Flat:
        return _Flat.of(self)

    @cached_property
    def memo(self) -> Memo:
        """The distributions generation has computed so far (`Memo`)."""
        return Memo(len(self._flat.totals), self.vocab_size)

    def bits_per_char(self, ids: np.ndarray, start: int, end: int | None = None) -> float:
        return bits_per_char(self.char_probabilities(ids, start, end))

    def to_bytes(self) -> bytes:
        """Plain arrays in one `.npz` (no pickle), so the file is safe to load from a model bundle."""
        arrays = {"order": np.array(self.order), "vocab_size": np.array(self.vocab_size)}
        for k, table in enumerate(self.tables, start=1):
            arrays |= {f"{name}_{k}": np.asarray(getattr(table, name)) for name in _Order.__dataclass_fields__}
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    @classmethod
    def load(cls, path: Path) -> KneserNey:
        with np.load(path, allow_pickle=False) as data:
            order = int(data["order"])
            tables = tuple(_load_order(data, k) for k in range(1, order + 1))
            return cls(order=order, vocab_size=int(data["vocab_size"]), tables=tables)


@dataclass(frozen=True)
class _Flat:
    """Every order's tables end to end, so that one NumPy call serves all orders at once: order k's
    keys are shifted by `key_base[k]` (the blocks stay sorted), its contexts start at `context_start[k]`."""

    keys: np.ndarray  # all orders' keys, shifted, sorted, then a sentinel above every key
    key_base: np.ndarray  # per order k (index k; 0 unused): shift of its keys
    key_start: np.ndarray  # per order k: index of its first key in `keys`
    context_start: np.ndarray  # per order k: index of its sentinel context; its context of rank r is at + 1 + r
    begin: np.ndarray  # per context: its followers are keys[begin:end]
    end: np.ndarray
    totals: np.ndarray
    backoff: np.ndarray  # 1 where the context has no followers: the lower order is kept whole
    own: np.ndarray  # per key: max(count - D, 0) / total of its context, the order's own share
    chars: np.ndarray  # per key: the character it predicts
    unigram: np.ndarray  # (V,): order 1 over the uniform (its context is always the empty one)

    @classmethod
    def of(cls, model: KneserNey) -> _Flat:
        v, tables = model.vocab_size, model.tables
        n_keys = np.array([0] + [len(t.keys) for t in tables])
        n_contexts = np.array([0] + [len(t.totals) for t in tables])
        key_start, context_start = np.cumsum(n_keys)[:-1], np.cumsum(np.r_[0, n_contexts[1:] + 1])[:-1]
        key_base = np.concatenate([[0], np.cumsum(n_contexts[1:] * v)[:-1]])
        # Each order's contexts follow a sentinel (no followers): where UNSEEN (-1) lands, so that a
        # step looks contexts up without testing for UNSEEN.
        starts = [np.searchsorted(t.keys, np.arange(len(t.totals) + 1, dtype=np.int64) * v) for t in tables]
        own = [np.maximum(t.counts - t.discount, 0.0) / t.totals[t.keys // v] for t in tables]
        unigram = np.full(v, tables[0].backoff[0] / v)
        unigram[tables[0].keys % v] += own[0]
        return cls(
            keys=np.concatenate([*(t.keys + key_base[i] for i, t in enumerate(tables)), [np.iinfo(np.int64).max]]),
            key_base=np.concatenate([[0], key_base]),
            key_start=np.concatenate([[0], key_start]),
            context_start=np.concatenate([[0], context_start]),
            begin=np.concatenate([np.r_[0, s[:-1] + key_start[k]] for k, s in enumerate(starts)]),
            end=np.concatenate([np.r_[0, s[1:] + key_start[k]] for k, s in enumerate(starts)]),
            totals=np.concatenate([np.r_[0.0, t.totals] for t in tables]),
            backoff=np.concatenate([np.r_[1.0, np.where(t.totals > 0, t.backoff, 1.0)] for t in tables]),
            own=np.concatenate(own),
            chars=np.concatenate([t.keys % v for t in tables]),
            unigram=unigram,
        )


class Suffixes:
    """Each row's last 1 .. order-1 characters as ranks among the training n-grams, kept up to date as
    generation appends one character per row. A step is a fixed number of NumPy calls whatever the
    order, the batch or the vocabulary: every order is looked up and scattered at once (`_Flat`).

    The distribution is the recursion of `_interpolate` unrolled from the highest order down:
    P = own_K + b_K (own_{K-1} + b_{K-1} (... P_1)) = sum_k scale_k own_k + scale_1 P_1, where scale_k
    is the product of the backoffs of the orders above k whose context was seen (an unseen context
    keeps the lower order, as in scoring).
    """

    def __init__(self, model: KneserNey, contexts: np.ndarray, memo: Memo | None = None) -> None:
        contexts = np.asarray(contexts, dtype=np.int64)
        self.model, self.flat, self.memo = model, model._flat, memo or model.memo
        self.contexts = self.flat.context_start[2 : model.order + 1, None] + 1  # rank 0 of orders 2 .. K
        self.key_base, self.key_start = (
            self.flat.key_base[1 : model.order, None],
            self.flat.key_start[1 : model.order, None],
        )
        self.ranks = np.full((model.order, len(contexts)), UNSEEN, dtype=np.int64)  # ranks[m]: last m ids
        self.ranks[0] = 0  # the empty context
        for column in contexts[:, contexts.shape[1] - min(model.order - 1, contexts.shape[1]) :].T:
            self.push(column)

    @classmethod
    def of_rows(cls, model: KneserNey, prompts: Sequence[np.ndarray]) -> Suffixes:
        """Rows whose texts differ in length (requests served together)."""
        suffixes = cls(model, np.zeros((len(prompts), 0), dtype=np.int64))
        for i, prompt in enumerate(prompts):
            suffixes.ranks[:, i] = cls(model, np.asarray(prompt)[None, :]).ranks[:, 0]
        return suffixes

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows from now on (the others' requests are done)."""
        self.ranks = self.ranks[:, rows]

    def join(self, other: Suffixes) -> Suffixes:
        """`other`'s rows after these (requests that joined the batch)."""
        self.ranks = np.concatenate([self.ranks, other.ranks], axis=1)
        return self

    def push(self, ids: np.ndarray) -> None:
        """Append one character to every row: its m-suffix is its old (m-1)-suffix followed by `ids`."""
        context = self.ranks[:-1]  # (order-1, batch): the old (m-1)-suffixes, m = 1 .. order-1
        key = self.key_base + context * self.model.vocab_size + np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.flat.keys, key)  # at most the sentinel's index
        found = (context != UNSEEN) & (self.flat.keys[pos] == key)
        self.ranks[1:] = np.where(found, pos - self.key_start, UNSEEN)

    def distributions(self) -> np.ndarray:
        """(batch, V): the next character's distribution after each row's text so far."""
        index = self.contexts + self.ranks[1:]  # orders 2 .. K: contexts of 1 .. K-1 ids; UNSEEN: the sentinel
        longest = np.where(self.ranks[1:] != UNSEEN, index, -1).max(axis=0, initial=-1)  # -1: none seen
        return self.memo.recall(longest, index, self._compute)

    def _compute(self, index: np.ndarray) -> np.ndarray:
        """The distributions of the rows whose context indexes are `index` (orders 2 .. K, batch)."""
        flat, v, batch = self.flat, self.model.vocab_size, index.shape[1]
        above = np.cumprod(flat.backoff[index][::-1], axis=0)[::-1]  # above[i]: backoffs of order i+2 and higher
        scale = np.concatenate([above[1:], np.ones((1, batch))])  # order i+2's own share is scaled by the orders above
        pick = np.flatnonzero(flat.totals[index] > 0)
        seen = index.ravel()[pick]
        begin, end = flat.begin[seen], flat.end[seen]
        sizes = end - begin
        keys = np.repeat(begin - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
        rows = np.repeat(pick % batch, sizes)
        share = flat.own[keys] * np.repeat(scale.ravel()[pick], sizes)
        out = np.bincount(rows * v + flat.chars[keys], share, minlength=batch * v).reshape(batch, v)
        return out + (above[0] if len(above) else np.ones(batch))[:, None] * flat.unigram


class Memo:
    """Distributions already computed, by the longest context each was computed after: that context
    decides every lower order's too (a suffix of a seen context was seen), hence the whole
    distribution. Generated text keeps coming back to the same contexts (greedy text most of all), so
    most steps copy a row instead of summing every order again. The copy is the array that was
    computed, bit for bit. Bounded: `budget` bytes of rows (then it starts over), plus 8 bytes per
    context of the model for the index. Shared by every generation from one model, served requests
    included, so it takes a lock; a copy of the model (pickle, deepcopy) gets an empty memo.
    """

    def __init__(self, n_contexts: int, vocab_size: int, budget: int = 32 * 2**20) -> None:
        self.capacity = max(1, budget // (8 * vocab_size))
        self.slot_of = np.full(n_contexts + 1, -1, dtype=np.int64)  # + 1: index -1, no context seen at all
        self.keys = np.empty(self.capacity, dtype=np.int64)
        self.rows = np.empty((self.capacity, vocab_size))
        self.used = 0
        self.lock = threading.RLock()  # `clear` takes it too, also from inside `recall`

    def __reduce__(self) -> tuple[type[Memo], tuple[int, int, int]]:
        vocab_size = self.rows.shape[1]
        return Memo, (len(self.slot_of) - 1, vocab_size, self.capacity * 8 * vocab_size)

    def recall(self, keys: np.ndarray, index: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The rows for `keys`, computing (with `compute(index[:, missing])`) and keeping those not kept yet."""
        with self.lock:
            slots = self.slot_of[keys]
            if (slots >= 0).all():  # also an empty batch
                return self.rows[slots]
            missing = np.flatnonzero(slots < 0)
            fresh = compute(index[:, missing])
            if len(missing) == len(keys):
                out = fresh
            else:
                out = self.rows[np.maximum(slots, 0)]
                out[missing] = fresh
            self._keep(keys[missing], fresh)
            return out

    def clear(self) -> None:
        """Forget every distribution (when full, and for benchmarks that time a first generation)."""
        with self.lock:
            self.slot_of[self.keys[: self.used]], self.used = -1, 0

    def _keep(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """A key twice in one call takes two slots, either holding its row: cheaper than a `np.unique` per step."""
        n = len(keys)
        if n > self.capacity:
            return
        if self.used + n > self.capacity:
            self.clear()
        self.slot_of[keys] = np.arange(self.used, self.used + n)
        self.keys[self.used : self.used + n], self.rows[self.used : self.used + n] = keys, rows
        self.used += n


def _load_order(data: np.lib.npyio.NpzFile, k: int) -> _Order:
    arrays = {name: data[f"{name}_{k}"] for name in _Order.__dataclass_fields__}
    return _Order(**{**arrays, "discount": float(arrays["discount"])})


def _order_table(keys: np.ndarray, counts: np.ndarray, n_contexts: int, vocab_size: int) -> _Order:
    discount = _discount(counts)
    context = keys // vocab_size
    totals = np.bincount(context, weights=counts, minlength=n_contexts)
    distinct = np.bincount(context, minlength=n_contexts)
    backoff = np.divide(discount * distinct, totals, out=np.zeros(n_contexts), where=totals > 0)
    return _Order(keys=keys, counts=counts, totals=totals, backoff=backoff, discount=discount)


def _interpolate(table: _Order, context: np.ndarray, counts: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """One step of the recursion; where the context is unseen (or has no followers) keep the lower order."""
    safe = np.maximum(context, 0)
    total = np.where(context != UNSEEN, table.totals[safe], 0.0)
    seen = total > 0
    own = np.divide(np.maximum(counts - table.discount, 0.0), total, out=np.zeros_like(lower), where=seen)
    return np.where(seen, own + table.backoff[safe] * lower, lower)


def bits_per_char(probs: np.ndarray, chars: int | None = None) -> float:
    """-log2 P of the scored units per character they spell (`chars`; default: one unit per character):
    the cross-entropy every model here is compared on, whatever its units."""
    return float(-np.sum(np.log2(probs)) / (len(probs) if chars is None else chars))


def perplexity(probs: np.ndarray, chars: int | None = None) -> float:
    """Per character, the same figure as 2 ** bits_per_char."""
    return math.exp(float(-np.sum(np.log(probs)) / (len(probs) if chars is None else chars)))
