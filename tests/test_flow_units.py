"""The flow's pieces that need no server: retry classification, params resolution, how a stage run
through DVC fails (budget, kill, its own error, a transient one), the task graph, the lock a flow lends
its stages, declared dependencies."""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from harness import GIT_IDENTITY, QUIET

from char_rnn.layout import Layout
from char_rnn.params import Params, ParamsError, load_params
from char_rnn.training import TrainingDiverged
from char_rnn.validation import ValidationFailed
from conftest import REPO
from pipelines.failures import StageError, TransientError, is_transient
from pipelines.flow import resolve_params, stage_graph
from pipelines.versioning import DvcRefused, StageCrashed, StageKilled, StageTimedOut, reproduce, write_params


@pytest.mark.parametrize(
    "exc",
    [
        ValidationFailed("x"),
        TrainingDiverged("x"),
        ParamsError("x"),
        StageTimedOut("x"),
        FileNotFoundError("data/corpus.txt"),
        KeyError("x"),
        ValueError("database is fine"),
    ],
)
def test_user_errors_and_bugs_are_not_retried(exc: Exception) -> None:
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database is locked"),
        ConnectionResetError(),
        TimeoutError(),
        RuntimeError("ERROR: Unable to acquire lock"),
        TransientError("dvc commit: busy"),
    ],
)
def test_transient_errors_are_retried(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS])
def test_a_write_the_machine_refuses_for_good_is_not_retried_and_says_so_in_one_line(code: int) -> None:
    """A full disk, a file-size or quota limit, a read-only file system: a retry meets the same refusal.
    (A real flow run on a full disk: tests/test_flow.py.)"""
    from pipelines.failures import machine_fault, one_line

    path = "/srv/project/models/model.keras"
    try:  # as `write_atomically` raises it: naming the file, from the write's own error
        raise OSError(code, os.strerror(code), path) from OSError(code, os.strerror(code))
    except OSError as refused:
        assert not is_transient(refused) and not is_transient(refused.__cause__)
        assert one_line(machine_fault(refused)).startswith(f"MachineFault: could not write {path}: {os.strerror(code)}")
    full = sqlite3.OperationalError("database or disk is full")  # SQLite's own words, as MLflow passes them on
    assert not is_transient(full) and one_line(machine_fault(full)).startswith("MachineFault: could not write")
    assert machine_fault(sqlite3.OperationalError("database is locked")) is None


def test_overrides_are_validated_like_params_yaml(layout: Layout) -> None:
    assert resolve_params(layout, {"train.epochs": 2}).train.epochs == 2
    with pytest.raises(ParamsError, match="train.epochs"):
        resolve_params(layout, {"train.epochs": 0})


