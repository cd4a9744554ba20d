"""Real Great Expectations suites: good data passes, each kind of bad data names what failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_corpus import SEED

from char_rnn.params import SplitParams, ValidationParams, WindowParams
from char_rnn.validation import ValidationFailed, validate
from char_rnn.windows import load_vocab, load_windows, make_windows

CHECKS = ValidationParams(max_control_share=0.01)


def _prepared(tmp_path: Path, text: str = SEED, length: int = 20):
    make_windows(
        text,
        WindowParams(length=length, stride=1),
        SplitParams(val_fraction=0.0, tune_fraction=0.0),
        tmp_path / "vocab.json",
        tmp_path / "windows",
    )
    spec, train, val = load_windows(tmp_path / "windows")
    return text, load_vocab(tmp_path / "vocab.json"), spec, train, val


def test_blog_data_passes_and_report_is_written(tmp_path: Path):
    report = validate(*_prepared(tmp_path), CHECKS, tmp_path / "validation.json")
    assert report["success"]
    saved = json.loads((tmp_path / "validation.json").read_text(encoding="utf-8"))
    row_count = next(
        e for s in saved["suites"] for e in s["expectations"] if e["expectation"] == "expect_table_row_count_to_equal"
    )
    assert row_count["observed"] == 51


def test_ids_out_of_range_fail_naming_the_expectation(tmp_path: Path):
    text, chars, spec, train, val = _prepared(tmp_path)
    train = train.copy()
    train[5] = spec.vocab_size + 3
    with pytest.raises(ValidationFailed) as caught:
        validate(text, chars, spec, train, val, CHECKS, tmp_path / "validation.json")
    message = str(caught.value)
    assert "windows: expect_column_values_to_be_between(column='max_id', max_value=47" in message
    assert "observed [51, 51, 51, 51, 51, 51], 6 unexpected rows" in message
    assert "input_matches_corpus" in message
    assert not json.loads((tmp_path / "validation.json").read_text(encoding="utf-8"))["success"]


def test_windows_that_disagree_with_the_spec_fail(tmp_path: Path):
    text, chars, spec, train, val = _prepared(tmp_path)
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_equal.*observed 50"):
        validate(text, chars, spec, train[:-1], val, CHECKS, tmp_path / "validation.json")


def test_control_characters_and_denormalised_text_fail(tmp_path: Path):
    text = SEED + "\x00\x07\x1b" * 2
    _, chars, spec, train, val = _prepared(tmp_path, text)
    with pytest.raises(ValidationFailed) as caught:
        validate(text, chars, spec, train, val, CHECKS, tmp_path / "validation.json")
    assert "corpus: expect_column_values_to_be_between(column='control_share', max_value=0.01)" in str(caught.value)
    decomposed = "\u1112\u1161\u11ab" * 10  # 한 in jamo (NFD): ingest would have composed it
    _, chars, spec, train, val = _prepared(tmp_path, decomposed)
    with pytest.raises(ValidationFailed, match="column='is_nfc'.*observed \\[False\\]"):
        validate(decomposed, chars, spec, train, val, CHECKS, tmp_path / "validation.json")
    assert np.all(train >= 0)
