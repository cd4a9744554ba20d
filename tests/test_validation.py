"""Real Great Expectations suites: good data passes, each kind of bad data names what failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from char_rnn import stages
from char_rnn.layout import Layout
from char_rnn.params import Params, ValidationParams, with_overrides
from char_rnn.validation import ValidationFailed, require_success
from char_rnn.validation import validate as run_suites
from char_rnn.windows import load_vocab, load_windows
from conftest import SEED, write_windows

CHECKS = ValidationParams(max_control_share=0.01)


def _prepared(tmp_path: Path, text: str = SEED, length: int = 20):
    write_windows(text, tmp_path, length=length)
    spec, train, val = load_windows(tmp_path / "windows")
    return text, load_vocab(tmp_path / "vocab.json"), spec, train, val


def validate(*args) -> dict:
    report = run_suites(*args)
    require_success(report)
    return report


def test_blog_data_passes_and_report_is_written(layout: Layout, repo_params: Params):
    for stage in ("ingest", "window", "validate"):
        stages.stage(stage).run(repo_params, layout)
    saved = json.loads(layout.validation_report.read_text(encoding="utf-8"))
    assert saved["success"]
    row_count = next(
        e for s in saved["suites"] for e in s["expectations"] if e["expectation"] == "expect_table_row_count_to_equal"
    )
    assert row_count["observed"] == 51


def test_a_failed_report_is_written_before_the_stage_fails(layout: Layout, repo_params: Params):
    (layout.root / "noisy.txt").write_text(SEED + "\x07" * 5, encoding="utf-8")
    params = with_overrides(repo_params, {"corpus.source": "noisy.txt"})
    for stage in ("ingest", "window"):
        stages.stage(stage).run(params, layout)
    with pytest.raises(ValidationFailed, match="control_share"):
        stages.validate(params, layout)
    assert not json.loads(layout.validation_report.read_text(encoding="utf-8"))["success"]


def test_ids_out_of_range_fail_naming_the_expectation(tmp_path: Path):
    text, chars, spec, train, val = _prepared(tmp_path)
    train = train.copy()
    train[5] = spec.vocab_size + 3
    with pytest.raises(ValidationFailed) as caught:
        validate(text, chars, spec, train, val, CHECKS)
    message = str(caught.value)
    assert "windows: expect_column_values_to_be_between(column='max_id', max_value=47" in message
    assert "observed [51, 51, 51, 51, 51, 51], 6 unexpected rows" in message
    assert "input_matches_corpus" in message


def test_windows_that_disagree_with_the_spec_fail(tmp_path: Path):
    text, chars, spec, train, val = _prepared(tmp_path)
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_equal.*observed 50"):
        validate(text, chars, spec, train[:-1], val, CHECKS)


def test_control_characters_and_denormalised_text_fail(tmp_path: Path):
    text = SEED + "\x00\x07\x1b" * 2
    _, chars, spec, train, val = _prepared(tmp_path, text)
    with pytest.raises(ValidationFailed) as caught:
        validate(text, chars, spec, train, val, CHECKS)
    assert "corpus: expect_column_values_to_be_between(column='control_share', max_value=0.01)" in str(caught.value)
    decomposed = "\u1112\u1161\u11ab" * 10  # 한 in jamo (NFD): ingest would have composed it
    _, chars, spec, train, val = _prepared(tmp_path, decomposed)
    with pytest.raises(ValidationFailed, match="column='is_nfc'.*observed \\[False\\]"):
        validate(decomposed, chars, spec, train, val, CHECKS)
    assert np.all(train >= 0)