def test_run_params_are_written_into_params_yaml_as_dvc_exp_run_set_param_writes_them(
    layout: Layout, tiny_params: Params, tmp_path: Path
) -> None:
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` runs

    before = layout.params.read_text(encoding="utf-8")
    assert write_params(layout, tiny_params) == ["evaluate.sample_length", "train.epochs"]
    assert load_params(layout.params) == tiny_params
    by_dvc = tmp_path / "by-dvc" / "params.yaml"
    by_dvc.parent.mkdir()
    by_dvc.write_text(before, encoding="utf-8")
    apply_overrides(str(by_dvc), ["train.epochs=3", "evaluate.sample_length=5"])
    after = layout.params.read_text(encoding="utf-8")
    assert after == by_dvc.read_text(encoding="utf-8")
    changed = [new for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new]
    assert [line.split("#")[0].strip() for line in changed] == ["epochs: 3", "sample_length: 5"]
    assert write_params(layout, tiny_params) == []


def test_a_failure_reads_as_one_line_naming_its_kind() -> None:
    from char_rnn.validation import ValidationFailed
    from pipelines.failures import one_line

    assert one_line(ValidationFailed("validation failed:\n  corpus: a\n  windows: b")) == (
        "ValidationFailed: validation failed: corpus: a; windows: b"
    )
    assert one_line(StageError("loss is NaN at epoch 3")) == "loss is NaN at epoch 3"  # the stage's own line


def test_the_run_report_gives_one_figure_per_model_a_working_link_and_the_changed_params(layout: Layout) -> None:
    from pipelines.publish import outcome, report

    gate = {"figure": "bits/char", "candidate": 2.5, "champion": 2.75, "champion_version": "1", "ngram": 3.25,
            "reason": "2.5000 vs v1's 2.7500 bits/char (n-gram 3.2500), -9.09 %: better"}  # fmt: skip
    record = {"model_name": "char-rnn-x", "version": "2", "alias": "champion", "metric": "test/bits_per_char",
              "value": 2.5, "already_registered": False, "gate": gate}  # fmt: skip
    layout.registration.parent.mkdir(parents=True)
    layout.registration.write_text(json.dumps(record), encoding="utf-8")
    results = {"train": {"how": "ran", "summary": "3 epochs; MLflow run 'x': http://127.0.0.1:5000/#/r"},
               "register": {"how": "ran", "summary": "char-rnn-x version 2 is champion"}}  # fmt: skip
    said = outcome(results, layout)
    assert said == f"char-rnn-x version 2 is champion: {gate['reason']}"
    markdown = report(results, said, {"train.epochs": (100, 3)}, layout)
    rows = [line for line in markdown.splitlines() if re.fullmatch(r"\| .+ \| \d+\.\d{4} \|", line)]
    assert rows == ["| this run: char-rnn-x version 2 | 2.5000 |", "| champion: version 1 | 2.7500 |",
                    "| n-gram baseline | 3.2500 |"]  # fmt: skip
    assert "(http://127.0.0.1:5000/#/models/char-rnn-x/versions/2?workflowType=machine_learning)" in markdown
    assert (
        "start its UI with `make ui` first" in markdown and "[the training run](http://127.0.0.1:5000/#/r)" in markdown
    )
    assert "| `train.epochs` | 100 | 3 |" in markdown and "| train | ran |" in markdown
    skipped = {name: {"how": "skipped"} for name in ("train", "register")}
    assert outcome(skipped, layout).startswith("up to date: nothing changed")
    assert outcome({**skipped, "check": {"how": "ran"}}, layout).startswith("nothing registered: the model and")


def test_the_task_graph_is_dvc_yaml_s_graph() -> None:
    """Each task waits for the stages whose outputs it reads (not all of them for check)."""
    graph = stage_graph(REPO)
    assert list(graph) == ["check", "ingest", "window", "validate", "drift", "baseline", "train", "tune", "refit",
                           "evaluate", "register"]  # fmt: skip
    assert graph["check"] == [] and graph["ingest"] == ["check"] and graph["baseline"] == ["window"]
    assert set(graph["train"]) == {"ingest", "window", "validate", "drift"} and graph["refit"] == ["window", "train"]
    assert graph["drift"] == ["ingest", "window"]  # beside validate and baseline, before training
    assert set(graph["evaluate"]) == {"window", "baseline", "tune", "refit", "train"}
    assert set(graph["register"]) == {"ingest", "window", "baseline", "tune", "refit", "train", "evaluate"}


FAILING_STAGES = {  # stage: its command's Python code
    "slow": "import time; time.sleep(120)",
    "told": "import sys; print('error: validation failed:\\n  corpus: bad', file=sys.stderr); sys.exit(1)",
    "locked": "import sqlite3; raise sqlite3.OperationalError('database is locked')",
    "buggy": "raise KeyError('x')",
    "killed": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "fine": "print('fine: all good')",
}


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """A git + DVC project whose stages fail in each way a real stage can."""
    root = tmp_path_factory.mktemp("stages")
    for name, code in FAILING_STAGES.items():
        (root / f"{name}.py").write_text(code + "\n", encoding="utf-8")
    stages = {name: {"cmd": f"{sys.executable} {name}.py", "deps": [f"{name}.py"]} for name in FAILING_STAGES}
    stages["unmade"] = {"cmd": f"{sys.executable} fine.py", "deps": ["never-made.txt"]}  # DVC refuses it
    (root / "dvc.yaml").write_text(json.dumps({"stages": stages}), encoding="utf-8")
    env = {**os.environ, **QUIET, **GIT_IDENTITY}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    return Layout(root)


def test_a_stage_past_its_budget_is_stopped_and_not_retried(dvc_project: Layout) -> None:

    start = time.monotonic()
    run = reproduce(dvc_project, "slow", timeout_s=2, run_env={})
    assert isinstance(run.error, StageTimedOut) and "budget of 2 s" in str(run.error), run.error
    assert time.monotonic() - start < 15 and not is_transient(run.error)
    assert not [
        p for p in __import__("psutil").Process().children(recursive=True) if "sleep(120)" in " ".join(p.cmdline())
    ]


def test_a_stage_s_failure_is_classified_from_its_own_output(dvc_project: Layout) -> None:
    """Its `error:` line: one line, never retried; a transient traceback: retried; any other: a bug;
    DVC refusing to run it: DVC's reason, one line; a stage that succeeds:
    its summary line."""
    told = reproduce(dvc_project, "told", 60, {}).error
    assert isinstance(told, StageError) and not is_transient(told)
    assert str(told) == "validation failed: corpus: bad"
    assert is_transient(reproduce(dvc_project, "locked", 60, {}).error)
    buggy = reproduce(dvc_project, "buggy", 60, {}).error
    assert isinstance(buggy, StageCrashed) and "KeyError: 'x'" in str(buggy) and not is_transient(buggy)
    refused = reproduce(dvc_project, "unmade", 60, {}).error  # no stage command ran: DVC said why
    assert isinstance(refused, DvcRefused) and "never-made.txt" in str(refused) and not is_transient(refused)
    fine = reproduce(dvc_project, "fine", 60, {})
    assert fine.error is None and fine.how == "ran" and fine.summary == "all good"
    assert reproduce(dvc_project, "fine", 60, {}).how == "skipped"  # DVC's decision: nothing changed


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash", None])
def test_a_killed_stage_is_said_killed_whichever_shell_dvc_runs_it_in(
    dvc_project: Layout, shell: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVC runs a stage through $SHELL, /bin/sh where it is unset (CI): dash reports its child's
    SIGKILL as exit 137 after printing "Killed", bash as -9; both are a kill, neither a crash."""
    if shell is None:
        monkeypatch.delenv("SHELL", raising=False)
    else:
        monkeypatch.setenv("SHELL", shell)
    killed = reproduce(dvc_project, "killed", 60, {}).error
    assert isinstance(killed, StageKilled) and str(killed) == "char-rnn killed was killed by SIGKILL", killed
    assert not is_transient(killed)


LOCKED_STAGE = """
import sys, time
from pathlib import Path
from char_rnn.lock import project_lock
with project_lock(Path(sys.argv[1]), "char-rnn train"):
    print("running", flush=True)
    time.sleep(60)
"""


def test_a_flow_s_stages_run_under_its_lock_and_stop_when_it_is_gone(tmp_path: Path) -> None:
    """Its ticket lets the flow's own stage commands in, nobody else; a stage whose flow died stops itself,
    also when another run holds the lock by then."""
    from char_rnn.lock import RUN_TICKET, ProjectBusy, project_lock

    lock = tmp_path / ".char-rnn.lock"
    flow = LOCKED_STAGE.replace('"char-rnn train"', '"flow run x", ticket="t"')
    holder = subprocess.Popen([sys.executable, "-c", flow, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "running\n"

    def stage(ticket: str | None) -> subprocess.Popen:
        env = {**os.environ, **({RUN_TICKET: ticket} if ticket else {})}
        return subprocess.Popen([sys.executable, "-c", LOCKED_STAGE, str(lock)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    for refused in (stage(None), stage("other")):
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 1 and "ProjectBusy" in err, err
    with pytest.raises(ProjectBusy, match=r"flow run x, pid \d+"), project_lock(lock, "char-rnn check"):
        pass
    ours = stage("t")
    assert ours.stdout.readline() == "running\n"
    holder.kill()
    holder.wait()
    # Another run takes the project at once, most likely within the stage's one-second poll: the lock
    # is held again, but not by the run that started the stage, which stops all the same.
    successor = subprocess.Popen([sys.executable, "-c", flow.replace('ticket="t"', 'ticket="u"'), str(lock)],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert successor.stdout.readline() == "running\n"
        assert ours.wait(timeout=15) == -signal.SIGTERM
    finally:
        successor.kill()
        successor.wait()


def test_every_package_the_code_imports_is_a_declared_dependency() -> None:
    """`pip install .` must bring what `char_rnn` and the drivers import, not leave it to another package's
    dependencies (psutil came with MLflow until it was declared)."""
    from importlib import metadata

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [requirement for extra in project["optional-dependencies"].values() for requirement in extra]
    declared = {_canonical(re.match(r"[A-Za-z0-9._-]+", req)[0]) for req in [*project["dependencies"], *extras]}
    imported: set[str] = set()
    for path in [*(REPO / "src" / "char_rnn").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "char_rnn", "pipelines"}
    providers = metadata.packages_distributions()
    undeclared = sorted(top for top in third_party if not {_canonical(d) for d in providers.get(top, [])} & declared)
    assert undeclared == [], "imported but not in pyproject.toml's dependencies"
    assert {"psutil", "dvc", "h5py", "mlflow"} <= third_party  # the premise: the walk finds the imports


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_a_flow_is_refused_beside_a_dvc_exp_run_or_repro_anywhere_in_the_project(tmp_path: Path) -> None:
    """Between two of their stages neither holds the project's lock: the flow finds the process itself,
    from a subfolder of the project too, and only this project's."""
    from char_rnn.lock import ProjectBusy
    from pipelines.versioning import refuse_while_dvc_runs

    root, elsewhere = tmp_path / "project", tmp_path / "other"
    (root / "src").mkdir(parents=True)
    elsewhere.mkdir()
    dvc = tmp_path / "bin" / "dvc"  # a process that looks like DVC to `ps`: its name and arguments
    dvc.parent.mkdir()
    dvc.write_text("#!/bin/sh\nsleep 60\n")
    dvc.chmod(0o755)
    for args, cwd, refused in (
        (["exp", "run", "--temp"], root / "src", "dvc exp run"),
        (["repro"], root, "dvc repro"),
        (["exp", "run"], elsewhere, None),
        (["exp", "show"], root, None),
    ):
        process = subprocess.Popen([str(dvc), *args], cwd=cwd)
        try:
            time.sleep(0.2)  # exec'd: ps shows its arguments
            if refused:
                with pytest.raises(ProjectBusy, match=rf"\({refused}, pid {process.pid}\)"):
                    refuse_while_dvc_runs(Layout(root))
            else:
                refuse_while_dvc_runs(Layout(root))
        finally:
            process.kill()
            process.wait()
