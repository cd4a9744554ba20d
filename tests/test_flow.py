"""The scheduled deployment end to end, on a real `prefect server`, a real MLflow store and real DVC.

One module-scoped setup (a server on a free loopback port with a temporary PREFECT_HOME, a git + DVC
project with a local remote, `python -m pipelines serve`) and four triggered runs, shared by the
tests: X, a full run; Y, triggered while X runs, with skip_if_unchanged; E, an evaluate-only change
written into params.yaml, which DVC reruns alone; Z, a params change (a corpus with control
characters) with skip_if_unchanged, which must run and fail validation.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import GIT_IDENTITY, QUIET, prefect_server, scaffold_project, stop_group

from conftest import REPO, SEED, TINY, free_port, saved_epoch

pytestmark = pytest.mark.integration

DEPLOYMENT = "char-rnn/nightly"
NOISY = "data/raw/noisy.txt"


def change_params(root: Path, overrides: dict[str, Any]) -> None:
    """Written into params.yaml as a person (or the flow, for its overrides) would, comments kept."""
    from char_rnn.layout import Layout
    from char_rnn.params import load_params, with_overrides
    from pipelines.versioning import write_params

    write_params(Layout(root), with_overrides(load_params(root / "params.yaml"), overrides))


def dvc(root: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **QUIET},
    ).stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Iterator[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = tmp_path_factory.mktemp("flow")
    root = base / "project"
    root.mkdir()
    (root / "data" / "raw").mkdir(parents=True)
    (root / NOISY).write_text("알엔엔 으로 문장을 배운다. " * 8 + "\x07" * 30, encoding="utf-8")
    scaffold_project(root)
    change_params(root, TINY)
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=root, check=True, env={**os.environ, **GIT_IDENTITY})
    shutil.copy(migrated_store, root / "mlruns" / "mlflow.db")
    dvc(root, "remote", "add", "-d", "local", str(base / "remote"))
    home = base / "prefect"
    home.mkdir()
    slot_wait = {"PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2"}
    with prefect_server(free_port(), home, slot_wait) as url:
        env = {
            **os.environ,
            **QUIET,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        log = (base / "serve.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", "--root", str(root)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
                deployment = _wait_for(lambda: _deployment(client), timeout_s=120, what="the served deployment")
                yield {"root": root, "client": client, "deployment": deployment, "log": base / "serve.log", "url": url}
        finally:
            stop_group(server)
            log.close()


def _deployment(client: Any) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(DEPLOYMENT)
    except ObjectNotFound:
        return None


def _wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(1)
    raise TimeoutError(f"no {what} after {timeout_s} s")


def _finished(client: Any, run_id: Any, timeout_s: float) -> Any:
    return _wait_for(lambda: (run := client.read_flow_run(run_id)).state.is_final() and run, timeout_s, "final state")


@pytest.fixture(scope="module")
def runs(served: dict[str, Any]) -> dict[str, Any]:
    """X and Y triggered together, then Z; each waited for. DVC's state is taken before Z."""
    from prefect.deployments import run_deployment

    client, root = served["client"], served["root"]
    x = run_deployment(DEPLOYMENT, parameters={"skip_if_unchanged": False}, timeout=0)
    # Y is triggered once X runs: with both merely scheduled, either may take the one slot first.
    _wait_for(lambda: client.read_flow_run(x.id).state.is_running(), 120, "X running")
    y = run_deployment(DEPLOYMENT, parameters={"skip_if_unchanged": True}, timeout=0)
    x, y = _finished(client, x.id, 300), _finished(client, y.id, 120)
    status_after_x = json.loads(dvc(root, "status", "--json"))
    change_params(root, {"evaluate.sample_length": TINY["evaluate.sample_length"] + 1})
    status_before_e = json.loads(dvc(root, "status", "--json"))  # what `dvc repro` would find to rerun
    e = _finished(client, run_deployment(DEPLOYMENT, parameters={"skip_if_unchanged": True}, timeout=0).id, 180)
    status_after_e = json.loads(dvc(root, "status", "--json"))
    before_z = {name: (root / name).read_bytes() for name in ("dvc.lock", "params.yaml")}
    z = run_deployment(
        DEPLOYMENT, parameters={"skip_if_unchanged": True, "overrides": {"corpus.source": NOISY}}, timeout=0
    )
    z = _finished(client, z.id, 180)
    after_z = {name: (root / name).read_bytes() for name in ("dvc.lock", "params.yaml")}
    return {"x": x, "y": y, "z": z, "e": e, "status_after_x": status_after_x, "status_before_e": status_before_e,
            "status_after_e": status_after_e,
            "before_z": before_z, "after_z": after_z}  # fmt: skip


