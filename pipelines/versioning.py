"""DVC runs the flow's stages: one `dvc repro --single-item <stage>` per task, as `dvc repro` runs them.

Skipping an unchanged stage, restoring one from the run-cache and writing its `dvc.lock` entry are
DVC's, exactly as in a `dvc repro`. DVC runs in the flow's process through its Python API
(`dvc.repo.Repo.reproduce`): a `dvc` child process per stage cost 0.7 s of start-up each (ten stages:
7 s, against 1.8 s for a whole no-op `dvc repro`), the API 0.2 s. DVC starts the stage's own command
(`char-rnn <stage>`) as a child process, which stays killable: a stage past its time budget, or left
behind by a flow that is stopped, is terminated (`stop_stage`), and one whose flow was killed outright
stops itself (`char_rnn.lock`). DVC's lock error is transient (retried); any other DVC error is
`DvcFailed`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import chdir, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.lock import ProjectBusy
from char_rnn.params import Params, load_params
from pipelines.failures import TRANSIENT_MESSAGES, StageError, TransientError, is_transient

GRACE_S = 10.0  # between SIGTERM and SIGKILL for a stage that is stopped


class NotADvcProject(PipelineError):
    """The flow's root has no dvc.yaml or no .dvc folder: DVC could not run its stages."""


class NoDvcRemote(PipelineError):
    """A run that pushes its record to a branch needs its outputs on a DVC remote that teammates pull from."""


class DvcFailed(Exception):
    """A DVC command failed for a reason other than its lock or a stage's command; DVC's message."""


class DvcRefused(PipelineError):
    """DVC refused to run a stage (a missing dependency, a broken dvc.yaml): the user's to fix, in one line."""


class StageTimedOut(PipelineError):
    """A stage used up its time budget and was stopped. Not retried: it would time out again."""


class StageKilled(PipelineError):
    """The stage's process was killed by a signal from outside the flow."""


class StageCrashed(Exception):
    """The stage's command failed with a traceback that is not transient: a bug (its last lines)."""


@dataclass
class StageRun:
    """What DVC did with a stage (`ran`, `restored` from the run-cache, `skipped`: unchanged), the
    stage command's output lines, DVC's own messages, and why it failed (None when it did not)."""

    stage: str
    how: str = "ran"
    output: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    dvc: list[str] = field(default_factory=list)
    error: Exception | None = None

    @property
    def summary(self) -> str:
        """The stage command's summary line (`train: 3 epochs, ...`), or what DVC did instead."""
        said = [line.removeprefix(f"{self.stage}: ") for line in self.output if line.startswith(f"{self.stage}: ")]
        if said:
            return said[-1]
        return {"skipped": "unchanged: DVC skipped it", "restored": "restored by DVC from its run-cache"}.get(
            self.how, "ran"
        )


@contextmanager
def dvc_repo(layout: Layout) -> Iterator[Any]:
    """The project's DVC repository; DVC's lock error becomes transient, any other error `DvcFailed`.

    DVC's API resolves stage names from the working directory, as its CLI does, so this enters the
    project root; the flow runs one task at a time, never from concurrent threads.
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


def reproduce(layout: Layout, stage: str, timeout_s: float, run_env: dict[str, str]) -> StageRun:
    """`dvc repro --single-item <stage>`, its command stopped after `timeout_s`; never raises for the
    stage's own failure, which `StageRun.error` carries with the output that explains it."""
    run, expired = StageRun(stage), threading.Event()
    timer = threading.Timer(timeout_s, lambda: (expired.set(), stop_stage(stage)))
    with _captured_output(run.output, run.stderr), _dvc_messages() as run.dvc:
        timer.start()
        try:
            with dvc_repo(layout) as repo:
                repo.reproduce(stage, single_item=True, run_env=run_env)
        except DvcFailed as exc:
            run.error = exc
        finally:
            timer.cancel()
            stop_stage(stage)  # a flow stopped mid-stage (cancelled, timed out) leaves no stage running
    run.how = "skipped" if _said(run.dvc, "didn't change") else "restored" if _said(run.dvc, "is cached") else "ran"
    if run.error is not None:
        run.error = _why(run, timeout_s, timed_out=expired.is_set())
    return run


def _said(messages: list[str], words: str) -> bool:
    return any(words in message for message in messages)


