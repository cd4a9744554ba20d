"""Which failures a task may retry: only transient ones (I/O hiccups, a busy database or DVC lock).

A `PipelineError` (bad params, failed validation, NaN loss, refused registration, exhausted time
budget) would fail the same way again, so it is never retried; neither is a missing file, nor a fault
of the machine that a retry meets again (`machine_fault`: a full disk, a read-only file system, a
tracking server that stayed away past MLflow's own retries), which ends the stage in the same one
line the command line prints.
"""

from __future__ import annotations

from typing import Any

from char_rnn.errors import PipelineError
from char_rnn.faults import environment_fault

# Messages of errors that go away when retried a little later, whatever exception class carries them
# (MLflow wraps SQLite's lock error in its own exception; DVC reports its lock only on stderr).
TRANSIENT_MESSAGES = ("database is locked", "unable to acquire lock", "connection reset", "temporarily unavailable")
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class StageFailed(Exception):
    """Raised by the flow so that its Failed state names the stage that failed and why."""

    def __init__(self, stage: str, why: str) -> None:
        super().__init__(f"stage {stage!r} failed: {why}")
        self.stage = stage


def one_line(exc: BaseException) -> str:
    """`ValidationFailed: validation failed: corpus: ...; windows: ...`: a message's lines on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = type(exc).__name__
    prefix = "" if isinstance(exc, StageError) else f"{name}: "  # the stage's own words say what failed
    return prefix + (lines[0] + (" " + "; ".join(lines[1:]) if lines[1:] else "") if lines else name)


class TransientError(Exception):
    """A transient failure reported by another process (a stage's command, DVC): worth a retry."""


class StageError(PipelineError):
    """A stage's command said why it failed (`error: ...`, as `char-rnn` prints a user's error or a
    machine's fault): never retried, and its message is that line."""


class MachineFault(PipelineError):
    """A fault of the machine, not of the pipeline, that a retry would meet again (see `machine_fault`)."""


def machine_fault(exc: Exception) -> MachineFault | None:
    """A write refused for good (no space, a file-size or quota limit, a read-only file system) or a
    tracking server gone, wherever it surfaced, as the one line `char-rnn` prints for it (`could not
    write <file>: ...`); None for anything else."""
    known = environment_fault(exc)
    return MachineFault(str(known)) if known is not None else None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (PipelineError, *PERMANENT_OS_ERRORS)):
        return False
    if isinstance(exc, Exception) and machine_fault(exc) is not None:
        return False
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, EIO and friends
        return True
    message = str(exc).lower()
    return any(text in message for text in TRANSIENT_MESSAGES)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry a failed task run only when its exception is transient."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