def _task_runs(client: Any, flow_run: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    return {run.name.rsplit("-", 1)[0]: run for run in found}


def _logs(client: Any, flow_run: Any, until: str) -> list[str]:
    """The flow run's log lines, once one says `until` (they reach the API in batches, after the run ends)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    def read() -> list[str]:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        return [log.message for log in logs]

    return _wait_for(lambda: (lines := read()) and any(until in line for line in lines) and lines, 60, until)


def _what_dvc_did(client: Any, flow_run: Any) -> dict[str, str]:
    """{stage: ran | restored | skipped}, as each stage's task logged it."""
    lines = _logs(client, flow_run, "register ")
    return dict(re.fullmatch(r"(\w+) (ran|restored|skipped): .*", line).groups() for line in lines
                if re.fullmatch(r"(\w+) (ran|restored|skipped): .*", line))  # fmt: skip


def _mlflow(root: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def _training_runs(root: Path) -> list[Any]:
    client = _mlflow(root)
    return client.search_runs([client.get_experiment_by_name("char-rnn").experiment_id])


def test_deployment_is_nightly_with_concurrency_limit_one(served: dict[str, Any]) -> None:
    deployment = served["deployment"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [("0 2 * * *", "UTC")]
    described = deployment.parameter_openapi_schema["properties"]
    assert "dotted keys of params.yaml" in described["overrides"]["description"]
    assert all(field.get("description") for field in described.values())  # the custom-run form explains each
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters["root"] == str(served["root"])


def test_run_is_tracked_registered_and_recorded_by_dvc(served: dict[str, Any], runs: dict[str, Any]) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    root, x = served["root"], runs["x"]
    assert x.state.is_completed(), x.state.message
    (run,) = _training_runs(root)
    assert [m.step for m in _mlflow(root).get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    lock = __import__("yaml").safe_load(runs["before_z"]["dvc.lock"])["stages"]  # as X and E left it
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["prefect.flow_run_id"] == str(x.id)
    assert run.data.tags["prefect.deployment"] == "nightly"
    assert run.data.tags["git_commit"] == head
    assert run.data.tags["corpus_md5"] == lock["ingest"]["outs"][0]["md5"]
    (version,) = _mlflow(root).search_model_versions("name='char-rnn-seed'")
    assert version.run_id == run.info.run_id
    assert runs["status_after_x"] == {}
    assert lock["train"]["params"]["params.yaml"]["train"]["epochs"] == TINY["train.epochs"]
    assert set(_what_dvc_did(served["client"], x).values()) == {"ran"}  # a fresh project: every stage
    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[x.id]))
    [artifact] = served["client"].read_artifacts(artifact_filter=flt)
    assert artifact.key == "char-rnn-run" and artifact.data.startswith(f"## {x.state.message}\n")
    assert f"| this run: char-rnn-seed version {version.version} |" in artifact.data
    assert x.state.message == f"char-rnn-seed version {version.version} is champion: {version.tags['gate.reason']}"
    model_md5 = next(out["md5"] for out in lock["refit"]["outs"] if out["path"] == "models/model.keras")
    assert (root.parent / "remote" / "files" / "md5" / model_md5[:2] / model_md5[2:]).is_file()


def test_overlapping_run_waits_for_the_running_one(served: dict[str, Any], runs: dict[str, Any]) -> None:
    x, y = runs["x"], runs["y"]
    states = [state.name for state in served["client"].read_flow_run_states(y.id)]
    assert "AwaitingConcurrencySlot" in states
    assert y.start_time >= x.end_time


def test_unchanged_rerun_is_skipped_and_params_change_is_not(served: dict[str, Any], runs: dict[str, Any]) -> None:
    from pipelines.flow import UP_TO_DATE

    client, y, z = served["client"], runs["y"], runs["z"]
    assert y.state.is_completed() and y.state.message == UP_TO_DATE
    assert set(_task_runs(client, y)) == {"check-unchanged"}
    assert len(_training_runs(served["root"])) == 1
    assert {"check-unchanged", "ingest", "window", "validate"} <= set(_task_runs(client, z))


def test_an_evaluate_only_change_reruns_only_what_dvc_repro_reruns(
    served: dict[str, Any], runs: dict[str, Any]
) -> None:
    """E, after `evaluate.sample_length` changed in params.yaml: DVC reruns the stages `dvc status` names
    (check reads the whole file, evaluate the key) and skips the rest, training above all; the run says
    that nothing was registered, and dvc.lock agrees with the workspace afterwards."""
    client, e, root = served["client"], runs["e"], served["root"]
    assert e.state.is_completed(), e.state.message
    changed = set(runs["status_before_e"])
    assert changed == {"check", "evaluate"}  # the premise: what `dvc repro` reruns
    did = _what_dvc_did(client, e)
    assert {stage for stage, how in did.items() if how == "ran"} == changed
    assert did["train"] == did["refit"] == did["register"] == "skipped"
    logs = _logs(client, e, "register ")
    assert "Stage 'train' didn't change, skipping" in logs and "> char-rnn train" not in logs
    assert len(_training_runs(root)) == 1 and e.state.message.startswith("nothing registered")
    assert set(_task_runs(client, e)) == {"check-unchanged", *did, "dvc-push"}
    assert runs["status_after_e"] == {}


def test_failed_validation_fails_the_flow_without_training_or_retry(
    served: dict[str, Any], runs: dict[str, Any]
) -> None:
    """Z fails at validate: nothing after it runs, params.yaml is put back, and dvc.lock keeps what the
    stages that did run recorded (as after a failed `dvc repro`), nothing else."""
    import yaml

    root, z = served["root"], runs["z"]
    assert z.state.is_failed()
    assert re.fullmatch(r"stage 'validate' failed: validation failed: .*control.*", z.state.message), z.state.message
    tasks = _task_runs(served["client"], z)
    assert tasks["validate"].state.is_failed() and tasks["validate"].run_count == 1
    assert not {"baseline", "train", "tune", "refit", "evaluate", "register", "dvc-push"} & set(tasks)
    assert len(_training_runs(root)) == 1
    before, after = runs["before_z"], runs["after_z"]
    assert after["params.yaml"] == before["params.yaml"]
    locks = [yaml.safe_load(state["dvc.lock"])["stages"] for state in (before, after)]
    assert {name for name in locks[0] if locks[0][name] != locks[1][name]} == {"check", "ingest", "window"}
    assert locks[1]["check"]["params"]["params.yaml"]["corpus"]["source"] == NOISY


def test_a_killed_stage_fails_the_run_and_the_next_run_resumes_it_alone(
    served: dict[str, Any], runs: dict[str, Any]
) -> None:
    """K trains 400 epochs and its `char-rnn train` is SIGKILLed on the way; K fails saying so. R, the
    same run again, resumes from K's last completed epoch in K's MLflow run; while R trains, a `dvc repro
    --force` is refused by the project's lock at its first stage, check, which deletes nothing (no other
    stage starts), and R ends as if alone: the store and DVC agree."""
    import psutil
    from prefect.deployments import run_deployment

    client, root = served["client"], served["root"]
    longer = {"overrides": {"train.epochs": 400}, "skip_if_unchanged": False}
    k = run_deployment(DEPLOYMENT, parameters=longer, timeout=0)
    _wait_for(lambda: saved_epoch(root / "models" / "checkpoints" / "train", 0) >= 20, 300, "K training")
    [stage] = [p for p in psutil.process_iter(["cmdline", "cwd"]) if _is_train(p.info, root)]
    stage.kill()
    k = _finished(client, k.id, 120)
    assert k.state.is_failed()
    assert k.state.message == (
        "stage 'train' failed: StageKilled: char-rnn train was killed by SIGKILL; a rerun resumes training from"
        " its last completed epoch"
    )
    killed_at = saved_epoch(root / "models" / "checkpoints" / "train", 0)

    r = run_deployment(DEPLOYMENT, parameters=longer, timeout=0)
    _wait_for(lambda: any(_is_train(p.info, root) for p in psutil.process_iter(["cmdline", "cwd"])), 180, "R training")
    holder = json.loads((root / ".char-rnn.lock").read_text(encoding="utf-8"))
    assert holder["what"] == f"flow run {client.read_flow_run(r.id).name}"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # dvc.yaml's char-rnn
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro", "--force"], cwd=root, capture_output=True,
                           text=True, env={**os.environ, **QUIET, "PATH": path}, timeout=120)  # fmt: skip
    said = repro.stdout + repro.stderr
    assert repro.returncode != 0 and f"another run is using this project ({holder['what']}, pid" in said, said
    assert re.findall(r"Running stage '(\w+)'", said) == ["check"]  # refused there: nothing deleted
    r = _finished(client, r.id, 300)
    assert r.state.is_completed(), r.state.message
    [run] = [run for run in _training_runs(root) if "char_rnn.resumed" in run.data.tags]
    assert run.data.tags["char_rnn.resumed"] == f"member 1, after epoch {killed_at}"
    assert [m.step for m in _mlflow(root).get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 401))
    print(f"char-rnn train killed after epoch {killed_at}; the next run resumed from it")
    assert json.loads(dvc(root, "status", "--json")) == {}
    assert {run.info.status for run in _training_runs(root)} == {"FINISHED"}
    assert _mlflow(root).get_model_version_by_alias("char-rnn-seed", "champion").run_id in {
        run.info.run_id for run in _training_runs(root)
    }


