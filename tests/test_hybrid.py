"""The hybrid: its weights maximise the tuning slice's likelihood and never see the scored text;
hybrid.json is a typed record that loads in every format it was written in, or is refused by name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from char_rnn import cache, match
from char_rnn.heldout import rnn_char_probabilities
from char_rnn.hybrid import (
    FORMAT,
    DynamicChoice,
    Hybrid,
    HybridError,
    Weights,
    best_share,
    dump_hybrid,
    fit_hybrid_weights,
    fit_weights,
    fixed_share,
    load_hybrid,
)
from char_rnn.ngram import KneserNey, bits_per_char
from conftest import TEXT_VOCAB


def mixed_bits(weights, parts) -> float:
    return bits_per_char(np.tensordot(weights, np.asarray(parts), axes=1))


def test_fitted_weights_maximise_the_tuning_likelihood_and_never_lose():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 2001)
    for _ in range(20):
        a, b = rng.uniform(1e-4, 1, size=(2, 50)) ** rng.uniform(0.5, 4, size=2)[:, None]
        weights = fit_weights([a, b])
        best = grid[np.argmin([mixed_bits([g, 1 - g], [a, b]) for g in grid])]
        assert weights.sum() == pytest.approx(1.0) and abs(weights[0] - best) <= 1e-3
        assert mixed_bits(weights, [a, b]) <= min(bits_per_char(a), bits_per_char(b)) + 1e-9
    a = rng.uniform(0.5, 1, size=30)
    assert fit_weights([a, a / 4])[0] > 1 - 1e-6 and fit_weights([a / 4, a])[0] < 1e-6


def test_with_the_match_model_over_it_the_weights_are_fitted_for_what_is_scored():
    """Part A is good where a copy predicts the unit anyway (an RNN that memorised a near-copy), B on
    the rest: with the copy's layer, the parts do not compete for the copied units, and B wins."""
    copy = np.arange(600) < 400  # the copy is right on the first 400 units, absent on the rest
    parts = np.array([np.where(copy, 0.9, 0.02), np.where(copy, 0.1, 0.3)])
    copied, kept = np.where(copy, 0.9, 0.0), np.where(copy, 0.1, 1.0)
    plain, layered = fit_weights(parts), fit_weights(parts, (copied, kept))
    assert layered[1] > plain[1] + 0.3

    def scored(weights: np.ndarray) -> float:
        return bits_per_char(copied + kept * (weights @ parts))

    assert scored(layered) < scored(plain)
    for step in (0.01, -0.01):
        nearby = np.clip(layered + np.array([step, -step]), 0, 1)
        assert scored(layered) <= scored(nearby / nearby.sum()) + 1e-12


def test_three_weights_beat_every_pair_and_any_nearby_point():
    rng = np.random.default_rng(1)
    parts = rng.uniform(1e-3, 1, size=(3, 200)) ** rng.uniform(0.5, 3, size=3)[:, None]
    weights = fit_weights(parts)
    best = mixed_bits(weights, parts)
    for i in range(3):
        pair = np.delete(parts, i, axis=0)
        assert best <= mixed_bits(fit_weights(pair), pair) + 1e-9
    for step in rng.normal(scale=0.02, size=(50, 3)):
        moved = np.clip(weights + step - step.mean(), 0, None)
        assert best <= mixed_bits(moved / moved.sum(), parts) + 1e-9


def test_weights_must_be_a_distribution():
    assert Weights(0.5, 0.3, 0.2, cache_window=10).mix(1.0, 0.5, 0.25) == pytest.approx(0.7)
    for bad in ((0.5, 0.6), (-0.1, 1.1), (math.nan, math.nan)):
        with pytest.raises(ValueError, match="sum to 1"):
            Weights(*bad)
    for window in (0, 2.5, -3):  # a cache weight needs a window of whole characters
        with pytest.raises(ValueError, match="cache window"):
            Weights(0.5, 0.3, 0.2, cache_window=window)
    with pytest.raises(ValueError, match="pass its probabilities"):
        Weights(0.5, 0.3, 0.2, cache_window=10).mix(1.0, 0.5)
    for length in (-1, 2.5):
        with pytest.raises(ValueError, match="match length"):
            Weights(0.5, 0.5, match_min=length)


