"""Dynamic evaluation: each character scored once, before the model learns from it; weights restored."""

from __future__ import annotations

import numpy as np
import pytest

from char_rnn.dynamic import dynamic_char_probabilities, tune_rate
from char_rnn.heldout import rnn_char_probabilities
from char_rnn.ngram import bits_per_char
from char_rnn.params import ModelParams

VOCAB_SIZE = 12


@pytest.fixture(scope="module")
def model():
    import keras

    from char_rnn.model import build_model

    keras.utils.set_random_seed(11)
    params = ModelParams(cell="gru", units=16, layers=1, dropout=0.2, recurrent_dropout=0.0, input="embedding",
                         embedding_dim=8, ensemble=1)
    return build_model(params, VOCAB_SIZE)


@pytest.fixture(scope="module")
def quoting() -> np.ndarray:
    """Random text, then one random phrase over and over: what an adapting model learns and a static one cannot."""
    rng = np.random.default_rng(5)
    return np.concatenate([rng.integers(0, VOCAB_SIZE, 200), np.tile(rng.integers(0, VOCAB_SIZE, 9), 30)]).astype(np.int32)


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


def test_the_models_weights_are_restored(model, quoting):
    saved = [w.copy() for w in model.get_weights()]
    dynamic_char_probabilities(model, quoting, 200, None, 1.0, segment=9, context=20)
    for kept, original in zip(model.get_weights(), saved):
        np.testing.assert_array_equal(kept, original)


def test_the_rate_is_chosen_on_the_tuning_slice_only(model, quoting):
    rate, tried = tune_rate(model, quoting, (200, 290), [0.05, 0.5, 50.0], segment=9, context=20)
    assert set(tried) == {"0.0", "0.05", "0.5", "50.0"}
    assert tried["50.0"] is None, "a rate that diverges must lose, not compare as NaN"
    assert tried[str(rate)] == min(v for v in tried.values() if v is not None) and rate > 0
    other = quoting.copy()
    other[290:] = 0
    assert tune_rate(model, other, (200, 290), [0.05, 0.5, 50.0], segment=9, context=20) == (rate, tried)


def test_bad_arguments_are_refused(model, quoting):
    for bad in ({"start": 0}, {"segment": 0}, {"rate": -0.1}, {"end": len(quoting) + 1}):
        args = {"start": 200, "end": None, "rate": 0.1, "segment": 9, "context": 20} | bad
        with pytest.raises(ValueError, match="need 1 <= start"):
            dynamic_char_probabilities(model, quoting, **args)
