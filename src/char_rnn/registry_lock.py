"""One registration at a time per registered model, across processes and machines, on any MLflow store.

Registering reads the champion, scores it against the candidate, then moves aliases. Two runs that do
this at once both compare with the same champion, and the last to write an alias wins, better or not:
MLflow has no compare-and-set for aliases. So the whole read-decide-write runs under a lock that every
MLflow store gives atomically, through the tracking URI alone: a registered model named `<model>.lock`.
Creating it succeeds for exactly one caller (names are unique in the store); deleting it releases it.

A killed holder cannot release: a lock older than `STALE_AFTER_S` is taken for a dead holder's and
broken. Registrations take seconds, and the Prefect flow stops its register stage after 15 minutes.
Breaking is not atomic: two waiters that break the same stale lock at the same instant could both
proceed, a window that exists only after a holder died. A Prefect concurrency limit would serialise
Prefect runs only, not `dvc repro` or `char-rnn promote`, which take this lock too.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from char_rnn.errors import PipelineError

STALE_AFTER_S = 1800.0
HOLDER = "char_rnn.lock.holder"
SINCE = "char_rnn.lock.since"


class RegistryBusy(PipelineError):
    """Another registration held the model's lock for longer than this one would wait."""


def lock_name(model_name: str) -> str:
    return f"{model_name}.lock"


@contextmanager
def registry_lock(model_name: str, wait_s: float = STALE_AFTER_S + 60.0) -> Iterator[str]:
    """Hold `<model_name>.lock` for the block; yields the holder's id (host, pid, random suffix)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while not _try_create(client, model_name, holder):
        if time.monotonic() > deadline:
            held = _held_by(client, model_name)
            raise RegistryBusy(f"{lock_name(model_name)} is still held ({held}); try again later")
        time.sleep(random.uniform(0.2, 1.0))  # jitter: waiters do not retry in lockstep
    try:
        yield holder
    finally:
        _release(client, model_name, holder)


def _try_create(client: Any, model_name: str, holder: str) -> bool:
    """Create the lock; False when someone else holds it (a stale one is broken first, then retried)."""
    from mlflow.exceptions import MlflowException

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    description = (
        f"Held while {holder} registers a version of {model_name} (since {since}); deleted when it is done."
        f" Older than {STALE_AFTER_S / 60:.0f} minutes means its holder died: it is then broken."
    )
    try:
        client.create_registered_model(lock_name(model_name), {HOLDER: holder, SINCE: since}, description)
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    held = _lock(client, model_name)
    if held is not None and time.time() * 1000 - held.creation_timestamp > STALE_AFTER_S * 1000:
        _delete(client, model_name)
    return False


def _release(client: Any, model_name: str, holder: str) -> None:
    """Delete the lock if it is still ours (a lock broken as stale may be someone else's by now)."""
    held = _lock(client, model_name)
    if held is not None and held.tags.get(HOLDER) == holder:
        _delete(client, model_name)


def _lock(client: Any, model_name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock_name(model_name))
    except MlflowException:
        return None


def _delete(client: Any, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    with suppress(MlflowException):  # released or broken by someone else in the meantime
        client.delete_registered_model(lock_name(model_name))


def _held_by(client: Any, model_name: str) -> str:
    held = _lock(client, model_name)
    return f"by {held.tags.get(HOLDER)} since {held.tags.get(SINCE)}" if held is not None else "released just now"
