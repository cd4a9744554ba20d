"""Unattended runs survive faults: real processes killed, real `dvc repro`, real MLflow stores.

A killed training resumes from its last completed epoch and ends with the weights an uninterrupted
run has; its MLflow run goes on and ends FINISHED.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import GIT_IDENTITY, QUIET, scaffold_project

from char_rnn.layout import Layout
from char_rnn.params import load_params, with_overrides
from conftest import saved_epoch

pytestmark = pytest.mark.integration

# Long enough epochs to be killed in the middle of one: the constitution, an ensemble of two, a refit.
KILLABLE = {
    "corpus.source": "kolaw",
    "vocab.units": "open",
    "window.stride": 10,
    "split.val_fraction": 0.05,
    "split.tune_fraction": 0.05,
    "model.units": 32,
    "model.ensemble": 2,
    "train.epochs": 3,
    "train.batch_size": 64,
    "refit.enabled": True,
    "evaluate.sample_length": 5,
}


def env() -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    variables = {**os.environ, **QUIET, **GIT_IDENTITY, "PATH": path}
    variables.pop("MLFLOW_TRACKING_URI", None)
    return variables


def dvc_repro(root: Path, *targets: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", *targets],
        cwd=root,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two identical projects with the killable params, validated once and copied: the reference is
    run through (to the register stage), the other is killed."""
    from pipelines.versioning import write_params

    reference = tmp_path_factory.mktemp("reference") / "project"
    reference.mkdir()
    scaffold_project(reference)
    write_params(Layout(reference), with_overrides(load_params(Layout(reference).params), KILLABLE))
    repro("validate", reference)
    killed = tmp_path_factory.mktemp("killed") / "project"
    shutil.copytree(reference, killed, symlinks=True)
    repro("register", reference)  # every stage: the full-disk test reruns each
    return {"reference": reference, "killed": killed}


def repro(target: str, root: Path) -> None:
    process = dvc_repro(root, target)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output


def kill_stage_when(
    repro: subprocess.Popen, stage: str, ready: Callable[[], bool], before: Callable[[], None] = lambda: None
) -> None:
    """SIGKILL the `char-rnn <stage>` process that `dvc repro` started, once `ready()` holds (then `before()`)."""
    import psutil

    deadline = time.monotonic() + 600
    while not ready():
        assert repro.poll() is None, f"dvc repro ended before the kill:\n{repro.communicate()[0]}"
        assert time.monotonic() < deadline, f"{stage} never reached the point to kill it"
        time.sleep(0.05)
    before()
    [victim] = [
        child
        for child in psutil.Process(repro.pid).children(recursive=True)
        if child.cmdline()[-2:] == [str(Path(sys.executable).parent / "char-rnn"), stage]
    ]
    victim.send_signal(signal.SIGKILL)
    output = repro.communicate(timeout=120)[0]
    assert repro.returncode != 0, output


def refused_while(root: Path, repro: subprocess.Popen) -> None:
    """While `dvc repro` runs, a flow (or any other run) is refused: during a stage by the stage's
    lock, between stages because the `dvc repro` process itself is found."""
    from char_rnn.lock import ProjectBusy, project_lock
    from pipelines.versioning import refuse_while_dvc_runs

    layout = Layout(root)
    holder = r"another run is using this project \(char-rnn train, pid \d+, since "
    with pytest.raises(ProjectBusy, match=holder), project_lock(layout.lock, "test"):
        pass
    with pytest.raises(ProjectBusy, match=rf"\(dvc repro, pid {repro.pid}\)"):
        refuse_while_dvc_runs(layout)


