"""Resume after a kill: training's whole state at each epoch's end, so that a rerun goes on from there.

A night's training killed at epoch 40 of 80 (the worker's machine went away, someone pressed
Ctrl-C twice, the OOM killer) costs the epochs since the last epoch's end, not all 40. What makes the
rerun's final weights equal an uninterrupted run's is saved whole: every variable of the model
(weights and dropout's seed states), the optimizer's (Adam's moments and step count, which the
learning rate schedule reads), early stopping's best weights and patience, and the history so far.
The data order of epoch e is the e-th reshuffle of the seeded dataset (`training.fit` skips the
epochs already seen), so the resumed epochs see the batches they would have seen.

A stage's checkpoints live in their own folder (`Layout.checkpoints`), outside every DVC output: DVC
deletes a stage's outputs before running it, never this folder. They are kept only for the same
training: a fingerprint of the params and data that shape it is checked first, and any other
checkpoint is discarded. Each file is written whole (`write_atomically`): a kill while saving leaves
the previous epoch's state. The stage clears its folder once its outputs are written.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn.layout import write_atomically

History = dict[str, list[float]]
META = "checkpoint.json"


def fingerprint(*parts: Any) -> str:
    """What a training depends on (its params sections, its data's hashes, its epochs), as one hash."""
    canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EpochState:
    """A member's training after `epoch` completed epochs, as it was in memory at that epoch's end."""

    epoch: int
    variables: list[np.ndarray]  # model.variables: weights and seed states
    optimizer: list[np.ndarray]  # optimizer.variables
    history: History
    stopping: dict[str, Any]  # early stopping's counters (empty without it)
    best_weights: list[np.ndarray] | None  # early stopping's kept weights
    done: bool = False  # the member's training ended: these are its final weights


class Checkpoints:
    """One stage's checkpoints in `folder`, valid for the training that `key` fingerprints."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key

    @classmethod
    def open(cls, folder: Path, key: str) -> tuple[Checkpoints, dict[str, Any] | None]:
        """The stage's checkpoints; and, when a checkpoint of another training was there (params or data
        changed since the kill), what it recorded, after discarding it, so the stage can close its run."""
        meta_path, discarded = folder / META, None
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") == key:
                return cls(folder, key), None
            discarded = meta
        if folder.exists():
            shutil.rmtree(folder)
        checkpoints = cls(folder, key)
        checkpoints._write_meta({"key": key})
        return checkpoints, discarded

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.folder / META).read_text(encoding="utf-8"))

    def remember(self, **values: Any) -> None:
        """Record values a rerun needs (the MLflow run id) next to the state."""
        self._write_meta({**self.meta, **values})

    def forget(self, name: str) -> None:
        self._write_meta({key: value for key, value in self.meta.items() if key != name})

    def resume_point(self) -> str:
        """Where a rerun goes on: `member 2, after epoch 14` (`epoch 14` for a single RNN)."""
        paths = sorted(self.folder.glob("member*.npz"), key=lambda path: int(path.stem.removeprefix("member")))
        for path in paths:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
            if not meta["done"]:
                return f"{path.stem.replace('member', 'member ')}, after epoch {meta['epoch']}"
        return f"member {len(paths) + 1}, from its start" if paths else "the start: no epoch had ended"

    def _write_meta(self, meta: dict[str, Any]) -> None:
        write_atomically(self.folder / META, json.dumps(meta, indent=1) + "\n")

    def load(self, member: int) -> EpochState | None:
        """The member's state at its last epoch's end (or, `done`, when its training ended), if any."""
        path = self.folder / f"member{member + 1}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            best = _arrays(data, "b") if meta["has_best"] else None
            return EpochState(meta["epoch"], _arrays(data, "v"), _arrays(data, "o"), meta["history"],
                              meta["stopping"], best, meta["done"])  # fmt: skip

    def save(self, member: int, state: EpochState) -> None:
        meta = {"epoch": state.epoch, "history": state.history, "stopping": state.stopping,
                "has_best": state.best_weights is not None, "done": state.done}  # fmt: skip
        groups = {"v": state.variables, "o": state.optimizer, "b": state.best_weights or []}
        arrays = {f"{prefix}{i}": a for prefix, values in groups.items() for i, a in enumerate(values)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, meta=np.array(json.dumps(meta)))
        write_atomically(self.folder / f"member{member + 1}.npz", buffer.getvalue())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _arrays(data: Any, prefix: str) -> list[np.ndarray]:
    count = sum(1 for name in data.files if name.startswith(prefix) and name[len(prefix) :].isdigit())
    return [data[f"{prefix}{i}"] for i in range(count)]
