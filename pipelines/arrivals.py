"""Text that arrives: the corpus's DVC-tracked folders brought up to date, and a watcher that tells
Prefect when there is new text, so that a run starts on arrival rather than only on the clock.

A corpus folder under `data/raw/` is plain files (the check and ingest stages depend on `data/raw`
itself), a folder tracked with `dvc add` (its `.dvc` file records each version of the text), or an
import from outside the repository with `dvc import-url` (a local folder, the team's S3 bucket),
which DVC freezes: only `dvc update` looks at its source again. `refresh` does what a person would
before a run (`dvc update` for an import, `dvc commit` for an added folder whose files changed); the
flow calls it first, and the watcher before it looks.

The watcher (`python -m pipelines watch`) refreshes and asks DVC whether the ingest stage's data
changed, every `interval` seconds, under the project's lock (a running flow or `dvc repro` is left
alone: it looks again next time). On a change it has not reported yet it emits a Prefect event,
`char-rnn.corpus.arrived`, for the deployment's resource; the deployment's trigger (`serve`, and
`prefect.yaml` for a team's worker) starts a run. A run with nothing new still ends "up to date".
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from char_rnn.layout import Layout
from char_rnn.lock import ProjectBusy, project_lock
from pipelines.versioning import dvc_repo, refuse_while_dvc_runs

ARRIVED = "char-rnn.corpus.arrived"
logger = logging.getLogger("char_rnn.arrivals")


def resource(deployment: str) -> str:
    """The Prefect resource an arrival event is about: the deployment whose trigger matches it."""
    return f"char-rnn.deployment.{deployment}"


def tracked(layout: Layout) -> list[Path]:
    return sorted((layout.root / "data" / "raw").rglob("*.dvc"))


def refresh(layout: Layout) -> list[str]:
    """`dvc update` each import and `dvc commit` each added folder under data/raw; what changed."""
    said = []
    with dvc_repo(layout) as repo:
        for path in tracked(layout):
            target, before = str(path.relative_to(layout.root)), path.read_bytes()
            if yaml.safe_load(before).get("deps"):  # an import: its source is a dependency
                repo.update([target])
            elif repo.status(targets=[target]):
                repo.commit(target, force=True)
            if path.read_bytes() != before:
                said.append(f"{target}: {'updated from its source' if b'deps:' in before else 'new files committed'}")
    return said


def arrived(layout: Layout) -> list[str]:
    """The ingest stage's data dependencies that differ from what dvc.lock recorded: new text."""
    with dvc_repo(layout) as repo:
        status = repo.status(targets=["ingest"])
    changes = [entry.get("changed deps", {}) for entry in status.get("ingest", []) if isinstance(entry, dict)]
    return sorted(path for found in changes for path in found if path.startswith("data/"))


def fingerprint(layout: Layout) -> str:
    """The raw text's files as they are (names, sizes, times): one event per state of the folder."""
    files = sorted(p for p in (layout.root / "data" / "raw").rglob("*") if p.is_file())
    listing = "\n".join(f"{p.relative_to(layout.root)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def look(layout: Layout, deployment: str, reported: str | None) -> str | None:
    """One look: emit the arrival event when new text is there and this state was not reported yet.
    Returns the state reported (the one given when nothing was emitted)."""
    from prefect.events import emit_event

    try:
        with project_lock(layout.lock, "corpus watcher"):
            refuse_while_dvc_runs(layout)
            refreshed, changed = refresh(layout), arrived(layout)
    except ProjectBusy as busy:
        logger.info("watch: %s; looking again later", busy)
        return reported
    state = fingerprint(layout)
    if not changed or state == reported:
        logger.info("watch: nothing new in %s", layout.root / "data" / "raw")
        return reported
    payload: dict[str, Any] = {"changed": changed, "refreshed": refreshed, "root": str(layout.root)}
    emit_event(event=ARRIVED, resource={"prefect.resource.id": resource(deployment)}, payload=payload)
    logger.info("watch: new text (%s): emitted %s for %s", ", ".join(changed), ARRIVED, resource(deployment))
    return state


def watch(layout: Layout, deployment: str, interval_s: float, once: bool) -> None:
    """Look every `interval_s` seconds until interrupted (`once`: a single look)."""
    reported = None
    while True:
        reported = look(layout, deployment, reported)
        if once:
            return
        time.sleep(interval_s)
