"""A registered version's files, found and checked before anything is loaded from them.

Two ways to the files, one check. A local store (`sqlite:///…` with artifacts on this disk, the
default) is read directly with the standard library: importing MLflow and opening its SQLAlchemy
store is ~3.5 s of a ~4 s cold `char-rnn generate`, while the answer is two rows of the store and a
folder on this disk. Any other store (a tracking server, PostgreSQL), or a schema this reader does
not know, goes through MLflow's client. Either way the bundle must be exactly the files the
version's sha256 tags name, each hashing to its tag, and only those files are read (the `.keras`
file by the NumPy runtime, the n-gram without pickle), never the stored pyfunc code.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

from char_rnn.generate import GenerationError, Generator, load_generator
from char_rnn.registry import ModelNotFound, parse_model_uri, resolve_version

RNN_BUNDLE = ("model", "vocab")  # artifact names; each file's sha256 is recorded as `<name>_sha256`
HYBRID_BUNDLE = (*RNN_BUNDLE, "ngram", "hybrid")


@dataclass(frozen=True)
class Found:
    """A version as this module needs it: its number, its tags and the folder holding its MLmodel."""

    version: str
    tags: dict[str, str]
    folder: Path


def load_registered(uri: str, store: str | None = None) -> Generator:
    """The generator of `models:/name@alias` or `models:/name/version` in `store` (default: MLflow's
    current tracking URI), its files checked against the version's sha256 tags."""
    with registered_files(uri, store) as (version, files, digests):
        version_uri = f"models:/{parse_model_uri(uri)[0]}/{version}"
        return load_generator(files, digests, version_uri + (f" ({uri})" if uri != version_uri else ""))


@contextlib.contextmanager
def registered_files(uri: str, store: str | None = None) -> Iterator[tuple[str, dict[str, Path], dict[str, str]]]:
    """(version, its bundle's files by name, their sha256 tags), read where they lie in a local store,
    else downloaded for the duration of the `with`. The files are checked by whoever loads them."""
    found = read_local_store(uri, store) if store else None
    if found is not None:
        yield found.version, *checked_files(uri, found)
        return
    import mlflow

    if store:
        mlflow.set_tracking_uri(store)
    version = resolve_version(uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=tmp
        )
        found = Found(str(version.version), dict(version.tags), Path(folder))
        yield found.version, *checked_files(uri, found)


def checked_files(uri: str, found: Found) -> tuple[dict[str, Path], dict[str, str]]:
    """Refuses a bundle that is not exactly the files the version's sha256 tags name, so a hybrid
    whose artifact list lost its n-gram is refused, not served as the RNN alone."""
    mlmodel = yaml.safe_load((found.folder / "MLmodel").read_text(encoding="utf-8"))
    bundled = mlmodel["flavors"]["python_function"].get("artifacts", {})
    try:
        files = bundle_files({name: entry["path"] for name, entry in bundled.items()}, found.folder)
    except GenerationError as exc:
        raise GenerationError(f"{uri} (version {found.version}): {exc}") from None
    tagged = {name for name in HYBRID_BUNDLE if f"{name}_sha256" in found.tags}
    if tagged != set(files):
        raise GenerationError(
            f"{uri} (version {found.version}) bundles {', '.join(sorted(files))} but its sha256 tags"
            f" name {', '.join(sorted(tagged))}"
        )
    return files, {name: found.tags[f"{name}_sha256"] for name in files}


def bundle_files(artifacts: dict[str, str], folder: Path) -> dict[str, Path]:
    """The bundle's files by name: exactly the RNN's or the hybrid's, nothing else."""
    if set(artifacts) not in (set(RNN_BUNDLE), set(HYBRID_BUNDLE)):
        raise GenerationError(f"not a char-rnn generator bundle (artifacts: {', '.join(sorted(artifacts))})")
    return {name: folder / path for name, path in artifacts.items()}


def read_local_store(uri: str, store: str) -> Found | None:
    """The version behind `uri` in a local sqlite store, read-only; None when the store is not one
    this reader knows (not sqlite, artifacts not on this disk, another schema): then MLflow decides."""
    name, alias, number = parse_model_uri(uri)
    path = local_sqlite(store)
    if path is None or (alias or "").lower() == "latest":
        return None  # MLflow's own rules: another store or registry, `@latest` (the highest version)
    if number is not None and int(number) >= 2**63:
        raise ModelNotFound(f"{uri}: not in the registry at {store}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            where = workspace(db)
            found = version_row(db, name, alias, number, where)
            if found is None:
                raise ModelNotFound(f"{uri}: not in the registry at {store}")
            version, location = found
            query = "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?"
            tags = dict(db.execute(query + where, (name, version)).fetchall())
    except sqlite3.Error:
        return None
    folder = urlparse(location or "")
    if folder.scheme != "file":
        return None
    return Found(str(version), tags, Path(unquote(folder.path)))


def local_sqlite(store: str) -> Path | None:
    """The file of a `sqlite:///` store that MLflow's client would read for the registry too; None
    for anything this reader does not handle as MLflow does (a query string, a registry URI of its
    own, workspaces, a file not yet created)."""
    rest = store.removeprefix("sqlite:///")
    elsewhere = ("MLFLOW_REGISTRY_URI", "MLFLOW_WORKSPACE", "MLFLOW_ENABLE_WORKSPACES")
    if rest == store or "?" in rest or any(os.environ.get(variable) for variable in elsewhere):
        return None
    path = Path(unquote(rest)).resolve()  # relative to the working directory, as SQLAlchemy reads it
    return path if path.is_file() else None


def version_row(
    db: sqlite3.Connection, name: str, alias: str | None, number: str | None, where: str
) -> tuple[int, str] | None:
    """(version, storage location) of the version the alias or number names; a deleted version keeps
    its row, marked as MLflow's store marks it. `where`: the workspace condition."""
    if alias is not None:
        query = "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?"
        found = db.execute(query + where, (name, alias)).fetchone()
        if found is None:
            return None
        number = str(found[0])
    query = "SELECT version, storage_location FROM model_versions WHERE name = ? AND version = ?"
    return db.execute(query + " AND current_stage != 'Deleted_Internal'" + where, (name, int(number or 0))).fetchone()


def workspace(db: sqlite3.Connection) -> str:
    """MLflow 3's stores name a workspace on every registry row; without workspaces it is 'default'."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(model_versions)")}
    return " AND workspace = 'default'" if "workspace" in columns else ""
