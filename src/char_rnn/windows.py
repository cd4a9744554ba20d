"""Vocabulary, integer ids, contiguous split and sliding windows.

Windows are never materialised, one-hot or otherwise: the stage stores each split as one int32 id
array, and a window is a slice of it (input `ids[s:s+L]`, target `ids[s+1:s+L+1]`). Memory therefore
grows with the corpus, not with windows x length x vocabulary as the blog's `to_categorical` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from char_rnn import progress
from char_rnn.errors import PipelineError
from char_rnn.layout import replace_folder, write_atomically
from char_rnn.params import SplitParams, WindowParams

if TYPE_CHECKING:
    import tensorflow as tf

VOCAB_FORMAT = 1


class WindowError(PipelineError):
    """The corpus cannot be cut into windows with these params."""


@dataclass(frozen=True)
class WindowSpec:
    """What the window stage promises; the validate stage checks the id files against it."""

    length: int
    stride: int
    vocab_size: int
    train_chars: int
    tune_chars: int
    val_chars: int
    train_windows: int
    val_windows: int

    @property
    def val_start(self) -> int:
        """Where the validation tail starts in the whole text: everything before it may be trained on."""
        return self.train_chars + self.tune_chars


def build_vocab(text: str) -> list[str]:
    """Sorted by code point: the same text always gives the same ids (the blog's `set()` order did not)."""
    return sorted(set(text))


def save_vocab(chars: list[str], path: Path) -> None:
    payload = {"format": VOCAB_FORMAT, "size": len(chars), "chars": chars}
    write_atomically(path, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")


def load_vocab(path: Path) -> list[str]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    if payload.get("format") != VOCAB_FORMAT or len(payload["chars"]) != payload["size"]:
        raise WindowError(f"{path}: not a vocabulary of format {VOCAB_FORMAT}")
    return payload["chars"]


ENCODE_CHUNK = 5_000_000  # characters encoded between two progress lines on a large corpus


def encode(text: str, chars: list[str]) -> np.ndarray:
    """The text as vocabulary ids; a corpus of tens of millions of characters reports its progress."""
    index = {c: i for i, c in enumerate(chars)}
    if len(text) <= ENCODE_CHUNK:
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))
    ids = np.empty(len(text), dtype=np.int32)
    for start in range(0, len(text), ENCODE_CHUNK):
        part = text[start : start + ENCODE_CHUNK]
        ids[start : start + len(part)] = np.fromiter((index[c] for c in part), dtype=np.int32, count=len(part))
        progress.log.info("window: encoded %s of %s characters", f"{start + len(part):,}", f"{len(text):,}")
    return ids


