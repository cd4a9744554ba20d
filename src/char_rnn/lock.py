"""One run at a time per project, and an MLflow store that is created once.

Two runs writing the same workspace (a `dvc repro` and a scheduled flow run, two flow runs) would
interleave their outputs, their `dvc.lock` entries and their registrations. Each driver therefore
holds the project's lock while it works: the flow for its whole run, the command line for one
stage (which is what `dvc repro` calls, one stage after another). The flow runs its stages through
DVC too, as those same commands: it lends them its lock with a ticket in their environment. A second
driver is refused at once with one line naming the holder; it does not wait, because a nightly run
that queues behind a stuck one would hide the problem.

The lock is an `flock` on a git-ignored file: the kernel releases it when its holder dies, however
it dies (SIGKILL included), so no stale lock ever blocks a rerun. The file only says who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
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


RUN_TICKET = "CHAR_RNN_RUN"  # in a stage command's environment: the run holding the lock started it


@contextmanager
def project_lock(path: Path, what: str, ticket: str | None = None) -> Iterator[None]:
    """Hold the project's lock at `path` for the block, or raise `ProjectBusy` naming the holder.

    `what` says what holds it ("char-rnn train", "flow run nightly-owl"), for the refused run's
    message. A holder that runs its stages as commands (the Prefect flow, through `dvc repro`) passes
    a `ticket` and gives it to them in `CHAR_RNN_RUN`: a stage command carrying the holder's ticket runs
    under the holder's lock (`_under_holder`) instead of being refused by it.
    """
    if (inherited := os.environ.get(RUN_TICKET)) is not None:
        with _under_holder(path, inherited):
            yield
        return
    busy = "another run is using this project ({holder}); wait for it to end"
    with exclusive(path, wait=False, busy=busy) as fd:
        holder = {"pid": os.getpid(), "what": what, "since": time.strftime("%H:%M:%S"), "argv": sys.argv[:3]}
        with suppress(OSError):  # the record only informs; a full disk must not stop the run here
            os.ftruncate(fd, 0)  # a killed holder's record may still be there
            os.pwrite(fd, json.dumps({**holder, **({"ticket": ticket} if ticket else {})}).encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)


@contextmanager
def _under_holder(path: Path, ticket: str) -> Iterator[None]:
    """Run a stage for the holder whose ticket it carries, and end it when that holder is gone.

    The holder keeps the lock (so every other run stays refused); a stage whose holder died (SIGKILL,
    a cancelled flow run) is refused, and one running when it dies stops itself within a second
    rather than train on, unowned. The kernel releases a dead holder's flock, whatever killed it.
    """
    if not _held(path) or _record(path).get("ticket") != ticket:
        raise ProjectBusy(f"the run that started this stage no longer holds the project ({path})")
    threading.Thread(target=_stop_when_released, args=(path, ticket), daemon=True).start()
    yield


def _held(path: Path) -> bool:
    try:
        with exclusive(path, wait=False):
            return False
    except ProjectBusy:
        return True


def _stop_when_released(path: Path, ticket: str) -> None:
    """Poll the holder: gone, or replaced by another run within a poll (whose ticket differs), ends this."""
    while _held(path) and _record(path).get("ticket") == ticket:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _record(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{holder['what']}, pid {holder['pid']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):  # being written, or another program's lock file
        return "its holder is starting"
