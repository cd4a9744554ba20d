"""One run at a time per project, and an MLflow store that is created once.

Two runs writing the same workspace (a `dvc repro` and a scheduled flow run, two flow runs) would
interleave their outputs, their `dvc.lock` entries and their registrations. Each driver therefore
holds the project's lock while it works: the flow for its whole run, the command line for one
stage (which is what `dvc repro` calls, one stage after another). A second driver is refused at
once with one line naming the holder; it does not wait, because a nightly run that queues behind
a stuck one would hide the problem.

The lock is an `flock` on a git-ignored file: the kernel releases it when its holder dies, however
it dies (SIGKILL included), so no stale lock ever blocks a rerun. The file only says who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from char_rnn.errors import PipelineError


class ProjectBusy(PipelineError):
    """Another run holds the project's lock."""


@contextmanager
def exclusive(path: Path, wait: bool = True, busy: str = "") -> Iterator[int]:
    """An `flock` on `path` for the block. Waiting: short critical sections shared by concurrent
    processes. Not waiting: raise `ProjectBusy` with `busy` as its message when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ProjectBusy(busy.format(holder=_holder(fd))) from None
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


@contextmanager
def project_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the project's lock at `path` for the block, or raise `ProjectBusy` naming the holder.

    `what` says what holds it ("char-rnn train", "flow run nightly-owl"), for the refused run's
    message. The flow's model worker runs stage functions for the flow, under its lock.
    """
    busy = "another run is using this project ({holder}); wait for it to end"
    with exclusive(path, wait=False, busy=busy) as fd:
        holder = {"pid": os.getpid(), "what": what, "since": time.strftime("%H:%M:%S"), "argv": sys.argv[:3]}
        with suppress(OSError):  # the record only informs; a full disk must not stop the run here
            os.ftruncate(fd, 0)  # a killed holder's record may still be there
            os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{holder['what']}, pid {holder['pid']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):  # being written, or another program's lock file
        return "its holder is starting"
