"""Honest held-out scoring: every character once, from the text before it, and always the same characters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from char_rnn.heldout import Span, average_rnns, rnn_char_probabilities, scored_span
from char_rnn.ngram import bits_per_char, perplexity
from conftest import TEXT_VOCAB, write_windows


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
    """Figure i is the model's probability of character start + i, predicted from what the module says it
    reads: the text from `warmup` characters before the first character of its chunk."""
    probs = rnn_char_probabilities(untrained, text, start, end, warmup=warmup, chunk=chunk)
    firsts = [start + (t - start) // chunk * chunk for t in range(start, end)]  # each character's chunk
    contexts = [text[max(first - warmup, 0) : t] for first, t in zip(firsts, range(start, end), strict=True)]
    # One row per character, padded on the right, which a recurrent model cannot read back from.
    width = max(len(context) for context in contexts)
    rows = np.stack([np.pad(context, (0, width - len(context))) for context in contexts])
    out = np.asarray(untrained.predict_on_batch(rows))
    expected = out[np.arange(len(rows)), [len(context) - 1 for context in contexts], text[start:end]]
    np.testing.assert_allclose(probs, expected, rtol=1e-5)


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
    assert bits_per_char(probs) == pytest.approx(math.log2(TEXT_VOCAB), rel=0.10)
    assert perplexity(probs) == pytest.approx(2 ** bits_per_char(probs))


@pytest.fixture(scope="module")
def others():
    """Two more untrained models over the same vocabulary: other weights, so other probabilities."""
    from char_rnn.model import build_model
    from char_rnn.params import ModelParams

    params = ModelParams(cell="lstm", units=16, layers=1, dropout=0.0, recurrent_dropout=0.0, input="embedding",
                         embedding_dim=8, ensemble=1)  # fmt: skip
    return [build_model(params, TEXT_VOCAB, seed=seed) for seed in (11, 12)]


def test_several_rnns_are_averaged(untrained, others, text):
    """The mean of three models' probabilities of each true character: not the first's, the largest, the
    smallest or the middle one."""
    each = np.stack([rnn_char_probabilities(model, text, 300) for model in [untrained, *others]])
    assert not any(np.allclose(one, each.mean(axis=0), rtol=1e-3) for one in each)  # the premise: they differ
    np.testing.assert_allclose(average_rnns([untrained, *others], text, 300), each.mean(axis=0), rtol=1e-6)


def test_every_model_is_scored_on_the_test_tail_then_validation_or_without_either_on_the_text_before_it(tmp_path):
    text = "가나다라마바사아자차카타파하" * 10
    spec = write_windows(text, tmp_path / "a", val=0.2, tune=0.1, test=0.1)
    assert scored_span(spec) == Span(126, 140, 14, "test") == scored_span(spec, "test")
    assert scored_span(spec, "val") == Span(98, 126, 28, "val")
    assert scored_span(write_windows(text, tmp_path / "b", val=0.2)) == Span(112, 140, 28, "val")
    assert scored_span(write_windows(text, tmp_path / "c")) == Span(1, 140, 139, "train")
    once = "".join(chr(0xAC01 + 28 * i) + " " for i in range(40))  # 각, 낙, ...: each once, spelled in 3 jamo
    spelled = write_windows(once, tmp_path / "d", length=5, test=0.1, units="open")
    assert scored_span(spelled) == Span(36 * 4, 40 * 4, 8, "test")  # a syllable and a space: 4 units
