"""Dynamic evaluation: each character scored once, before the model learns from it; weights restored."""

from __future__ import annotations

import numpy as np
import pytest

from char_rnn.dynamic import dynamic_char_probabilities, tune_rate
from char_rnn.heldout import rnn_char_probabilities
from char_rnn.ngram import bits_per_char
from char_rnn.params import ModelParams

VOCAB_SIZE = 12


PARAMS = ModelParams(
    cell="gru", units=16, layers=1, dropout=0.2, recurrent_dropout=0.0, input="embedding", embedding_dim=8, ensemble=1
)


@pytest.fixture(scope="module")
def model():
    import keras

    from char_rnn.model import build_model

    keras.utils.set_random_seed(11)
    return build_model(PARAMS, VOCAB_SIZE)


@pytest.fixture(scope="module")
def quoting() -> np.ndarray:
    """Random text, then one random phrase over and over: what an adapting model learns and a static one cannot."""
    rng = np.random.default_rng(5)
    noise, phrase = rng.integers(0, VOCAB_SIZE, 200), rng.integers(0, VOCAB_SIZE, 9)
    return np.concatenate([noise, np.tile(phrase, 30)]).astype(np.int32)


def test_rate_zero_is_static_scoring_in_segments(model, quoting):
    dynamic = dynamic_char_probabilities(model, quoting, 150, 300, rate=0.0, segment=10, context=40)
    static = rnn_char_probabilities(model, quoting, 150, 300, warmup=40, chunk=10)
    np.testing.assert_allclose(dynamic, static, rtol=1e-5)


def test_learning_from_scored_text_lowers_the_bill_of_a_repeated_phrase(model, quoting):
    static = bits_per_char(dynamic_char_probabilities(model, quoting, 200, None, 0.0, segment=9, context=20))
    dynamic = bits_per_char(dynamic_char_probabilities(model, quoting, 200, None, 0.5, segment=9, context=20))
    assert dynamic < 0.8 * static


def test_each_char_is_scored_before_the_model_learns_from_it(model, quoting):
    """Changing the text from t on changes no probability before t: nothing is learnt ahead of scoring."""
    before = dynamic_char_probabilities(model, quoting, 200, None, 0.5, segment=9, context=20)
    changed = quoting.copy()
    changed[300:] = (changed[300:] + 1) % VOCAB_SIZE
    after = dynamic_char_probabilities(model, changed, 200, None, 0.5, segment=9, context=20)
    assert len(before) == len(quoting) - 200
    np.testing.assert_array_equal(before[:100], after[:100])
    assert not np.allclose(before[100:], after[100:])


def test_the_weights_of_a_model_and_of_an_ensemble_are_restored(model, quoting):
    from char_rnn.model import average, build_model

    ensemble = average([build_model(PARAMS, VOCAB_SIZE, f"member_{i}") for i in (1, 2)])
    for scored in (model, ensemble):
        saved = [w.copy() for w in scored.get_weights()]
        dynamic_char_probabilities(scored, quoting, 200, None, 1.0, segment=9, context=20)
        for kept, original in zip(scored.get_weights(), saved, strict=True):
            np.testing.assert_array_equal(kept, original)


def test_the_rate_is_chosen_on_the_tuning_slice_only(model, quoting):
    rate, tried = tune_rate(model, quoting, (200, 290), [0.05, 0.5], segment=9, context=20)
    assert set(tried) == {"0.0", "0.05", "0.5"}
    assert tried[str(rate)] == min(tried.values()) and rate > 0
    other = quoting.copy()
    other[290:] = 0
    assert tune_rate(model, other, (200, 290), [0.05, 0.5], segment=9, context=20) == (rate, tried)


def test_a_rate_that_diverges_loses_instead_of_comparing_as_nan(model, quoting, monkeypatch):
    from char_rnn import dynamic

    real = dynamic.dynamic_char_probabilities

    def diverging_at_one(*args):
        probs = real(*args)
        return np.full_like(probs, np.nan) if args[4] == 1.0 else probs

    monkeypatch.setattr(dynamic, "dynamic_char_probabilities", diverging_at_one)
    rate, tried = tune_rate(model, quoting, (200, 290), [1.0, 0.5], segment=9, context=20)
    assert tried["1.0"] is None and rate == 0.5
    assert dynamic.finite_bits(np.array([0.5, 0.0])) == float("inf")


def test_bad_arguments_are_refused(model, quoting):
    cases = [
        ({"start": 0}, "need 1 <= start"),
        ({"end": len(quoting) + 1}, "need 1 <= start"),
        ({"segment": 0}, "segment"),
        ({"context": 0}, "context"),
        ({"rate": -0.1}, "learning rate"),
    ]
    for bad, message in cases:
        args = {"start": 200, "end": None, "rate": 0.1, "segment": 9, "context": 20} | bad
        with pytest.raises(ValueError, match=message):
            dynamic_char_probabilities(model, quoting, **args)
