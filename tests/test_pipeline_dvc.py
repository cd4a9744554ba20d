"""The whole pipeline through real `dvc` in a temporary git repository, on the blog's defaults."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO

from char_rnn.stages import STAGES

pytestmark = pytest.mark.integration

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The working tree's pipeline files in a fresh git + DVC repository, with a local DVC remote."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / ".gitkeep").touch()
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    sh("dvc", "remote", "add", "-d", "local", str(tmp_path.parent / "remote"), cwd=tmp_path)
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "commit", "-qm", "pipeline", cwd=tmp_path)
    return tmp_path


def test_dvc_repro_reproduces_the_blog_and_reruns_only_what_changed(project: Path):
    import mlflow

    first = sh("dvc", "repro", cwd=project)
    ran = ran_stages(first.stdout)
    assert sorted(ran) == sorted(stage.name for stage in STAGES)
    assert (
        ran.index("validate") < ran.index("train") < ran.index("tune") < ran.index("evaluate") < ran.index("register")
    )
    metrics = json.loads((project / "reports" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] >= 0.98 and metrics["epochs"] == 100
    shown = sh("dvc", "metrics", "show", cwd=project).stdout
    assert f"{metrics['accuracy']:.5f}" in shown

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("char-rnn").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 100
    assert len(client.get_metric_history(run.info.run_id, "accuracy")) == 100
    artifacts = {a.path for folder in ("reports", "data") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"reports/loss_accuracy.png", "reports/metrics.json", "data/validation.json"} <= artifacts
    champion = client.get_model_version_by_alias("char-rnn-ko", "champion")
    assert champion.version == 1 and champion.run_id == run.info.run_id

    assert ran_stages(sh("dvc", "repro", cwd=project).stdout) == []
    assert "up to date" in sh("dvc", "status", cwd=project).stdout
    sh("dvc", "push", cwd=project)
    assert any((project.parent / "remote").rglob("*"))

    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["epochs"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    rerun = ran_stages(sh("dvc", "repro", cwd=project).stdout)
    assert sorted(rerun) == sorted(["train", "tune", "refit", "evaluate", "register"])
    assert (rerun[0], rerun[-1]) == ("train", "register")
    assert client.get_model_version_by_alias("char-rnn-ko", "champion").version == 1
    assert client.get_model_version_by_alias("char-rnn-ko", "challenger").version == 2
