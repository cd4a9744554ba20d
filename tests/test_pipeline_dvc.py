"""The whole pipeline through real `dvc` in a temporary git repository: DVC is the record.

One project for the module, in order: `dvc repro` reproduces the blog; refused changes remove nothing;
going back to params already run restores them from DVC's run-cache without training or a second
version; and a fresh clone + `dvc pull` has every output, a clean status and a working model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from char_rnn.stages import STAGES
from conftest import BIN, REPO

pytestmark = pytest.mark.integration

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
OUTPUT_FOLDERS = ("data", "models", "reports")


def sh(*args: str, cwd: Path, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def outputs(root: Path) -> dict[str, str]:
    """md5 of every file the pipeline wrote (and of dvc.lock): what a refused change must not touch."""
    files = [p for folder in OUTPUT_FOLDERS for p in (root / folder).rglob("*") if p.is_file() and "raw" not in p.parts]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in [*files, root / "dvc.lock"]}


def edit_params(root: Path, section: str, key: str, value: object, drop: str | None = None) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    if drop:
        del params[section][drop]
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def versions(root: Path) -> list[int]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return sorted(int(v.version) for v in client.search_model_versions("name='char-rnn-seed'"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree's pipeline files in a fresh git + DVC repository with a local remote; one `dvc repro`."""
    root = tmp_path_factory.mktemp("dvc") / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "mlruns/.gitignore", "data/raw/.gitkeep"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "remote", "add", "-d", "shared", str(root.parent / "remote"), cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "pipeline", cwd=root)
    first = sh("dvc", "repro", cwd=root)
    (root.parent / "first-repro.log").write_text(first.stdout, encoding="utf-8")
    return root


def test_dvc_repro_reproduces_the_blog_and_then_runs_nothing(project: Path) -> None:
    import mlflow

    ran = ran_stages((project.parent / "first-repro.log").read_text(encoding="utf-8"))
    assert sorted(ran) == sorted(stage.name for stage in STAGES)
    assert (ran[0], ran[-1]) == ("check", "register") and ran.index("train") < ran.index("tune")
    metrics = json.loads((project / "reports" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] >= 0.98 and metrics["epochs"] == 100
    assert f"{metrics['accuracy']:.5f}" in sh("dvc", "metrics", "show", cwd=project).stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("char-rnn").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 100
    artifacts = {a.path for folder in ("reports", "data") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"reports/loss_accuracy.png", "reports/metrics.json", "data/validation.json"} <= artifacts
    champion = client.get_model_version_by_alias("char-rnn-seed", "champion")
    assert champion.version == 1 and champion.run_id == run.info.run_id
    assert ran_stages(sh("dvc", "repro", cwd=project).stdout) == []
    assert "up to date" in sh("dvc", "status", cwd=project).stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("train", "epochs", 0, None), "train.epochs: Input should be greater than or equal to 1 (got 0)"),
        (
            ("window", "lenght", 20, "length"),
            "window.lenght: Extra inputs are not permitted (got 20) (did you mean window.length?)",
        ),
        (("corpus", "source", "data/raw/missing.txt", None), "neither one of seed, kolaw, kobill, kolaw+kobill"),
        (("corpus", "source", "data/raw/cp949.txt", None), "not valid UTF-8: byte 0xc7 at offset 0"),
    ],
    ids=["bad-train-param", "misspelt-window-key", "missing-corpus", "non-utf8-corpus"],
)
def test_a_refused_change_removes_nothing(project: Path, change: tuple, message: str) -> None:
    before, status, registered = outputs(project), sh("dvc", "status", cwd=project).stdout, versions(project)
    params = (project / "params.yaml").read_bytes()
    (project / "data" / "raw" / "cp949.txt").write_bytes("한국어".encode("cp949"))
    edit_params(project, *change)
    try:
        refused = sh("dvc", "repro", cwd=project, ok=False)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
        if change[-1]:  # a misspelt key: DVC would only have said that the right one is missing
            assert f"{change[0]}.{change[-1]}: Field required" in refused.stderr
        assert ran_stages(refused.stdout) == ["check"]
        assert outputs(project) == before
        assert versions(project) == registered
    finally:
        (project / "params.yaml").write_bytes(params)
        (project / "data" / "raw" / "cp949.txt").unlink()
    assert sh("dvc", "status", cwd=project).stdout == status


