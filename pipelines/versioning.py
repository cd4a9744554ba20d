"""DVC bookkeeping for flow runs: after a successful run, the repository looks as `dvc repro` left it.

The tasks run the stage functions themselves (the same ones `dvc repro` runs through the CLI);
then one `dvc commit --force` records every stage's deps, params and outputs in dvc.lock, and
`dvc push` uploads the outputs when a default remote is configured. DVC runs in this process
through its Python API (`dvc.repo.Repo`): a `dvc` child process per command would start Python and
DVC again each time. DVC commands run one after another, never concurrently: DVC
fails with "Unable to acquire lock" instead of waiting, which `TransientError` turns into a retry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import chdir, contextmanager, suppress
from pathlib import Path
from typing import Any

from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.lock import ProjectBusy, exclusive
from char_rnn.params import Params, load_params
from pipelines.failures import TransientError


class NotADvcProject(PipelineError):
    """The flow's root has no dvc.yaml or no .dvc folder: nothing could record the run."""


class NoDvcRemote(PipelineError):
    """A run that pushes its record to a branch needs its outputs on a DVC remote that teammates pull from."""


class DvcFailed(Exception):
    """A DVC command failed for a reason other than its lock; the message carries DVC's own."""


@contextmanager
def dvc_repo(layout: Layout) -> Iterator[Any]:
    """The project's DVC repository; DVC's lock error becomes transient, any other error `DvcFailed`.

    DVC's API resolves "every stage" from the working directory, as its CLI does, so this enters
    the project root; the flow calls it from one task at a time, never from concurrent threads.
    """
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        with chdir(layout.root), Repo(str(layout.root)) as repo:
            yield repo
    except LockError as exc:
        raise TransientError(f"dvc: {exc}") from exc
    except DvcException as exc:
        raise DvcFailed(f"dvc: {exc}") from exc


def warm_up(layout: Layout) -> threading.Thread:
    """Import DVC and open (then close) the project's repository in a daemon thread, now.

    Both take a second or two, and the flow's own process waits idle while the model worker trains:
    warmed up then, the commit after the run pays only for itself. Opening a repository runs no DVC
    command and takes no lock; the caller joins the thread before its first command. Errors are left
    to that command, which reports them.
    """

    def open_once() -> None:
        with suppress(Exception):
            from dvc.repo import Repo

            with Repo(str(layout.root)):
                pass

    thread = threading.Thread(target=open_once, name="dvc-warm-up", daemon=True)
    thread.start()
    return thread


def refuse_while_dvc_repro_runs(layout: Layout) -> None:
    """Raise `ProjectBusy` when a `dvc repro` is running in this project.

    `dvc repro` takes the project's lock stage by stage (each `char-rnn <stage>` takes it), so between
    two of its stages the lock is free; a flow that started there would share the workspace with it.
    The flow checks for the `dvc repro` process itself after taking the lock (from then on, every
    stage of a new `dvc repro` is refused).
    """
    import psutil

    for process in psutil.process_iter(["cmdline", "cwd"]):
        command = process.info["cmdline"] or []
        dvc = any(Path(part).name == "dvc" for part in command[:3])
        if dvc and "repro" in command and process.info["cwd"] == str(layout.root):
            raise ProjectBusy(f"another run is using this project (dvc repro, pid {process.pid}); wait for it to end")


@contextmanager
def holding_dvc_lock(layout: Layout) -> Iterator[None]:
    """Hold DVC's own repository lock while the flow's stages run.

    A `dvc repro` started meanwhile then fails at once with DVC's "Unable to acquire lock", before
    it deletes any stage's outputs (it deletes them before running a stage's command, which is too
    late to refuse). DVC takes this lock only between stage commands, so it is free while one runs.
    The flow releases it before its own DVC commands, which take it.
    """
    with exclusive(layout.root / ".dvc" / "tmp" / "lock", wait=False, busy="a dvc command is running in this project"):
        yield


def require_dvc_project(layout: Layout) -> None:
    """Checked first, so a run that could never be recorded fails in milliseconds, not after training."""
    if not (layout.root / "dvc.yaml").is_file() or not (layout.root / ".dvc").is_dir():
        raise NotADvcProject(f"{layout.root} is not a DVC project (needs dvc.yaml and `dvc init`)")


def require_remote(layout: Layout, push: bool) -> None:
    """A default DVC remote outside the project that the run will push to (in a worker's clone, the one
    committed in .dvc/config). The laptop default, `local` = `<root>/dvc-remote`, would be deleted with
    the clone."""
    with dvc_repo(layout) as repo:
        remote = repo.config["core"].get("remote")
        url = repo.config["remote"][remote]["url"] if remote else ""
    inside = "://" not in url and Path(url).resolve().is_relative_to(layout.root)
    if not push or not remote or inside:
        raise NoDvcRemote(
            f"a run pushed to a branch needs push=true and a default DVC remote outside the project (found"
            f" {remote!r} at {url!r}); commit the team's: `dvc remote add --default team s3://<bucket>/dvc`"
        )


def is_up_to_date(layout: Layout, params: Params) -> bool:
    """Corpus, params and code unchanged since the last successful run.

    Only a successful run (or `dvc repro`) writes dvc.lock, so "unchanged" is: the run's params are
    params.yaml's and `dvc status` finds every stage's deps (corpus, code, params) and outputs as
    dvc.lock recorded them.
    """
    if params != load_params(layout.params):
        return False
    with dvc_repo(layout) as repo:
        return not repo.status()


def write_params(layout: Layout, params: Params) -> list[str]:
    """Write the run's values into params.yaml (comments kept), as `dvc exp run --set-param` does.

    dvc.lock records params as read from params.yaml, so a run with overrides must leave them
    there to be recorded truthfully. Called only after every stage succeeded.
    """
    current = load_params(layout.params).flat()
    changed = {key: value for key, value in params.flat().items() if current.get(key) != value}
    if changed:
        from ruamel.yaml import YAML  # DVC's own YAML library: round-trips comments and quotes

        yaml = YAML()
        yaml.preserve_quotes = True
        yaml.width = 4096  # never re-wrap a line
        # ruamel writes None as nothing (`random:`); the file says `null`, and so should every rewrite.
        yaml.representer.add_representer(
            type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
        )
        document = yaml.load(layout.params.read_text(encoding="utf-8"))
        for dotted, value in changed.items():
            section, key = dotted.split(".", 1)
            document[section][key] = value
        with layout.params.open("w", encoding="utf-8") as handle:
            yaml.dump(document, handle)
    return sorted(changed)


def record_run(layout: Layout, params: Params, push: bool) -> dict[str, Any]:
    """params.yaml, then dvc.lock, then the remote: in that order, one DVC command at a time."""
    changed = write_params(layout, params)
    with dvc_repo(layout) as repo:
        repo.commit(force=True)
        remote = repo.config["core"].get("remote")
        if push and remote:
            repo.push()
    return {"params_written": changed, "pushed_to": remote if push and remote else None}
