"""The Kneser-Ney baseline: proper distributions, the formula as published, the issue's figures."""

from __future__ import annotations

import pickle
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from char_rnn.corpus import read_source
from char_rnn.ngram import KneserNey, Memo, Suffixes, bits_per_char
from char_rnn.units import Units

REPO = Path(__file__).resolve().parents[1]


def ids_of(text: str, vocab: str) -> np.ndarray:
    return np.array([vocab.index(c) for c in text], dtype=np.int32)


def written_out_kn(train: list[int], vocab_size: int, order: int) -> Callable[[list[int], int], float]:
    """Interpolated Kneser-Ney transcribed from Chen & Goodman with dicts and loops: slow but obvious."""
    counts = {order: Counter(tuple(train[i : i + order]) for i in range(len(train) - order + 1))}
    for k in range(1, order):
        left = defaultdict(set)
        for i in range(len(train) - k + 1):
            left[tuple(train[i : i + k])].add(train[i - 1] if i else "<s>")
        counts[k] = Counter({gram: len(chars) for gram, chars in left.items()})
    discounts = {}
    for k, table in counts.items():
        n = Counter(table.values())
        discounts[k] = n[1] / (n[1] + 2 * n[2])

    def prob(context: list[int], char: int) -> float:
        p = 1.0 / vocab_size
        for k in range(1, min(order, len(context) + 1) + 1):
            history = tuple(context[len(context) - k + 1 :]) if k > 1 else ()
            followers = {g[-1]: c for g, c in counts[k].items() if g[:-1] == history}
            total = sum(followers.values())
            if total:
                d = discounts[k]
                p = max(followers.get(char, 0) - d, 0) / total + d * len(followers) / total * p
        return p

    return prob


def add_one_bits(train: np.ndarray, ids: np.ndarray, start: int, vocab_size: int, order: int) -> float:
    grams = Counter(tuple(train[i : i + order]) for i in range(len(train) - order + 1))
    contexts = Counter(tuple(train[i : i + order - 1]) for i in range(len(train) - order + 1))
    probs = [
        (grams[tuple(ids[t - order + 1 : t + 1])] + 1) / (contexts[tuple(ids[t - order + 1 : t])] + vocab_size)
        for t in range(start, len(ids))
    ]
    return bits_per_char(np.array(probs))


VOCAB = "가나다라마바사 .\n"
TRAIN = ids_of("가나다 가나라 나다라 마바사. 가나다라 바사 마. 다라마 가나.\n가나다 라마바사 가다.", VOCAB)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_distributions_sum_to_one_and_cover_every_char(order: int):
    vocab_size = len(VOCAB) + 3  # three characters that never occur in training
    model = KneserNey.fit(TRAIN, vocab_size, order)
    contexts = [TRAIN[:0], TRAIN[:1], TRAIN[5:12], ids_of("사사사사", VOCAB), np.array([vocab_size - 1] * 6)]
    for context in contexts:
        dist = model.distribution(context)
        assert dist.shape == (vocab_size,)
        assert dist.sum() == pytest.approx(1.0, abs=1e-12)
        assert (dist > 0).all()


@pytest.mark.parametrize("order", [1, 3, 5])
@pytest.mark.parametrize("length", [0, 1, 2, 4, 9])
def test_a_batch_of_next_distributions_is_what_scoring_gives_each_row(order: int, length: int):
    """Generation's batched lookup against `char_probabilities`, every row and every candidate character."""
    vocab_size = len(VOCAB) + 2  # two characters training never saw, as a prompt may hold
    model = KneserNey.fit(TRAIN, vocab_size, order)
    rng = np.random.default_rng(length)
    contexts = np.stack([TRAIN[i : i + length] for i in (0, 7, 20, 33)] + [rng.integers(0, vocab_size, length)])
    batch = model.next_distributions(contexts)
    for row, context in zip(batch, contexts):
        scored = [model.char_probabilities(np.append(context, c), length)[0] for c in range(vocab_size)]
        np.testing.assert_allclose(row, scored, rtol=1e-12)
        assert row.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("order", [1, 3, 5])
@pytest.mark.parametrize("capacity", [4, 1000])
def test_remembered_distributions_are_the_ones_computed(order: int, capacity: int):
    """Rows walking through text that comes back to its contexts (and to contexts training never saw):
    every step's distributions, recalled or computed, full or starting over, equal fresh ones bit for bit."""
    vocab_size = len(VOCAB) + 2
    model = KneserNey.fit(TRAIN, vocab_size, order)
    memo = Memo(len(model._flat.totals), vocab_size, budget=capacity * 8 * vocab_size)
    rng = np.random.default_rng(order)
    text = np.stack([np.tile(TRAIN[:9], 6), np.tile(TRAIN[3:12], 6), rng.integers(0, vocab_size, 54)])
    suffixes, computed = Suffixes(model, text[:, :1], memo), []
    compute = suffixes._compute
    suffixes._compute = lambda index: computed.append(index.shape[1]) or compute(index)
    for n in range(1, text.shape[1]):
        fresh = Suffixes(model, text[:, :n], Memo(len(model._flat.totals), vocab_size))
        np.testing.assert_array_equal(suffixes.distributions(), fresh.distributions())
        suffixes.push(text[:, n])
    assert sum(computed) < 3 * (text.shape[1] - 1)  # some rows were recalled, not computed
    assert memo.used <= memo.capacity == capacity
    assert Suffixes(model, text[:0, :3], memo).distributions().shape == (0, vocab_size)
    assert pickle.loads(pickle.dumps(model)).memo.used == 0


