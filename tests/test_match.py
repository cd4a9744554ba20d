"""The match model: it predicts the continuation of an earlier copy, learns how far to trust it from
what it has read, reads only the text before each unit, and generation sees what scoring sees."""

from __future__ import annotations

import numpy as np
import pytest

from char_rnn import match

V = 12


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / V)


def test_a_copy_of_earlier_text_is_predicted_from_the_copy() -> None:
    rng = np.random.default_rng(0)
    passage, other = rng.integers(0, V, 200), rng.integers(0, V, 100)
    ids = np.concatenate([passage, other, passage])
    start = len(passage) + len(other)
    probs = match.char_probabilities(ids, start, len(ids), uniform(len(passage)), min_len=4)
    # The first four units of the copy have no match yet: the base alone.
    np.testing.assert_allclose(probs[:4], 1.0 / V)
    # Then each unit is the copy's: most of the mass, more as the copy keeps being right.
    assert probs[10] > 0.5 and probs[-1] > 0.95 and np.all(np.diff(probs[20:]) >= -1e-12)
    # Random text of twelve symbols repeats four-unit strings by chance, mostly wrongly: little trust.
    chance = match.char_probabilities(ids, len(passage), start, uniform(len(other)), min_len=4)
    assert np.mean(np.log2(chance)) > np.log2(1.0 / V) - 0.3


def test_trust_is_learnt_from_how_often_a_match_of_that_length_was_right() -> None:
    """0 1 0 2 0 3 ...: after each 0 the copy says the unit that followed the last 0, always wrongly.
    Its trust is the Krichevsky-Trofimov estimate over those misses, 0.5 / (misses + 1)."""
    size = 50
    ids = np.array([u for k in range(1, 41) for u in (0, k)])
    probs = match.char_probabilities(ids, 0, len(ids), np.full(len(ids), 1.0 / size), min_len=1)
    new_units = probs[3::2]  # unit k = 2, 3, ...: the (k - 1)th prediction, after k - 2 misses
    expected = [(1 - 0.5 / (k - 1)) / size for k in range(2, 41)]
    np.testing.assert_allclose(new_units, expected)
    # The 0s are not predicted: after a unit never seen before there is no copy to follow.
    np.testing.assert_allclose(probs[0::2], 1.0 / size)


def test_only_the_text_before_a_unit_is_read() -> None:
    rng = np.random.default_rng(1)
    ids = np.tile(rng.integers(0, V, 50), 4)
    changed = ids.copy()
    changed[120:] = rng.integers(0, V, len(ids) - 120)
    before = match.char_probabilities(ids, 60, len(ids), uniform(len(ids) - 60), min_len=3)
    after = match.char_probabilities(changed, 60, len(ids), uniform(len(ids) - 60), min_len=3)
    np.testing.assert_array_equal(before[: 120 - 60], after[: 120 - 60])  # units 60 .. 119
    assert not np.array_equal(before, after)


def test_each_unit_is_predicted_by_a_distribution_over_every_unit() -> None:
    """Replacing unit t by each unit in turn, the probabilities sum to 1: what unit t is cannot have
    moved the prediction (a look-ahead of even one unit would)."""
    rng = np.random.default_rng(4)
    ids = np.tile(rng.integers(0, V, 30), 3)
    for t in (35, 64, 89):
        total = 0.0
        for unit in range(V):
            replaced = ids.copy()
            replaced[t] = unit
            total += match.char_probabilities(replaced, t, t + 1, uniform(1), min_len=3)[0]
        assert total == pytest.approx(1.0)


@pytest.mark.parametrize("prompt", [1, 30, 90])
def test_generation_rows_give_the_scored_probabilities(prompt: int) -> None:
    """`Matches`, pushed a unit at a time for a batch, against scoring each row's text."""
    rng = np.random.default_rng(2)
    base_rows = rng.dirichlet(np.ones(V), size=(3, 200))  # a different base distribution at every step
    rows = np.stack([np.tile(rng.integers(0, V, 40), 5), rng.integers(0, V, 200), np.tile([3, 1, 4, 1, 5], 40)])
    matches = match.Matches(rows[:, :prompt], min_len=3)
    seen = []
    for n in range(prompt, rows.shape[1]):
        dist = matches.distribution(base_rows[:, n])
        np.testing.assert_allclose(dist.sum(axis=1), 1.0)
        seen.append(dist[np.arange(3), rows[:, n]])
        matches.push(rows[:, n])
    for i, row in enumerate(rows):
        base = base_rows[i, prompt:, :][np.arange(len(row) - prompt), row[prompt:]]
        np.testing.assert_allclose(np.array(seen)[:, i], match.char_probabilities(row, prompt, len(row), base, 3))


def test_rows_leave_and_join() -> None:
    rows = match.Matches([np.array([1, 2, 3, 1, 2]), np.array([4, 5, 6, 4, 5]), np.array([7, 8])], min_len=2)
    rows.keep(np.array([1]))
    rows.join(match.Matches([np.array([1, 2, 3, 1, 2])], min_len=2))
    dist = rows.distribution(np.full((2, V), 1.0 / V))
    assert dist[0].argmax() == 6 and dist[1].argmax() == 3  # each row follows its own copy


def test_a_match_length_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        match.Match(0)