def switching(units: int = 400) -> np.ndarray:
    """Two parts that take turns: the first predicts well in the first and third quarters, the second
    in the other two (a passage the n-gram has counted before, then new text the RNN knows better)."""
    good, bad = np.full(units // 4, 0.9), np.full(units // 4, 0.05)
    return np.array([np.concatenate([good, bad, good, bad]), np.concatenate([bad, good, bad, good])])


def test_weights_that_follow_the_text_beat_any_fixed_weights_where_parts_take_turns():
    parts = switching()
    fixed = fit_weights(parts)  # the best fixed weights for this very text
    followed = fixed_share(parts, fixed, [0.05])[0]
    assert bits_per_char(followed) < 0.5 * mixed_bits(fixed, parts)
    # within the bound: the best part at each unit, plus -log2(1 - share) per unit and a cost per switch
    best_each = np.log2(parts.max(axis=0)).sum()
    assert -np.log2(followed).sum() <= -best_each - len(followed) * np.log2(0.95) + 4 * -np.log2(0.05 / 2) + 1
    assert np.allclose(fixed_share(parts, fixed, [1.0])[0], fixed @ parts)  # share 1: the fixed mixture
    assert Weights(0.4, 0.6, share=0.05).track(*parts) == pytest.approx(
        fixed_share(parts, np.array([0.4, 0.6]), [0.05])[0]
    )


def test_weights_follow_only_the_text_before_each_unit():
    parts, changed = switching(), switching()
    changed[:, 150:] = changed[::-1, 150:]  # what comes after unit 150 is another text
    before, after = fixed_share(parts, np.array([0.5, 0.5]), [0.1]), fixed_share(changed, np.array([0.5, 0.5]), [0.1])
    assert np.array_equal(before[:, :150], after[:, :150]) and not np.array_equal(before[:, 150:], after[:, 150:])
    # by hand: unit 0 at the prior; its posterior (0.9, 0.1), half of it kept, weighs unit 1: 0.7, 0.3
    by_hand = fixed_share(np.array([[0.9, 0.1], [0.1, 0.9]]), np.array([0.5, 0.5]), [0.5])[0]
    assert by_hand == pytest.approx([0.5, 0.7 * 0.1 + 0.3 * 0.9])


def test_the_share_is_chosen_on_the_slice_and_fixed_weights_stay_a_candidate():
    assert best_share(switching(), np.array([0.5, 0.5]), [0.3, 0.05, 0.001]) < 1
    # It is chosen on what is scored: here a layer over the mixture that undoes what following gains.
    assert best_share(switching(), np.array([0.5, 0.5]), [0.3, 0.05, 0.001], lambda p: 1 - 0.9 * p) == 1.0
    steady = np.random.default_rng(3).uniform(0.2, 0.9, size=(2, 400))  # no part better for long
    assert best_share(steady, fit_weights(steady), [0.3, 0.05]) == 1.0
    for bad in (0, 1.5, math.nan):
        with pytest.raises(ValueError, match="share"):
            Weights(0.5, 0.5, share=bad)


def test_weights_cannot_score_a_character_no_part_allows():
    with pytest.raises(ValueError, match="probability 0 under every part"):
        fit_weights([np.array([0.5, 0.0]), np.array([0.5, 0.0])])


def test_hybrid_json_round_trips(tmp_path):
    path = tmp_path / "hybrid.json"
    chosen = Hybrid(
        weights=Weights(0.3, 0.6, 0.1, cache_window=100, share=0.01, match_min=4),
        ngram_order=5,
        dynamic=DynamicChoice(rate=0.6, segment=25, context=100, tune_bits_per_char={"0.0": 4.0, "0.6": None}),
    )
    path.write_text(dump_hybrid(chosen), encoding="utf-8")
    assert load_hybrid(path) == chosen and json.loads(path.read_text())["format"] == FORMAT
    path.write_text(json.dumps({"format": 3, "weights": {"rnn": 0.4, "ngram": 0.6}}), encoding="utf-8")
    old = load_hybrid(path).weights
    assert old.share == 1.0 and old.match_min == 0  # written before weights could follow the text or a match model
    path.write_text(dump_hybrid(Hybrid()), encoding="utf-8")
    assert load_hybrid(path).weights is None  # no tuning slice: nothing fitted


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"format": 3, "weights": {"rnn": 0.9, "ngram": 0.9}}, "sum to 1"),
        ({"format": 3, "weights": {"rnn": 1.0}}, "weights"),
        ({"format": 3, "weights": {"rnn": 0.5, "ngram": 0.5, "typo": 0.0}}, "weights"),
        ({"format": 3, "colour": "red"}, "colour: Extra inputs"),
        ({"format": 2, "tune_chars": 9, "context": 500}, "format 2 is not known"),
        ({"weights": {"rnn": 0.5, "ngram": 0.5}}, "format None is not known"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_an_unusable_hybrid_json_is_refused_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "hybrid.json"
    path.write_text(json.dumps(content))
    with pytest.raises(HybridError, match=f"hybrid.json: .*{reason}.*rerun the tune stage"):
        load_hybrid(path)


def test_hybrid_weights_are_fitted_without_the_scored_text(untrained, text):
    train_end, tune_end = 300, 350
    # Noise in the tuning slice, which the n-gram finds surprising, makes the best weights inner ones.
    noisy = text.copy()
    noisy[train_end:tune_end:3] = np.random.default_rng(2).integers(0, TEXT_VOCAB, size=17)
    weights = fit_hybrid_weights([untrained], noisy, (train_end, tune_end), order=3, context=100, cache_window=0)
    other = noisy.copy()
    other[tune_end:] = np.random.default_rng(1).integers(0, TEXT_VOCAB, size=len(text) - tune_end)
    assert 0.0 < weights.rnn < 1.0 and weights.cache == 0.0
    again = fit_hybrid_weights([untrained], other, (train_end, tune_end), order=3, context=100, cache_window=0)
    assert again == weights
    # The n-gram it weighs against has counted the training text only, not the tuning slice.
    p_rnn = rnn_char_probabilities(untrained, noisy, train_end, tune_end, warmup=100)
    unseen = KneserNey.fit(noisy[:train_end], TEXT_VOCAB, 3).char_probabilities(noisy, train_end, tune_end)
    seen = KneserNey.fit(noisy[:tune_end], TEXT_VOCAB, 3).char_probabilities(noisy, train_end, tune_end)
    assert weights.rnn == fit_weights([p_rnn, unseen])[0] != fit_weights([p_rnn, seen])[0]


def test_a_cache_gets_weight_where_the_text_quotes_itself(untrained, text):
    """Text that repeats its recent characters: the cache earns a share, fitted on the tuning slice only."""
    train_end, tune_end = 300, 360
    quoting = text.copy()
    quoting[train_end:] = np.tile(np.random.default_rng(4).integers(0, TEXT_VOCAB, size=10), 10)
    weights = fit_hybrid_weights([untrained], quoting, (train_end, tune_end), order=3, context=100, cache_window=20)
    assert weights.cache > 0.1 and weights.cache_window == 20
    other = quoting.copy()
    other[tune_end:] = 0
    again = fit_hybrid_weights([untrained], other, (train_end, tune_end), order=3, context=100, cache_window=20)
    assert again == weights


def test_over_the_mixture_the_match_model_predicts_text_that_copies_earlier_text(untrained, text):
    """A scored text that repeats the training text from 250 units back, farther than the cache looks:
    with the match model over the mixture the hybrid scores the copy far better, and the share is
    chosen on what is scored, the match model included."""
    train_end, tune_end = 300, 340
    copying = text.copy()
    copying[train_end:] = text[50 : 50 + len(text) - train_end]
    fit = {"order": 3, "context": 100, "cache_window": 20, "shares": [0.1, 0.01]}
    weights = fit_hybrid_weights([untrained], copying, (train_end, tune_end), **fit, match_min=4)
    without = fit_hybrid_weights([untrained], copying, (train_end, tune_end), **fit)
    assert weights.match_min == 4 and without.match_min == 0
    p_rnn = rnn_char_probabilities(untrained, copying, tune_end, len(text), warmup=100)
    p_kn = KneserNey.fit(copying[:tune_end], TEXT_VOCAB, 3).char_probabilities(copying, tune_end)
    scored = bits_per_char(weights.score(p_rnn, p_kn, copying, tune_end, len(text)))
    assert scored < 0.5 * bits_per_char(without.score(p_rnn, p_kn, copying, tune_end, len(text)))
    p_cache = cache.char_probabilities(copying, tune_end, len(text), 20)
    mixed = weights.track(p_rnn, p_kn, p_cache)
    assert scored == pytest.approx(bits_per_char(match.char_probabilities(copying, tune_end, len(text), mixed, 4)))
    # The share: the best on the tuning slice of the mixture with the match model over it.
    tuned = [rnn_char_probabilities(untrained, copying, train_end, tune_end, warmup=100)]
    tuned.append(KneserNey.fit(copying[:train_end], TEXT_VOCAB, 3).char_probabilities(copying, train_end, tune_end))
    tuned.append(cache.char_probabilities(copying, train_end, tune_end, 20))

    def tuning_bits(share: float) -> float:
        mixture = fixed_share(np.asarray(tuned), weights.prior(), [share])[0]
        return bits_per_char(match.char_probabilities(copying, train_end, tune_end, mixture, 4))

    assert tuning_bits(weights.share) == min(tuning_bits(share) for share in (1.0, 0.1, 0.01))
    # The weights too: fitted with the copy's layer over the mixture, as it is scored.
    layered = fit_weights(tuned, match.copies(copying, train_end, tune_end, 4))
    assert [weights.rnn, weights.ngram, weights.cache] == pytest.approx(layered)
    assert [weights.rnn, weights.ngram, weights.cache] != pytest.approx(fit_weights(tuned), abs=1e-3)


def test_the_tuning_slice_must_be_real(untrained, text):
    with pytest.raises(ValueError, match="tuning slice"):
        fit_hybrid_weights([untrained], text, (300, 300), order=3, context=100, cache_window=0)


@pytest.mark.parametrize(("start", "end", "window"), [(1, 400, 7), (200, 260, 30), (10, 11, 100), (399, 400, 1)])
def test_the_cache_counts_each_char_among_the_last_window_before_it(text, start, end, window):
    probs = cache.char_probabilities(text, start, end, window)
    expected = [np.mean(text[max(t - window, 0) : t] == text[t]) for t in range(start, end)]
    np.testing.assert_allclose(probs, expected)
    recent = text[max(end - window, 0) : end]
    dist = cache.Recent(text[None, :end], TEXT_VOCAB, window).distribution()[0]
    np.testing.assert_allclose(dist, [np.mean(recent == c) for c in range(TEXT_VOCAB)])
    assert dist.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("prompt", "window"), [(1, 7), (5, 5), (30, 4), (2, 50)])
def test_the_generation_cache_counts_what_the_scored_cache_counts(text, prompt, window):
    """`Recent`, pushed one character at a time for a batch, against the scored cache's formula per row."""
    rows = np.stack([text[:200], text[100:300], text[::-1][:200]])
    recent = cache.Recent(rows[:, :prompt], TEXT_VOCAB, window)
    for n in range(prompt, rows.shape[1]):
        expected = [np.bincount(row[max(n - window, 0) : n], minlength=TEXT_VOCAB) / min(n, window) for row in rows]
        np.testing.assert_allclose(recent.distribution(), expected, atol=1e-12)
        recent.push(rows[:, n])
