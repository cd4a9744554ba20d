"""Real Great Expectations suites: good data passes, each kind of bad data names what failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from char_rnn import stages
from char_rnn.layout import Layout
from char_rnn.params import Params, ValidationParams, with_overrides
from char_rnn.units import Units, load_units
from char_rnn.validation import ValidationFailed, require_success
from char_rnn.validation import validate as run_suites
from char_rnn.windows import load_split
from conftest import SEED, write_windows

CHECKS = ValidationParams(max_control_share=0.01)


def _prepared(tmp_path: Path, text: str = SEED, length: int = 20, **split):
    spec = write_windows(text, tmp_path, length=length, **split)
    return text, load_units(tmp_path / "vocab.json"), spec, tmp_path / "windows"


def validate(*args) -> dict:
    report = run_suites(*args)
    require_success(report)
    return report


def expectation(report: dict, suite: str, kind: str, column: str | None = None) -> dict:
    return next(
        e
        for s in report["suites"]
        if s["suite"] == suite
        for e in s["expectations"]
        if e["expectation"] == kind and e["kwargs"].get("column") == column
    )


def test_blog_data_passes_and_report_is_written(layout: Layout, repo_params: Params):
    for stage in ("ingest", "window", "validate"):
        stages.stage(stage).run(repo_params, layout)
    saved = json.loads(layout.validation_report.read_text(encoding="utf-8"))
    assert saved["success"]
    assert expectation(saved, "windows", "expect_table_row_count_to_equal")["observed"] == 51
    assert expectation(saved, "splits", "expect_table_row_count_to_equal")["observed"] == 4


def test_a_failed_report_is_written_before_the_stage_fails(layout: Layout, repo_params: Params):
    (layout.root / "noisy.txt").write_text(SEED + "\x07" * 5, encoding="utf-8")
    params = with_overrides(repo_params, {"corpus.source": "noisy.txt"})
    for stage in ("ingest", "window"):
        stages.stage(stage).run(params, layout)
    with pytest.raises(ValidationFailed, match="control_share"):
        stages.validate(params, layout)
    assert not json.loads(layout.validation_report.read_text(encoding="utf-8"))["success"]


@pytest.mark.parametrize("split", ["train", "tune", "val", "test"])
def test_ids_out_of_range_in_any_split_fail_naming_the_expectation(tmp_path: Path, split: str):
    text = SEED * 4
    text, units, spec, windows = _prepared(tmp_path, text, val=0.25, tune=0.1, test=0.1)
    ids = load_split(windows, split)
    ids[1] = spec.vocab_size + 3
    np.save(windows / f"{split}.npy", ids)
    with pytest.raises(ValidationFailed) as caught:
        validate(text, units, spec, windows, CHECKS)
    message = str(caught.value)
    assert f"splits: expect_column_values_to_be_between(column='max_id', max_value={spec.vocab_size - 1}" in message
    assert f"observed [{spec.vocab_size + 3}], 1 unexpected rows" in message
    assert "ids_match_corpus" in message


def test_a_split_that_is_not_the_corpus_text_fails(tmp_path: Path):
    text, units, spec, windows = _prepared(tmp_path, SEED * 4, val=0.25, tune=0.1, test=0.1)
    tune = load_split(windows, "tune")
    np.save(windows / "tune.npy", tune[::-1].copy())  # the right ids, in the wrong order
    with pytest.raises(ValidationFailed, match="column='ids_match_corpus'.*1 unexpected rows"):
        validate(text, units, spec, windows, CHECKS)


def test_units_that_know_held_out_characters_fail(tmp_path: Path):
    """Units rebuilt from the whole text, as a leak would build them, are not the training text's."""
    text = SEED * 4 + "쀍뷁 " * 10
    text, _, spec, windows = _prepared(tmp_path, text, test=0.1, units="open")
    leaked = Units.open(text, 2)  # 쀍 and 뷁 occur only in the test text
    assert "쀍" in leaked.index
    with pytest.raises(ValidationFailed, match="column='units_from_training_text'"):
        validate(text, leaked, spec, windows, CHECKS)


def test_windows_that_disagree_with_the_spec_fail(tmp_path: Path):
    text, units, spec, windows = _prepared(tmp_path)
    train = load_split(windows, "train")
    np.save(windows / "train.npy", train[:-1])
    with pytest.raises(ValidationFailed) as caught:
        validate(text, units, spec, windows, CHECKS)
    assert "windows: expect_table_row_count_to_equal(value=51) failed; observed 50" in str(caught.value)
    assert "column_A='units', column_B='declared_units'" in str(caught.value)


def test_control_characters_and_denormalised_text_fail(tmp_path: Path):
    text = SEED + "\x00\x07\x1b" * 2
    _, units, spec, windows = _prepared(tmp_path, text)
    with pytest.raises(ValidationFailed) as caught:
        validate(text, units, spec, windows, CHECKS)
    assert "corpus: expect_column_values_to_be_between(column='control_share', max_value=0.01)" in str(caught.value)
    decomposed = "\u1112\u1161\u11ab" * 10  # 한 in jamo (NFD): ingest would have composed it
    _, units, spec, windows = _prepared(tmp_path, decomposed)
    with pytest.raises(ValidationFailed) as caught:
        validate(decomposed, units, spec, windows, CHECKS)
    assert len(caught.value.args[0].splitlines()) == 2  # the NFC expectation and nothing else
    assert "column='is_nfc'" in str(caught.value) and "observed [False]" in str(caught.value)