def count_windows(n_ids: int, length: int, stride: int) -> int:
    """Windows need length + 1 characters (the target is shifted by one), as in the blog's loop."""
    return max(0, -(-(n_ids - length) // stride))


def window_starts(n_ids: int, length: int, stride: int) -> np.ndarray:
    return np.arange(0, max(0, n_ids - length), stride, dtype=np.int64)


def split_sizes(n_chars: int, split: SplitParams, length: int) -> tuple[int, int, int]:
    """Characters in (train, tune, val), or `WindowError` when a split is too short for a window.

    Needs only the corpus's length, so the check stage refuses a bad split before any stage runs.
    """
    n_val = round(n_chars * split.val_fraction)
    n_tune = round(n_chars * split.tune_fraction)
    n_train = n_chars - n_val - n_tune
    if split.tune_fraction and not n_tune:
        raise WindowError(
            f"split.tune_fraction={split.tune_fraction} leaves no tuning character in {n_chars}; raise it or use 0"
        )
    if count_windows(n_train, length, 1) == 0:
        raise WindowError(
            f"the training text has {n_train} characters; window.length={length} needs at least"
            f" {length + 1} (shorten window.length or use a longer corpus)"
        )
    if n_val and count_windows(n_val, length, 1) == 0:
        raise WindowError(
            f"split.val_fraction={split.val_fraction} leaves {n_val} validation characters;"
            f" window.length={length} needs at least {length + 1}"
        )
    return n_train, n_tune, n_val


def split_ids(ids: np.ndarray, split: SplitParams, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous (train, tune, val): validation is the tail, the tuning slice sits just before it.

    Nothing is interleaved, so no validation character has been seen in training, even in a window.
    """
    n_train, n_tune, _ = split_sizes(len(ids), split, length)
    return ids[:n_train], ids[n_train : n_train + n_tune], ids[n_train + n_tune :]


@dataclass(frozen=True)
class Windows:
    """What the window stage writes: the vocabulary, the three splits' ids and the spec they satisfy."""

    chars: list[str]
    train: np.ndarray
    tune: np.ndarray
    val: np.ndarray
    spec: WindowSpec


def cut_windows(text: str, window: WindowParams, split: SplitParams) -> Windows:
    """The vocabulary, the contiguous splits as ids and their spec; refused when a split is too short."""
    chars = build_vocab(text)
    train, tune, val = split_ids(encode(text, chars), split, window.length)
    spec = WindowSpec(
        length=window.length,
        stride=window.stride,
        vocab_size=len(chars),
        train_chars=len(train),
        tune_chars=len(tune),
        val_chars=len(val),
        train_windows=count_windows(len(train), window.length, window.stride),
        val_windows=count_windows(len(val), window.length, window.stride),
    )
    return Windows(chars, train, tune, val, spec)


def save_windows(windows: Windows, vocab_path: Path, out_dir: Path) -> None:
    """One .npy file per split and spec.json in `out_dir`; the vocabulary as JSON at `vocab_path`."""

    def write(folder: Path) -> None:
        for name in ("train", "tune", "val"):
            np.save(folder / f"{name}.npy", getattr(windows, name))
        (folder / "spec.json").write_text(json.dumps(asdict(windows.spec), indent=1) + "\n", encoding="utf-8")

    replace_folder(out_dir, write)
    save_vocab(windows.chars, vocab_path)


def load_spec(out_dir: Path) -> WindowSpec:
    return WindowSpec(**json.loads((out_dir / "spec.json").read_text(encoding="utf-8")))


def load_windows(out_dir: Path) -> tuple[WindowSpec, np.ndarray, np.ndarray]:
    """The spec with the ids training sees: its own split and the validation split."""
    return load_spec(out_dir), np.load(out_dir / "train.npy"), np.load(out_dir / "val.npy")


def load_text_ids(out_dir: Path) -> np.ndarray:
    """The whole corpus as ids (train, tune, val in order): held-out scoring reads context across splits."""
    return np.concatenate([np.load(out_dir / f"{name}.npy") for name in ("train", "tune", "val")])


def window_views(ids: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) as strided views of `ids`: no copy, used by validation and evaluation."""
    if count_windows(len(ids), length, stride) == 0:
        empty = np.empty((0, length), dtype=ids.dtype)
        return empty, empty
    rows = np.lib.stride_tricks.sliding_window_view(ids, length + 1)[::stride]
    return rows[:, :-1], rows[:, 1:]


def window_dataset(
    ids: np.ndarray, length: int, stride: int, batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches of (inputs, targets), cut from the id array on the fly by `tf.gather`.

    Only the start offsets are shuffled (seeded, reshuffled every epoch like Keras' `fit`), and as
    one permutation op per epoch: `Dataset.shuffle` would hold one small tensor per window in its
    buffer, so memory would grow with the number of windows.
    """
    import tensorflow as tf

    source = tf.constant(ids, dtype=tf.int32)
    starts = tf.constant(window_starts(len(ids), length, stride))
    if shuffle_seed is None:
        dataset = tf.data.Dataset.from_tensor_slices(starts)
    else:
        epoch_seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).take(1)
        dataset = epoch_seeds.map(
            lambda r: tf.random.experimental.stateless_shuffle(starts, seed=tf.stack([r, tf.constant(0, tf.int64)]))
        ).flat_map(tf.data.Dataset.from_tensor_slices)
    offsets = tf.range(length + 1, dtype=tf.int64)

    def cut(batch_starts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        rows = tf.gather(source, batch_starts[:, None] + offsets[None, :])
        return rows[:, :-1], rows[:, 1:]

    return dataset.batch(batch_size).map(cut).prefetch(tf.data.AUTOTUNE)
