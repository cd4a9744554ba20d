"""Windows are the blog's, cut from integer ids on the fly; nothing of size windows x length x vocab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from char_rnn.units import Units, load_units
from char_rnn.windows import (
    WindowError,
    count_windows,
    load_split,
    load_windows,
    window_dataset,
    window_views,
)
from conftest import SEED, write_windows


def test_blog_sentence_gives_the_blogs_51_windows(tmp_path: Path):
    spec = write_windows(SEED, tmp_path)
    assert (spec.vocab_size, spec.train_windows, spec.val_windows) == (48, 51, 0)
    units = load_units(tmp_path / "vocab.json")
    _, train, _ = load_windows(tmp_path / "windows")
    inputs, targets = window_views(train, 20, 1)
    decode = units.decode
    # The blog's "data 0": input "알엔엔 으로 자연어 처리하기 어렵지", output shifted by one.
    assert decode(inputs[0]) == SEED[0:20] and decode(targets[0]) == SEED[1:21]
    assert decode(inputs[-1]) == SEED[50:70] and decode(targets[-1]) == SEED[51:71]


def test_vocabulary_is_sorted_and_stable():
    assert Units.closed("다가나가").names == ["가", "나", "다"]
    assert Units.closed(SEED).names == Units.closed("".join(reversed(SEED))).names


def test_splits_are_contiguous_in_the_texts_order_test_last(tmp_path: Path):
    text = "".join(chr(0xAC00 + i % 50) for i in range(1000))
    spec = write_windows(text, tmp_path, length=10, stride=3, val=0.1, tune=0.05, test=0.15)
    _, train, val = load_windows(tmp_path / "windows")
    units = load_units(tmp_path / "vocab.json")
    assert (spec.train_chars, spec.tune_chars, spec.val_chars, spec.test_chars) == (700, 50, 100, 150)
    tune, test = load_split(tmp_path / "windows", "tune"), load_split(tmp_path / "windows", "test")
    assert np.array_equal(np.concatenate([train, tune, val, test]), units.encode(text))
    assert units.decode(test) == text[-150:] and units.decode(val) == text[750:850]
    assert spec.held_out == ("test", "val") and spec.start("test") == 850
    assert spec.train_windows == count_windows(700, 10, 3) == len(range(0, 690, 3))


def test_a_closed_vocabulary_refuses_held_out_characters_the_training_text_lacks(tmp_path: Path):
    text = "가나다라" * 50 + "마바"  # the last two characters only in the test text
    with pytest.raises(WindowError, match=r"the held-out text has 2 characters the training text lacks \('마', '바'\)"):
        write_windows(text, tmp_path, length=5, test=0.05)
    spec = write_windows(text, tmp_path, length=5, test=0.05, units="open")
    assert spec.test_chars == 10 and "마" not in load_units(tmp_path / "vocab.json").index


def test_corpus_shorter_than_a_window_is_refused(tmp_path: Path):
    with pytest.raises(WindowError, match="window.length=20 needs at least 21"):
        write_windows("짧은 글", tmp_path)


def test_validation_tail_shorter_than_a_window_is_refused(tmp_path: Path):
    with pytest.raises(WindowError, match="split.val_fraction=0.05 leaves 4 validation characters"):
        write_windows(SEED, tmp_path, val=0.05)


def test_a_tuning_fraction_that_rounds_to_nothing_is_refused(tmp_path: Path):
    with pytest.raises(WindowError, match="split.tune_fraction=0.005 leaves no tuning character in 71"):
        write_windows(SEED, tmp_path, tune=0.005)


def test_tf_dataset_yields_exactly_the_windows():
    ids = np.arange(200, dtype=np.int32) % 37
    inputs, targets = window_views(ids, 16, 2)
    batches = list(window_dataset(ids, 16, 2, batch_size=8, shuffle_seed=None).as_numpy_iterator())
    assert np.array_equal(np.concatenate([b[0] for b in batches]), inputs)
    assert np.array_equal(np.concatenate([b[1] for b in batches]), targets)


def test_shuffle_is_seeded_and_new_every_epoch():
    ids = np.arange(200, dtype=np.int32) % 37
    inputs, _ = window_views(ids, 16, 2)
    dataset = window_dataset(ids, 16, 2, batch_size=8, shuffle_seed=1)
    epochs = [np.concatenate([b[0] for b in dataset.as_numpy_iterator()]) for _ in range(2)]
    assert not np.array_equal(epochs[0], inputs) and not np.array_equal(epochs[0], epochs[1])
    assert sorted(map(tuple, epochs[1])) == sorted(map(tuple, inputs))
    again = window_dataset(ids, 16, 2, batch_size=8, shuffle_seed=1)
    assert np.array_equal(np.concatenate([b[0] for b in again.as_numpy_iterator()]), epochs[0])
