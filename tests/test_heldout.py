"""Honest held-out scoring: every character once, with its context; the hybrid's weights never see the scored text."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from char_rnn import cache
from char_rnn.heldout import (
    HybridError,
    Weights,
    average_rnns,
    fit_hybrid_weights,
    fit_weights,
    read_weights,
    rnn_char_probabilities,
)
from char_rnn.ngram import KneserNey, bits_per_char, perplexity
from char_rnn.params import ModelParams

VOCAB_SIZE = 40


@pytest.fixture(scope="module")
def untrained():
    """A freshly initialised model: its predictions are close to uniform, but not exactly."""
    import keras

    from char_rnn.model import build_model

    keras.utils.set_random_seed(7)
    params = ModelParams(
        cell="gru", units=16, layers=1, dropout=0.0, recurrent_dropout=0.0, input="one_hot", embedding_dim=8, ensemble=1
    )
    return build_model(params, VOCAB_SIZE)


@pytest.fixture(scope="module")
def text() -> np.ndarray:
    """Random text with some repetition, so that the n-gram and the RNN disagree in interesting ways."""
    rng = np.random.default_rng(3)
    words = [rng.integers(0, VOCAB_SIZE, size=rng.integers(2, 6)) for _ in range(12)]
    return np.concatenate([words[i] for i in rng.integers(0, 12, size=120)]).astype(np.int32)[:400]


def test_with_enough_warmup_chunks_equal_one_pass_over_the_whole_text(untrained, text):
    start = 250
    one_pass = np.asarray(untrained.predict_on_batch(text[None, :-1]))[0]
    expected = one_pass[np.arange(start - 1, len(text) - 1), text[start:]]
    chunked = rnn_char_probabilities(untrained, text, start, warmup=len(text), chunk=60)
    assert len(chunked) == len(text) - start
    np.testing.assert_allclose(chunked, expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("start", "end", "warmup", "chunk"), [(1, 400, 30, 64), (300, 333, 500, 500), (399, 400, 5, 1)]
)
def test_every_char_of_the_slice_is_scored_exactly_once(untrained, text, start, end, warmup, chunk):
    probs = rnn_char_probabilities(untrained, text, start, end, warmup=warmup, chunk=chunk)
    assert len(probs) == end - start
    assert np.all((probs > 0) & (probs < 1))


def test_short_warmup_scores_from_the_last_warmup_chars_only(untrained, text):
    """With warmup w and chunk 1, character t is predicted from exactly text[t - w : t]."""
    start, warmup = 380, 12
    probs = rnn_char_probabilities(untrained, text, start, warmup=warmup, chunk=1)
    windows = np.stack([text[t - warmup : t] for t in range(start, len(text))])
    last = np.asarray(untrained.predict_on_batch(windows))[:, -1, :]
    np.testing.assert_allclose(probs, last[np.arange(len(windows)), text[start:]], rtol=1e-5)


def test_the_first_char_of_a_text_cannot_be_scored(untrained, text):
    with pytest.raises(ValueError, match="start"):
        rnn_char_probabilities(untrained, text, 0)


def test_an_untrained_model_scores_about_log2_of_the_vocabulary(untrained, text):
    probs = rnn_char_probabilities(untrained, text, 200)
    assert len(probs) == 200
    assert bits_per_char(probs) == pytest.approx(math.log2(VOCAB_SIZE), rel=0.10)
    assert perplexity(probs) == pytest.approx(2 ** bits_per_char(probs))


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


def test_weights_cannot_score_a_character_no_part_allows():
    with pytest.raises(ValueError, match="probability 0 under every part"):
        fit_weights([np.array([0.5, 0.0]), np.array([0.5, 0.0])])


def test_hybrid_json_is_read_in_both_formats_and_bad_weights_are_refused(tmp_path):
    path = tmp_path / "hybrid.json"
    path.write_text(json.dumps({"weights": {"rnn": 0.3, "ngram": 0.6, "cache": 0.1, "cache_window": 100}}))
    assert read_weights(path) == Weights(0.3, 0.6, 0.1, cache_window=100)
    path.write_text(json.dumps({"weights": None, "tune_chars": 0}))
    assert read_weights(path) is None
    path.write_text(json.dumps({"lambda": 0.25, "tune_chars": 50}))  # written before the cache existed
    assert read_weights(path) == Weights(0.25, 0.75)
    for bad in ({"rnn": 0.9, "ngram": 0.9}, {"rnn": 1.0}, {"rnn": 0.5, "ngram": 0.5, "typo": 0.0}):
        path.write_text(json.dumps({"weights": bad}))
        with pytest.raises(HybridError, match="unusable hybrid weights"):
            read_weights(path)


def test_hybrid_weights_are_fitted_without_the_scored_text(untrained, text):
    train_end, tune_end = 300, 350
    # Noise in the tuning slice, which the n-gram finds surprising, makes the best weights inner ones.
    noisy = text.copy()
    noisy[train_end:tune_end:3] = np.random.default_rng(2).integers(0, VOCAB_SIZE, size=17)
    weights = fit_hybrid_weights([untrained], noisy, (train_end, tune_end), order=3, context=100, cache_window=0)
    other = noisy.copy()
    other[tune_end:] = np.random.default_rng(1).integers(0, VOCAB_SIZE, size=len(text) - tune_end)
    assert 0.0 < weights.rnn < 1.0 and weights.cache == 0.0
    again = fit_hybrid_weights([untrained], other, (train_end, tune_end), order=3, context=100, cache_window=0)
    assert again == weights
    # The n-gram it weighs against has counted the training text only, not the tuning slice.
    p_rnn = rnn_char_probabilities(untrained, noisy, train_end, tune_end, warmup=100)
    unseen = KneserNey.fit(noisy[:train_end], VOCAB_SIZE, 3).char_probabilities(noisy, train_end, tune_end)
    seen = KneserNey.fit(noisy[:tune_end], VOCAB_SIZE, 3).char_probabilities(noisy, train_end, tune_end)
    assert weights.rnn == fit_weights([p_rnn, unseen])[0] != fit_weights([p_rnn, seen])[0]


def test_a_cache_gets_weight_where_the_text_quotes_itself(untrained, text):
    """Text that repeats its recent characters: the cache earns a share, fitted on the tuning slice only."""
    train_end, tune_end = 300, 360
    quoting = text.copy()
    quoting[train_end:] = np.tile(np.random.default_rng(4).integers(0, VOCAB_SIZE, size=10), 10)
    weights = fit_hybrid_weights([untrained], quoting, (train_end, tune_end), order=3, context=100, cache_window=20)
    assert weights.cache > 0.1 and weights.cache_window == 20
    other = quoting.copy()
    other[tune_end:] = 0
    again = fit_hybrid_weights([untrained], other, (train_end, tune_end), order=3, context=100, cache_window=20)
    assert again == weights


def test_the_tuning_slice_must_be_real(untrained, text):
    with pytest.raises(ValueError, match="tuning slice"):
        fit_hybrid_weights([untrained], text, (300, 300), order=3, context=100, cache_window=0)


def test_several_rnns_are_averaged(untrained, text):
    single = rnn_char_probabilities(untrained, text, 390)
    np.testing.assert_allclose(average_rnns([untrained, untrained], text, 390), single)


@pytest.mark.parametrize(("start", "end", "window"), [(1, 400, 7), (200, 260, 30), (10, 11, 100), (399, 400, 1)])
def test_the_cache_counts_each_char_among_the_last_window_before_it(text, start, end, window):
    probs = cache.char_probabilities(text, start, end, window)
    expected = [np.mean(text[max(t - window, 0) : t] == text[t]) for t in range(start, end)]
    np.testing.assert_allclose(probs, expected)
    dist = cache.distribution(text[:end], VOCAB_SIZE, window)
    recent = text[max(end - window, 0) : end]
    np.testing.assert_allclose(dist, [np.mean(recent == c) for c in range(VOCAB_SIZE)])
    assert dist.sum() == pytest.approx(1.0)
