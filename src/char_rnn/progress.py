"""Progress while a stage works: a line every few seconds, never a line per step.

Stages log to the `char_rnn.progress` logger and never print: the command line shows these lines on
stderr (unless `--quiet`), a Prefect run keeps them in its log, and a test sees nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("char_rnn.progress")

EVERY_S = 5.0  # at most one line per this many seconds, plus the first and the last epoch


def duration(seconds: float) -> str:
    """`45 s`, `3 min`, `1 h 05 min`: as precise as a person reading a log needs."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


def epoch_progress(label: str, epochs: int, every_s: float = EVERY_S) -> Any:
    """A Keras callback: `member 2/5 epoch 12/80: loss 1.8421, accuracy 0.462, val_loss 2.0112 (3 min left)`."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            self.started = self.shown = time.monotonic()
            self.first: int | None = None  # a fit resumed after a kill starts past epoch 1

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.first = epoch if self.first is None else self.first

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            now, done = time.monotonic(), epoch + 1
            if done not in (1, epochs) and now - self.shown < every_s:
                return
            self.shown = now
            figures = ", ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items() if "learning_rate" not in k)
            left = (now - self.started) / (done - (self.first or 0)) * (epochs - done)
            log.info("%sepoch %d/%d: %s (%s left)", f"{label} " if label else "", done, epochs, figures, duration(left))

    return EpochProgress()


def member_label(kind: str, member: int, members: int) -> str:
    """`refit member 2/5`, `member 2/5`, `refit`, or nothing for the first fit of a single RNN."""
    return " ".join(filter(None, [kind, f"member {member + 1}/{members}" if members > 1 else ""]))