def mlflow_client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def test_killed_training_and_refit_resume_to_the_uninterrupted_weights(projects: dict[str, Path]) -> None:
    root, reference = projects["killed"], projects["reference"]
    checkpoints = Layout(root).checkpoints

    # Killed while the second member trains, after at least one of its epochs ended.
    repro = dvc_repro(root, "refit")
    kill_stage_when(
        repro, "train", lambda: saved_epoch(checkpoints / "train", 1) >= 1, lambda: refused_while(root, repro)
    )
    killed_at = saved_epoch(checkpoints / "train", 1)
    client = mlflow_client(root)
    [run] = client.search_runs([client.get_experiment_by_name("char-rnn").experiment_id])
    assert run.info.status == "RUNNING"  # as the kill left it

    # The rerun resumes it, and is killed in turn during the refit's first member.
    repro = dvc_repro(root, "refit")
    kill_stage_when(repro, "refit", lambda: saved_epoch(checkpoints / "refit", 0) >= 1)
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "RUNNING"  # the refit logs into the same run, and was killed
    assert resumed.data.tags["char_rnn.resumed"] == f"member 2, after epoch {killed_at}"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/member2/loss")]
    assert sorted(set(steps)) == [1, 2, 3]  # every epoch logged, those before the kill by the killed process

    repro = dvc_repro(root, "refit")
    output = repro.communicate(timeout=900)[0]
    assert repro.returncode == 0, output
    print(f"train killed after member 2's epoch {killed_at}, resumed from it; refit killed and resumed too")
    for model in ("models/fit.keras", "models/model.keras"):  # canonical saves: same weights, same bytes
        assert (root / model).read_bytes() == (reference / model).read_bytes(), model
    assert not checkpoints.exists() or not any(checkpoints.iterdir())
    [run] = client.search_runs([client.get_experiment_by_name("char-rnn").experiment_id])
    assert run.info.status == "FINISHED"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "refit"], cwd=root, env=env(),
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(status.stdout) == {}


def test_a_run_started_while_another_holds_the_project_is_refused_and_removes_nothing(
    projects: dict[str, Path],
) -> None:
    """`dvc repro --force` while a flow holds the project: refused at the check stage, which deletes
    nothing (its record persists), so every output, dvc.lock and the registry stay as they were."""
    from char_rnn.lock import project_lock

    root = projects["reference"]
    files = [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts and ".dvc" not in p.parts]
    before = {p: p.read_bytes() for p in files if p.name != "mlflow.db"}
    client = mlflow_client(root)
    versions = [(v.version, v.run_id) for v in client.search_model_versions("name='char-rnn-seed'")]
    with project_lock(Layout(root).lock, "flow run test-holder"):
        repro = dvc_repro(root, "--force")
        output = repro.communicate(timeout=300)[0]
    assert repro.returncode != 0
    [line] = [line for line in output.splitlines() if "another run" in line]
    assert "another run is using this project (flow run test-holder, pid" in line, output
    assert {p: p.read_bytes() for p in before} == before
    assert [(v.version, v.run_id) for v in client.search_model_versions("name='char-rnn-seed'")] == versions


def test_a_new_store_opened_by_several_processes_at_once_is_created_once(tmp_path: Path) -> None:
    """Sweep trials, or serve and train, opening a project's fresh SQLite store at the same moment."""
    opener = "import sys, pathlib; from char_rnn.tracking import connect; print(connect(pathlib.Path(sys.argv[1])))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", opener, str(tmp_path / "mlruns")],
            env=env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = [(p.communicate(timeout=300), p.returncode) for p in processes]
    assert all(code == 0 for _, code in results), [err for (_, err), _ in results]
    assert len({out for (out, _), _ in results}) == 1  # one experiment, the same id for all
    assert [e.name for e in mlflow_client(tmp_path).search_experiments()] == ["char-rnn", "Default"]


def test_a_full_disk_fails_each_stage_in_one_line_and_keeps_every_earlier_output(projects: dict[str, Path]) -> None:
    """Every stage rerun under a 16-byte file-size limit (writes fail as on a full disk, EFBIG): each
    fails at once with one line, and every output of the finished run, and dvc.lock, stay whole."""
    import resource

    from char_rnn.stages import STAGES

    root = projects["reference"]
    kept = [p for p in root.rglob("*") if p.is_file() and not {".git", ".dvc", "mlruns", "checkpoints"} & set(p.parts)]
    before = {p: p.read_bytes() for p in kept}
    for stage in STAGES:
        started = time.monotonic()
        failed = subprocess.run(
            [str(Path(sys.executable).parent / "char-rnn"), stage.name],
            cwd=root,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16)),
        )
        assert failed.returncode == 1, (stage.name, failed.stdout, failed.stderr)
        assert failed.stderr.splitlines()[-1].startswith("error: could not write"), (stage.name, failed.stderr)
        assert "Traceback" not in failed.stderr, (stage.name, failed.stderr)
        assert time.monotonic() - started < 120, f"{stage.name} took too long to fail: a retry loop?"
        assert {p: p.read_bytes() for p in kept} == before, stage.name
        assert not list(root.rglob("*partial*")), stage.name
