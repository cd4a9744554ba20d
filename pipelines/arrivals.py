"""Text that arrives: the corpus's DVC-tracked folders brought up to date, and a watcher that tells
Prefect when there is new text, so that a run starts on arrival rather than only on the clock.

A corpus folder under `data/raw/` is plain files (the check and ingest stages depend on `data/raw`
itself), a folder tracked with `dvc add` (its `.dvc` file records each version of the text), or an
import from outside the repository with `dvc import-url` (a local folder, the team's S3 bucket),
which DVC freezes: only `dvc update` looks at its source again. `refresh` does what a person would
before a run (`dvc update` for an import, `dvc commit` for an added folder whose files changed); the
flow calls it first, and the watcher before it looks.

The watcher (`python -m pipelines watch`) refreshes and asks DVC whether the ingest stage's data
changed, every `interval` seconds, under the project's lock (a running flow or `dvc repro`, DVC's
own lock, a source out of reach: it looks again next time). On a state of the folder it has not
reported yet it emits a Prefect event, `char-rnn.corpus.arrived`, for the deployment's resource; the
deployment's trigger (`serve`, and `prefect.yaml` for a team's worker) starts a run. Served on one
machine, the run works in the watcher's project, and a stale event's run ends "up to date"; a team's
worker runs in a fresh clone, so every event is one full run, and the watcher's checkout (which never
sees the runs' dvc.lock) reports each state of the folder once.
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
from pipelines.failures import TransientError
from pipelines.versioning import DvcFailed, dvc_repo, refuse_while_dvc_runs

ARRIVED = "char-rnn.corpus.arrived"
logger = logging.getLogger("char_rnn.arrivals")


def resource(deployment: str) -> str:
    """The Prefect resource an arrival event is about: the deployment whose trigger matches it."""
    return f"char-rnn.deployment.{deployment}"


def tracked(layout: Layout) -> list[Path]:
    return sorted((layout.root / "data" / "raw").rglob("*.dvc"))


def refresh(layout: Layout) -> list[str]:
    """`dvc update` each import and `dvc commit` each added folder whose files changed, under data/raw;
    what changed, and what could not be (an added folder that is gone: its record is left as it was)."""
    said = []
    with dvc_repo(layout) as repo:
        for path in tracked(layout):
            target, before = str(path.relative_to(layout.root)), path.read_bytes()
            imported = bool(yaml.safe_load(before).get("deps"))  # an import: its source is a dependency
            if imported:
                repo.update([target])
            else:
                changes = {how for entry in repo.status(targets=[target]).get(target, []) if isinstance(entry, dict)
                           for how in entry.get("changed outs", {}).values()}  # fmt: skip
                if changes - {"modified"}:  # deleted, not in cache: nothing here to record
                    said.append(f"{target}: its folder is {', '.join(sorted(changes))} here; left as recorded")
                    continue
                if changes:
                    repo.commit(target, force=True)
            if path.read_bytes() != before:
                said.append(f"{target}: {'updated from its source' if imported else 'new files committed'}")
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


def look(layout: Layout, deployment: str) -> bool:
    """One look: emit the arrival event when new text is there and this state of the folder was not
    reported yet (the last state reported is kept in `.dvc/tmp/`, so a restarted watcher does not report
    it again). Whether it emitted."""
    from prefect.events import emit_event

    try:
        with project_lock(layout.lock, "corpus watcher"):
            refuse_while_dvc_runs(layout)
            refreshed, changed = refresh(layout), arrived(layout)
    except (ProjectBusy, TransientError, DvcFailed, OSError) as exc:  # busy, or DVC or the source away
        logger.info("watch: %s; looking again later", exc)
        return False
    state, record = fingerprint(layout), _record(layout, deployment)
    if not changed or (record.is_file() and record.read_text(encoding="utf-8") == state):
        logger.info("watch: nothing new in %s", layout.root / "data" / "raw")
        return False
    payload: dict[str, Any] = {"changed": changed, "refreshed": refreshed, "root": str(layout.root)}
    emit_event(event=ARRIVED, resource={"prefect.resource.id": resource(deployment)}, payload=payload)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(state, encoding="utf-8")
    logger.info("watch: new text (%s): emitted %s for %s", ", ".join(changed), ARRIVED, resource(deployment))
    return True


def _record(layout: Layout, deployment: str) -> Path:
    return layout.root / ".dvc" / "tmp" / f"char-rnn-watch-{deployment}"


def watch(layout: Layout, deployment: str, interval_s: float, once: bool) -> None:
    """Look every `interval_s` seconds until interrupted (`once`: a single look)."""
    while True:
        look(layout, deployment)
        if once:
            return
        time.sleep(interval_s)