def test_going_back_to_params_already_run_restores_them_without_training(project: Path) -> None:
    model = (project / "models" / "model.keras").read_bytes()
    edit_params(project, "train", "epochs", 5)
    changed = ran_stages(sh("dvc", "repro", cwd=project).stdout)
    assert sorted(changed) == sorted(["check", "train", "tune", "refit", "evaluate", "register"])
    assert versions(project) == [1, 2]
    edit_params(project, "train", "epochs", 100)
    back = sh("dvc", "repro", cwd=project)
    # The rest came back from the run-cache, except the registration, which the store is asked for.
    assert ran_stages(back.stdout) == ["check", "register"], back.stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in back.stdout
    assert (project / "models" / "model.keras").read_bytes() == model
    registration = json.loads((project / "reports" / "registration.json").read_text())
    assert (registration["version"], registration["already_registered"]) == ("1", True)
    assert versions(project) == [1, 2]
    assert "up to date" in sh("dvc", "status", cwd=project).stdout


def test_a_fresh_clone_pulls_every_output_and_runs_nothing(project: Path) -> None:
    sh("dvc", "push", "--run-cache", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "run", cwd=project)
    assert sh("git", "status", "--porcelain", cwd=project).stdout == ""
    clone = project.parent / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=project.parent)
    pulled = sh("dvc", "pull", cwd=clone)
    assert "up to date" in sh("dvc", "status", cwd=clone).stdout, pulled.stdout
    assert outputs(clone) == outputs(project)
    assert ran_stages(sh("dvc", "repro", cwd=clone).stdout) == []
    assert "accuracy" in sh("dvc", "metrics", "show", cwd=clone).stdout
    sh("dvc", "plots", "show", cwd=clone)
    assert "the scored model, per epoch" in (clone / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    drawn = json.loads(sh("dvc", "plots", "diff", "--json", cwd=clone).stdout)["data"]
    files = [plot_id.split("::")[-1] for plot_id in drawn]  # `dvc.yaml::<file>` when dvc.yaml defines it
    assert sorted(files) == ["reports/fit_history.csv", "reports/history.csv", "reports/loss_accuracy.png"]
    generated = sh(
        "char-rnn",
        "generate",
        "-m",
        "models/model.keras",
        "--vocab",
        "data/vocab.json",
        "-p",
        "알엔엔 으로",
        "--length",
        "10",
        "--temperature",
        "0",
        cwd=clone,
    )
    blog = (REPO / "src" / "char_rnn" / "seed.txt").read_text(encoding="utf-8")
    assert generated.stdout.rstrip("\n") == blog[: len("알엔엔 으로") + 10]
    # The pulled run id belongs to the first clone's MLflow store: later stages continue it in this one.
    edit_params(clone, "evaluate", "prompt", "알엔엔")  # read by evaluate and register
    assert sorted(ran_stages(sh("dvc", "repro", cwd=clone).stdout)) == ["check", "evaluate", "register"]
    assert versions(clone) == [1]


def readme_command(start: str) -> list[str]:
    """The README's command line that starts with `start` (continued lines joined), as argv."""
    import shlex

    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    command = lines[first]
    while command.endswith("\\"):
        first += 1
        command = command[:-1] + lines[first]
    return shlex.split(command)


def test_queued_experiments_log_and_register_in_the_project_store(project: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    before = versions(project)
    for epochs in (2, 3):
        sh("dvc", "exp", "run", "--queue", "-S", f"train.epochs={epochs}", "-n", f"quick-{epochs}", cwd=project)
    sh("dvc", "queue", "start", "-j", "2", cwd=project)
    try:
        for _ in range(300):
            status = sh("dvc", "queue", "status", cwd=project).stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(1)
    finally:
        sh("dvc", "queue", "stop", "--kill", cwd=project, ok=False)
    assert status.count("Success") == 2, status
    # Each experiment ran in a copy that DVC deleted, and logged and registered here all the same.
    registered = {v.tags.get("dvc.exp_name"): v for v in client.search_model_versions("name='char-rnn-seed'")}
    assert set(registered) - {None} == {"quick-2", "quick-3"} and len(versions(project)) == len(before) + 2
    for name, version in registered.items():
        if name:
            run = client.get_run(version.run_id)
            assert run.info.run_name.startswith(f"exp {name} · ")
            assert run.data.tags["dvc.exp_name"] == name and run.data.tags["dvc.exp_baseline_rev"]
    # The README's view: the experiments, the param that differs, the headline figure, at 120 columns.
    shown = sh(*readme_command("dvc exp show"), "--no-pager", cwd=project, env={"COLUMNS": "120"}).stdout
    assert all(len(line) <= 120 for line in shown.splitlines())
    header = next(line for line in shown.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", "bits_per_char", "train.epochs"], shown
    assert "[quick-2]" in shown and "[quick-3]" in shown and "…" not in shown
    # Applied and reproduced: nothing reruns, and the record names the version the experiment registered.
    sh("dvc", "exp", "apply", "quick-3", cwd=project)
    assert ran_stages(sh("dvc", "repro", cwd=project).stdout) == []
    record = json.loads((project / "reports" / "registration.json").read_text(encoding="utf-8"))
    assert record["version"] == str(registered["quick-3"].version)
