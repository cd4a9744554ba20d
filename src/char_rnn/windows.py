"""Units, integer ids, contiguous splits and sliding windows.

Windows are never materialised, one-hot or otherwise: the stage stores each split as one int32 id
array, and a window is a slice of it (input `ids[s:s+L]`, target `ids[s+1:s+L+1]`). Memory therefore
grows with the corpus, not with windows x length x vocabulary as the blog's `to_categorical` does.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from char_rnn.errors import PipelineError
from char_rnn.layout import replace_folder, write_atomically
from char_rnn.params import SplitParams, UnitKind, VocabParams, WindowParams
from char_rnn.units import Units, UnitsError

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "tune", "val", "test")  # in the text's order: the test text is the newest


class WindowError(PipelineError):
    """The corpus cannot be cut into windows with these params."""


@dataclass(frozen=True)
class WindowSpec:
    """What the window stage promises; the validate stage checks the id files against it.

    `*_chars` count characters of the text, `*_units` the ids that spell them (the same numbers
    with closed units).
    """

    length: int
    stride: int
    units: str
    vocab_size: int
    train_chars: int
    tune_chars: int
    val_chars: int
    test_chars: int
    train_units: int
    tune_units: int
    val_units: int
    test_units: int
    first_units: int  # units of the text's first character, which nothing before it predicts
    train_windows: int
    val_windows: int

    def start(self, split: str) -> int:
        """Where a split's ids start in the whole text's ids."""
        return sum(getattr(self, f"{name}_units") for name in SPLITS[: SPLITS.index(split)])

    @property
    def val_start(self) -> int:
        """Where the validation text starts: everything before it may be trained on (the refit, the n-gram)."""
        return self.start("val")

    @property
    def held_out(self) -> tuple[str, ...]:
        """The held-out splits that are scored, the reported one first: test, then validation."""
        return tuple(split for split in ("test", "val") if getattr(self, f"{split}_chars"))


def build_units(training: str, vocab: VocabParams) -> Units:
    """From the training text alone: held-out text never adds a unit."""
    if vocab.units is UnitKind.closed:
        return Units.closed(training)
    return Units.open(training, vocab.min_count)


def save_vocab(units: Units, path: Path) -> None:
    write_atomically(path, units.to_json())


def count_windows(n_ids: int, length: int, stride: int) -> int:
    """Windows need length + 1 characters (the target is shifted by one), as in the blog's loop."""
    return max(0, -(-(n_ids - length) // stride))


def window_starts(n_ids: int, length: int, stride: int) -> np.ndarray:
    return np.arange(0, max(0, n_ids - length), stride, dtype=np.int64)


def split_sizes(n_chars: int, split: SplitParams, length: int) -> tuple[int, int, int, int]:
    """Characters in (train, tune, val, test), or `WindowError` when a split is too short for its use.

    Needs only the corpus's length, so the check stage refuses a bad split before any stage runs.
    """
    n_test = round(n_chars * split.test_fraction)
    n_val = round(n_chars * split.val_fraction)
    n_tune = round(n_chars * split.tune_fraction)
    n_train = n_chars - n_test - n_val - n_tune
    for name, fraction, n in (("tune", split.tune_fraction, n_tune), ("test", split.test_fraction, n_test)):
        if fraction and not n:
            what = "tuning" if name == "tune" else "test"
            raise WindowError(
                f"split.{name}_fraction={fraction} leaves no {what} character in {n_chars}; raise it or use 0"
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
    return n_train, n_tune, n_val, n_test


def spellable(text: str, n_train: int, vocab: VocabParams) -> None:
    """Refuse held-out text that the units built from the training text cannot spell (closed units only)."""
    if vocab.units is UnitKind.open:
        return
    missing = sorted(set(text[n_train:]) - set(text[:n_train]))
    if missing:
        shown = ", ".join(repr(c) for c in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise WindowError(
            f"the held-out text has {len(missing)} characters the training text lacks ({shown}): closed units"
            " cannot score them; use vocab.units: open (any text), or no held-out split"
        )


@dataclass(frozen=True)
class Windows:
    """What the window stage writes: the units, the four splits' ids and the spec they satisfy."""

    units: Units
    train: np.ndarray
    tune: np.ndarray
    val: np.ndarray
    test: np.ndarray
    spec: WindowSpec


def cut_windows(text: str, window: WindowParams, split: SplitParams, vocab: VocabParams) -> Windows:
    """The units (from the training text), the contiguous splits as ids and their spec."""
    sizes = split_sizes(len(text), split, window.length)
    spellable(text, sizes[0], vocab)
    units = build_units(text[: sizes[0]], vocab)
    try:
        ids, offsets = units.encode_with_offsets(text)
    except UnitsError as exc:  # unreachable after `spellable`; kept as one line rather than a traceback
        raise WindowError(str(exc)) from None
    bounds = np.cumsum([0, *sizes])
    parts = [ids[offsets[a] : offsets[b]] for a, b in itertools.pairwise(bounds)]
    spec = WindowSpec(
        length=window.length,
        stride=window.stride,
        units=units.kind,
        vocab_size=units.size,
        **{f"{name}_chars": n for name, n in zip(SPLITS, sizes)},
        **{f"{name}_units": len(part) for name, part in zip(SPLITS, parts)},
        first_units=int(offsets[1]),
        train_windows=count_windows(len(parts[0]), window.length, window.stride),
        val_windows=count_windows(len(parts[2]), window.length, window.stride),
    )
    return Windows(units, *parts, spec)


def save_windows(windows: Windows, vocab_path: Path, out_dir: Path) -> None:
    """One .npy file per split and spec.json in `out_dir`; the units as JSON at `vocab_path`."""

    def write(folder: Path) -> None:
        for name in SPLITS:
            np.save(folder / f"{name}.npy", getattr(windows, name))
        (folder / "spec.json").write_text(json.dumps(asdict(windows.spec), indent=1) + "\n", encoding="utf-8")

    replace_folder(out_dir, write)
    save_vocab(windows.units, vocab_path)


def load_spec(out_dir: Path) -> WindowSpec:
    return WindowSpec(**json.loads((out_dir / "spec.json").read_text(encoding="utf-8")))


def load_windows(out_dir: Path) -> tuple[WindowSpec, np.ndarray, np.ndarray]:
    """The spec with the ids training sees: its own split and the validation split (early stopping)."""
    return load_spec(out_dir), np.load(out_dir / "train.npy"), np.load(out_dir / "val.npy")


def load_split(out_dir: Path, split: str) -> np.ndarray:
    return np.load(out_dir / f"{split}.npy")


def load_text_ids(out_dir: Path) -> np.ndarray:
    """The whole corpus as ids (train, tune, val, test in order): held-out scoring reads context across splits."""
    return np.concatenate([load_split(out_dir, name) for name in SPLITS])


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