def _is_train(info: dict[str, Any], root: Path) -> bool:
    """The `char-rnn train` that DVC started in this project."""
    command = info["cmdline"] or []
    return info["cwd"] == str(root) and command[-1:] == ["train"] and Path(command[-2]).name == "char-rnn"


def _file_size_limit(root: Path, command: list[str]) -> dict[str, Any]:
    """The flow's process (and so DVC, which runs in it, and the stages it starts) may write no file past
    8 KiB: DVC's own database, at the first stage, is the first file larger than that (EFBIG), and
    SQLite names no file."""
    return {"args": command, "preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))}


def _small_disk(root: Path, command: list[str]) -> dict[str, Any]:
    """models/ on a 64 KiB tmpfs seen only by the flow's process and the stages DVC starts (a mount
    namespace of their own): the n-gram fits, the train stage's first checkpoint does not (ENOSPC)."""
    (root / "models").mkdir()
    mount = 'mount -t tmpfs -o size=64k tmpfs "$0/models" && exec "$@"'
    return {"args": ["unshare", "--map-root-user", "--mount", "sh", "-c", mount, str(root), *command]}


@pytest.mark.parametrize(
    ("confine", "stage", "code"),
    [(_file_size_limit, "check", None), (_small_disk, "train", errno.ENOSPC)],
    ids=["file-size limit, met by DVC", "full disk, met by a stage"],
)
def test_a_full_disk_fails_the_run_at_once_in_one_line_naming_the_file(
    served: dict[str, Any], tmp_path: Path, confine: Any, stage: str, code: int | None
) -> None:
    """README's promise for a full disk, through a real flow run: the stage fails once (no retry), and
    the run's message is the one line `could not write <file>: ...` (the file when the writer names
    it: a stage does, SQLite does not); no later stage runs."""
    from char_rnn.stages import STAGES

    root = tmp_path / "project"
    root.mkdir()
    scaffold_project(root)
    change_params(root, TINY)
    env = {**os.environ, **QUIET, "PREFECT_API_URL": served["url"], "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipelines", "run", "--root", str(root), "--no-push"]
    started = time.monotonic()
    ran = subprocess.run(**confine(root, command), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started
    said = ran.stdout.splitlines()[-1] if ran.stdout else ""  # after the stages' own output: the run's state
    where = re.escape(str(root / "models"))
    written = (
        rf"could not write {where}/\S+: {re.escape(os.strerror(code))}"
        if code
        else ("MachineFault: could not write: disk I/O error in OperationalError")
    )
    line = rf"stage '{stage}' failed: {written} \(disk full or a file-size limit\)"
    assert ran.returncode == 1 and re.fullmatch(f"Failed: {line}", said), (said, ran.stderr[-3000:])
    [flow_run] = [run for run in served["client"].read_flow_runs() if run.parameters.get("root") == str(root)]
    assert flow_run.state.is_failed() and re.fullmatch(line, flow_run.state.message), flow_run.state.message
    tasks = _task_runs(served["client"], flow_run)
    assert tasks[stage].state.is_failed() and tasks[stage].run_count == 1, "retried"
    names = [s.name for s in STAGES]
    assert not set(names[names.index(stage) + 1 :]) & set(tasks), "a later stage ran"
    assert not list(root.rglob("*.partial")) and took < 240, took


def _watch_once(served: dict[str, Any]) -> str:
    env = {
        **os.environ,
        **QUIET,
        "PREFECT_API_URL": served["url"],
        "PREFECT_HOME": str(served["root"].parent / "prefect"),
    }
    command = [sys.executable, "-m", "pipelines", "watch", "--root", str(served["root"]), "--once"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True).stderr


def test_new_text_starts_a_run_through_the_deployment_s_trigger(
    served: dict[str, Any], runs: dict[str, Any], record_property: Any
) -> None:
    """Last in the module: it moves the served project to a folder corpus. A document dropped into the
    `dvc add`ed folder: the watcher commits the folder's new version and emits the arrival event, the
    deployment's trigger starts a run, which reads the new document (a dataset input of its MLflow run);
    then nothing is new, and a stale event's run ends "up to date" in seconds, without training."""
    from prefect.events import emit_event

    from pipelines.arrivals import ARRIVED, resource

    client, root = served["client"], served["root"]
    docs = root / "data" / "raw" / "docs"
    docs.mkdir()
    (docs / "2026-12-01.txt").write_text(SEED, encoding="utf-8")
    dvc(root, "add", "data/raw/docs")
    change_params(root, {"corpus.source": "data/raw/docs"})
    git = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=git)
    subprocess.run(["git", "commit", "-qm", "a folder corpus"], cwd=root, check=True, env=git)
    (docs / "2026-12-02.txt").write_text(SEED[::-1], encoding="utf-8")  # arrives after `dvc add`
    before = {run.id for run in client.read_flow_runs()}

    said = _watch_once(served)
    assert f"emitted {ARRIVED} for {resource('nightly')}" in said and "data/raw" in said, said
    assert json.loads(dvc(root, "status", "--json", "data/raw/docs.dvc")) == {}  # its new version committed
    triggered = _wait_for(lambda: [r for r in client.read_flow_runs() if r.id not in before], 120, "a triggered run")
    run = _finished(client, triggered[0].id, 300)
    assert run.state.is_completed() and run.parameters["skip_if_unchanged"] is True, run.state.message
    assert run.state.message.startswith("char-rnn-docs version 1 is champion"), run.state.message
    mlflow_run = max(_training_runs(root), key=lambda r: r.info.start_time)
    inputs = {i.dataset.name for i in mlflow_run.inputs.dataset_inputs if i.tags[0].value == "new document"}
    assert inputs == {"data/raw/docs/2026-12-01.txt", "data/raw/docs/2026-12-02.txt"}  # no champion yet: all new

    assert "nothing new" in _watch_once(served)
    settled = {r.id for r in client.read_flow_runs()}
    emit_event(event=ARRIVED, resource={"prefect.resource.id": resource("nightly")})  # a stale event
    stale = _wait_for(lambda: [r for r in client.read_flow_runs() if r.id not in settled], 120, "the stale run")
    stale = _finished(client, stale[0].id, 120)
    assert stale.state.is_completed() and stale.state.message.startswith("up to date"), stale.state.message
    took = (stale.end_time - stale.start_time).total_seconds()
    record_property("up_to_date_run_seconds", took)  # issue 25's goal: under 10 s (--junitxml keeps it)
    assert took < 10, took
    assert "train" not in _task_runs(client, stale)