def test_threads_sharing_one_memo_each_get_their_own_distributions():
    """Served requests share the model's memo: threads walking different texts, a memo too small for
    them all (so it starts over while others read it), each step equal to a fresh computation."""
    vocab_size = len(VOCAB) + 2
    model = KneserNey.fit(TRAIN, vocab_size, 5)
    shared = Memo(len(model._flat.totals), vocab_size, budget=5 * 8 * vocab_size)
    texts = [np.random.default_rng(seed).choice(TRAIN, size=(2, 300)) for seed in range(4)]

    def walk(text: np.ndarray) -> list[np.ndarray]:
        suffixes, seen = Suffixes(model, text[:, :1], shared), []
        for n in range(1, text.shape[1]):
            seen.append(suffixes.distributions())
            suffixes.push(text[:, n])
        return seen

    with ThreadPoolExecutor(4) as pool:
        walked = list(pool.map(walk, texts))
    for text, seen in zip(texts, walked):
        for n, got in enumerate(seen, start=1):
            fresh = Suffixes(model, text[:, :n], Memo(len(model._flat.totals), vocab_size)).distributions()
            np.testing.assert_array_equal(got, fresh)


def test_probabilities_follow_the_written_out_formula():
    order, vocab_size = 4, len(VOCAB) + 2
    model = KneserNey.fit(TRAIN, vocab_size, order)
    reference = written_out_kn(TRAIN.tolist(), vocab_size, order)
    text = np.concatenate([TRAIN, ids_of("가나다라 사바마 가.", VOCAB), [vocab_size - 1, 0, 1]])
    for t in (0, 1, 2, len(TRAIN), len(TRAIN) + 5, len(text) - 2, len(text) - 1):
        context = text[:t].tolist()
        expected = [reference(context, c) for c in range(vocab_size)]
        np.testing.assert_allclose(model.distribution(text[:t]), expected, rtol=1e-12)


def test_each_char_of_the_slice_is_scored_once_with_its_context():
    model = KneserNey.fit(TRAIN, len(VOCAB), 3)
    text = np.concatenate([TRAIN, ids_of("가나다라 마바사.", VOCAB)])
    start = len(TRAIN) - 4  # the last training characters are context, scored or not
    probs = model.char_probabilities(text, start)
    assert len(probs) == len(text) - start
    expected = [model.distribution(text[:t])[text[t]] for t in range(start, len(text))]
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    # Context before the slice changes the first characters' probabilities: it is really used.
    alone = model.char_probabilities(text[start:], 0)
    assert not np.allclose(alone[:2], probs[:2]) and np.allclose(alone[2:], probs[2:])


def test_kneser_ney_beats_add_one_on_repetitive_text():
    vocab = "".join(chr(0xAC00 + i) for i in range(60))
    rng = np.random.default_rng(0)
    phrases = ["".join(rng.choice(list(vocab[:20]), size=7)) for _ in range(5)]
    text = ids_of("".join(phrases[i] for i in rng.integers(0, 5, size=300)), vocab)
    cut = int(len(text) * 0.9)
    kn = KneserNey.fit(text[:cut], len(vocab), 3).bits_per_char(text, cut)
    add_one = add_one_bits(text[:cut], text, cut, len(vocab), 3)
    assert kn < 0.7 * add_one


@pytest.mark.parametrize(("source", "expected"), [("kolaw", 3.59), ("kolaw+kobill", 2.75)])
def test_reproduces_the_issues_five_gram_figures(source: str, expected: float):
    text = read_source(source, REPO)
    ids = Units.closed(text).encode(text)  # the issue's figures: the whole text's characters, as they were
    cut = len(ids) - round(len(ids) * 0.1)
    model = KneserNey.fit(ids[:cut], int(ids.max()) + 1, 5)
    assert model.bits_per_char(ids, cut) == pytest.approx(expected, abs=0.01)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="order"):
        KneserNey.fit(TRAIN, len(VOCAB), 0)
    with pytest.raises(ValueError, match="ids must lie"):
        KneserNey.fit(TRAIN, 3, 2)
    with pytest.raises(ValueError, match="start"):
        KneserNey.fit(TRAIN, len(VOCAB), 2).char_probabilities(TRAIN, 5, 3)


def test_a_saved_model_loads_back_identical_without_pickle(tmp_path: Path) -> None:
    text = "가나다라 가나다 가나 라다나가 " * 5
    vocab = "".join(Units.closed(text).names)
    ids = ids_of(text, vocab)
    model = KneserNey.fit(ids[:60], len(vocab), 4)
    (tmp_path / "ngram.npz").write_bytes(model.to_bytes())
    loaded = KneserNey.load(tmp_path / "ngram.npz")
    assert loaded.order == 4 and loaded.vocab_size == len(vocab)
    np.testing.assert_array_equal(loaded.char_probabilities(ids, 60), model.char_probabilities(ids, 60))
    np.testing.assert_array_equal(loaded.distribution(ids[50:60]), model.distribution(ids[50:60]))