def _why(run: StageRun, timeout_s: float, timed_out: bool) -> Exception:
    """The exception that says why a stage failed, of the class that decides whether it is retried."""
    resumes = "; a rerun resumes training from its last completed epoch" if run.stage in ("train", "refit") else ""
    chain = [run.error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    code = re.search(r"exited with (-?\d+)", " ".join(map(str, chain)))
    if timed_out:
        return StageTimedOut(f"{run.stage} ran longer than its time budget of {timeout_s:g} s and was stopped{resumes}")
    killer = _killed_by(int(code.group(1))) if code else None
    if killer is not None:
        return StageKilled(f"char-rnn {run.stage} was killed by {killer.name}{resumes}")
    told = [i for i, line in enumerate(run.stderr) if line.startswith("error: ")]
    if told:
        said = [line.strip() for line in run.stderr[told[-1] :] if line.strip()]
        return StageError(" ".join([said[0].removeprefix("error: "), "; ".join(said[1:])]).strip())
    last = next((line for line in reversed(run.stderr) if line.strip()), str(run.error))
    if not code:  # DVC itself failed (a missing dependency, a broken dvc.yaml): no stage command ran
        return run.error if is_transient(run.error) else DvcRefused(": ".join(dict.fromkeys(map(str, chain))))
    if any(words in last.lower() for words in TRANSIENT_MESSAGES):
        return TransientError(f"char-rnn {run.stage}: {last}")
    return StageCrashed("\n".join(run.stderr[-30:]))


def _killed_by(code: int) -> signal.Signals | None:
    """The signal that ended a stage's command. DVC runs it through `$SHELL -c` (`/bin/sh` where SHELL
    is unset, as on CI): bash execs the command, whose death by signal N DVC sees as -N; dash waits for
    it, prints "Killed" and exits 128 + N."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    return signal.Signals(number) if number in set(signal.Signals) else None


def stop_stage(stage: str) -> None:
    """SIGTERM to this process's children running `stage` for DVC (and theirs), SIGKILL after a grace.

    Their ends are watched, not waited for: DVC reaps its own child and reads its exit status.
    """
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.environ().get("DVC_STAGE") == stage:
                found.append(child)
        except psutil.Error:  # gone meanwhile, or a zombie
            continue
    for signal_ in (signal.SIGTERM, signal.SIGKILL):
        for process in found:
            with suppress(psutil.Error):
                process.send_signal(signal_)
        deadline = time.monotonic() + GRACE_S
        while found and time.monotonic() < deadline:
            found = [process for process in found if _running(process)]
            time.sleep(0.05)


def _running(process: Any) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextmanager
def _captured_output(lines: list[str], stderr: list[str]) -> Iterator[None]:
    """This process's stdout and stderr (so the stage command's, which DVC does not capture) kept as lines
    for the block, stderr's also in `stderr`, and passed on to where they went."""
    sys.stdout.flush()
    sys.stderr.flush()
    pumps = [_pump(1, [lines]), _pump(2, [lines, stderr])]
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved, thread in pumps:
            os.dup2(saved, fd)  # closes the pipe's last writer here: the pump sees its end
            thread.join(timeout=5)
            os.close(saved)


def _pump(fd: int, into: list[list[str]]) -> tuple[int, int, threading.Thread]:
    read, write = os.pipe()
    saved = os.dup(fd)
    os.dup2(write, fd)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as pipe:
            for raw in pipe:
                os.write(saved, raw)
                line = raw.decode("utf-8", "replace").rstrip("\n").rsplit("\r", 1)[-1]
                for lines in into:
                    lines.append(line)

    thread = threading.Thread(target=pump, name=f"stage-output-{fd}", daemon=True)
    thread.start()
    return fd, saved, thread


@contextmanager
def _dvc_messages() -> Iterator[list[str]]:
    """DVC's own INFO messages ("Stage 'train' didn't change, skipping") kept for the block."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("dvc"), Keep(logging.INFO)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def refuse_while_dvc_runs(layout: Layout) -> None:
    """Raise `ProjectBusy` when a `dvc repro` or `dvc exp run` is running in this project.

    Both take the project's lock stage by stage (each `char-rnn <stage>` takes it), so between two of
    their stages the lock is free; a flow that started there would break their next stage (and `dvc
    exp run`, even `--temp`, stashes and rewrites the workspace as it starts). The flow checks for the
    process itself after taking the lock (from then on, every stage of a new one is refused).
    """
    import psutil

    for process in psutil.process_iter(["cmdline", "cwd"]):
        command, cwd = process.info["cmdline"] or [], process.info["cwd"]
        dvc = any(Path(part).name == "dvc" for part in command[:3])
        running = "repro" in command or ("exp" in command and "run" in command)
        if dvc and running and cwd and Path(cwd).is_relative_to(layout.root):
            what = "dvc repro" if "repro" in command else "dvc exp run"
            raise ProjectBusy(f"another run is using this project ({what}, pid {process.pid}); wait for it to end")


def require_dvc_project(layout: Layout) -> None:
    """Checked first, so a run that DVC could never run fails in milliseconds."""
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
    """Corpus, params and code unchanged since the last successful run: the run's params are
    params.yaml's and `dvc status` finds every stage's deps and outputs as dvc.lock recorded them."""
    if params != load_params(layout.params):
        return False
    with dvc_repo(layout) as repo:
        return not repo.status()


def write_params(layout: Layout, params: Params) -> list[str]:
    """Write the run's values into params.yaml through DVC's own YAML writer, as `dvc exp run -S` does
    (params.yaml is kept in that writer's style, so a changed param is a one-line diff).

    DVC reads params from params.yaml for every stage it runs and records them in dvc.lock, so a run
    with overrides must put them there first for dvc.lock to say truthfully what ran.
    """
    current = load_params(layout.params).flat()
    changed = {key: value for key, value in params.flat().items() if current.get(key) != value}
    if changed:
        from dvc.utils.serialize import modify_yaml  # what DVC's apply_overrides (-S) writes with

        with modify_yaml(layout.params) as document:
            for dotted, value in changed.items():
                section, key = dotted.split(".", 1)
                document[section][key] = value
    return sorted(changed)


def push(layout: Layout) -> dict[str, Any]:
    """`dvc push` of every output dvc.lock records, to the default remote when one is set."""
    with dvc_repo(layout) as repo:
        remote = repo.config["core"].get("remote")
        if remote:
            repo.push()
    return {"pushed_to": remote, "summary": f"outputs pushed to DVC remote {remote!r}" if remote else "no DVC remote"}


def stage_env(ticket: str, tags: dict[str, str]) -> dict[str, str]:
    """What a stage command run for the flow gets in its environment: the run's lock ticket
    (`char_rnn.lock`), the lineage tags that train puts on its MLflow run (`char_rnn.stages`), and this
    environment's `char-rnn` first on PATH (dvc.yaml's commands), whatever PATH the flow was started with."""
    from char_rnn.lock import RUN_TICKET
    from char_rnn.stages import RUN_TAGS

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {RUN_TICKET: ticket, RUN_TAGS: json.dumps(tags), "PATH": path}
