"""The team setup end to end on loopback: README's "Team setup" commands run as written, then a nightly
run through the work pool's worker, a sweep on the Dask cluster, and two registrations at once.

`benchmarks/team_services.py` stands in PostgreSQL, a moto S3 server and a bare git repository for what a
team already runs, and starts the rest with README's commands (MLflow server on them, Prefect server, work
pool, deployment, worker, Dask scheduler and two workers). The last test stops everything and finds no
process left behind.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.team_services import Team, free_port, http_ok, team_services, wait_for
from char_rnn.layout import Layout
from conftest import REPO, assert_one_champion_the_better, register_at_once

pytestmark = pytest.mark.integration

MODEL = "char-rnn-ko"
EPOCHS = 3
SPEC = {"max_parallel": 2, "grid": {"model.units": [8, 16], "model.cell": ["gru"]}}


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    with team_services() as running:
        yield running


@pytest.fixture(scope="module")
def nightly(team: Team) -> dict[str, Any]:
    """README's trigger of the nightly deployment (a few epochs), waited for; what it left in MLflow."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    overrides = json.dumps({"overrides": {"train.epochs": EPOCHS}})
    printed = team.sh(f"prefect deployment run char-rnn/nightly --params '{overrides}'").stdout
    flow_run_id = re.search(r"UUID: (\S+)", printed).group(1)
    with temporary_settings({PREFECT_API_URL: team.url("PREFECT_API_URL")}), get_client(sync_client=True) as client:
        wait_for(lambda: client.read_flow_run(flow_run_id).state.is_final(), "the nightly run", timeout_s=900)
        flow_run = client.read_flow_run(flow_run_id)
        logs: list[str] = []
        wait_for(lambda: any("code: " in line for line in _logs(client, flow_run_id, logs)), "its logs", 60)
        deployment = client.read_deployment_by_name("char-rnn/nightly")
    assert flow_run.state.is_completed(), f"{flow_run.state.message}\n{team.log('prefect worker start')[-5000:]}"
    mlflow = MlflowClient(tracking_uri=team.url("MLFLOW_TRACKING_URI"))
    version = mlflow.get_model_version_by_alias(MODEL, "champion")
    return {"flow_run": flow_run, "logs": logs, "deployment": deployment, "version": version, "mlflow": mlflow}


def _logs(client: Any, flow_run_id: str, into: list[str]) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    into[:] = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
    return into


def _postgres(team: Team, query: str, *args: Any) -> list[tuple]:
    import psycopg

    env = team.env
    with psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], dbname="mlflow") as db:
        return db.execute(query, args).fetchall()


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_the_run_its_epochs_and_the_champion_are_rows_in_postgres(team: Team, nightly: dict[str, Any]) -> None:
    version = nightly["version"]
    (status,) = _postgres(team, "select status from runs where run_uuid = %s", version.run_id)
    assert status == ("FINISHED",)
    steps = _postgres(team, "select step from metrics where run_uuid = %s and key = 'train/loss' order by step",
                      version.run_id)  # fmt: skip
    assert [step for (step,) in steps] == list(range(1, EPOCHS + 1))
    aliases = _postgres(team, "select alias, version from registered_model_aliases where name = %s", MODEL)
    assert ("champion", int(version.version)) in aliases
    tags = dict(_postgres(team, "select key, value from model_version_tags where name = %s and version = %s",
                          MODEL, int(version.version)))  # fmt: skip
    assert tags["prefect.deployment"] == "nightly" and tags["prefect.flow_run_id"] == str(nightly["flow_run"].id)
    assert tags["run_branch"].startswith("runs/") and len(tags["model_sha256"]) == 64


def test_the_models_artifacts_are_objects_in_the_bucket(team: Team, nightly: dict[str, Any]) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=team.env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id=team.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=team.secret)  # fmt: skip
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=team.env["CHAR_RNN_BUCKET"])
    keys = {item["Key"] for page in pages for item in page.get("Contents", [])}
    logged = nightly["version"].source.removeprefix("models:/")  # m-<id>: the registered generator
    mine = {key.rsplit("/", 1)[-1] for key in keys if key.startswith("mlflow/") and f"/models/{logged}/" in key}
    assert {"MLmodel", "model.keras", "vocab.json"} <= mine
    model_md5 = nightly["version"].tags["model_md5"]
    assert f"dvc/files/md5/{model_md5[:2]}/{model_md5[2:]}" in keys  # dvc push from the worker's clone


def test_the_worker_ran_the_code_it_cloned_and_pushed_its_run_branch(team: Team, nightly: dict[str, Any]) -> None:
    line = next(line for line in nightly["logs"] if line.startswith("code: "))
    clone, code = re.fullmatch(r"code: pipelines from (\S+), char_rnn from (\S+)", line).groups()
    assert Path(code) == Path(clone) / "src" / "char_rnn" != REPO / "src" / "char_rnn"
    assert not Path(clone).exists(), "the worker's temporary clone is gone: only what it pushed is left"
    branch = nightly["version"].tags["run_branch"]
    assert _git(team.origin, "log", "-1", "--format=%an", branch) == "char-rnn worker"  # the job variables' identity
    changed = _git(team.origin, "diff", "--name-only", "main", branch).splitlines()
    assert "dvc.lock" in changed and "params.yaml" in changed
    assert all(name in ("dvc.lock", "params.yaml") or name.startswith("reports/") for name in changed), changed


def test_a_fresh_clone_pulls_exactly_the_registered_model(team: Team, nightly: dict[str, Any], tmp_path: Path) -> None:
    version, fresh = nightly["version"], tmp_path / "fresh"
    _git(tmp_path, "clone", "-q", str(team.origin), str(fresh))
    team.sh(f"git fetch -q origin && git switch -q {version.tags['run_branch']} && dvc pull -q", cwd=fresh)
    lock = yaml.safe_load((fresh / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert lock["train"]["params"]["params.yaml"]["train"]["epochs"] == EPOCHS
    model = Layout(fresh).model.read_bytes()
    assert hashlib.sha256(model).hexdigest() == version.tags["model_sha256"]
    assert hashlib.md5(model).hexdigest() == version.tags["model_md5"]
    assert json.loads(team.sh("dvc status --json", cwd=fresh).stdout) == {}
    assert _git(fresh, "status", "--porcelain") == ""


def test_no_secret_lands_in_git_or_the_deployment(team: Team, nightly: dict[str, Any]) -> None:
    secrets = (team.secret, team.env["AWS_ACCESS_KEY_ID"])
    commits = _git(team.origin, "rev-list", "--all").split()
    found = subprocess.run(["git", "grep", "-I", "-F", *(f"-e{s}" for s in secrets), *commits], cwd=team.origin,
                           capture_output=True, text=True)  # fmt: skip
    assert found.returncode == 1 and found.stdout == "", found.stdout  # 1: no match anywhere in any commit
    assert "team-secret" not in nightly["deployment"].model_dump_json()
    assert _git(team.checkout, "check-ignore", ".dvc/config.local") == ".dvc/config.local"


def test_the_champion_serves_with_the_tracking_uri_alone(team: Team, nightly: dict[str, Any]) -> None:
    keep = ("PATH", "HOME", "LANG", "TEAM_SERVICES_RUN", "TF_CPP_MIN_LOG_LEVEL", "GIT_CONFIG_GLOBAL")
    env = {key: team.env[key] for key in keep if key in team.env}
    env["MLFLOW_TRACKING_URI"] = team.url("MLFLOW_TRACKING_URI")  # no AWS_*, no database: the server proxies
    generated = subprocess.run(["char-rnn", "generate", "--prompt", "알엔엔 으로", "--length", "8", "--temperature", "0"],
                               env=env, cwd=team.base, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-3000:]
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    team.spawn("models serve", serve, team.base, env)
    wait_for(
        lambda: http_ok(f"http://127.0.0.1:{port}/ping"), "mlflow models serve", alive=team.processes["models serve"]
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"dataframe_records": [{"prompt": "알엔엔 으로", "length": 8, "temperature": 0}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert len(json.loads(response.read())["predictions"][0]["text"]) == 8


def test_a_sweep_on_the_dask_cluster_logs_to_the_team_server_as_the_thread_runner_would(
    team: Team, tmp_path: Path
) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    alone = tmp_path / "alone"  # the same sweep on one machine: thread runner, its own SQLite store
    _git(tmp_path, "clone", "-q", str(team.origin), str(alone))
    sweep = f"python -m pipelines sweep --spec {spec} --set train.epochs=2 --sweep-id"
    with ThreadPoolExecutor(2) as both:
        on_dask = both.submit(team.sh, f'{sweep} on-dask --dask "$DASK_SCHEDULER"')
        threads = both.submit(team.sh, f"{sweep} threads", alone, MLFLOW_TRACKING_URI=f"sqlite:///{alone}/mlflow.db")
        dask_rows, thread_rows = (_trials(future.result().stdout) for future in (on_dask, threads))
    assert {row["trial"]: row["bits_per_char"] for row in dask_rows} == {
        row["trial"]: row["bits_per_char"] for row in thread_rows
    }
    assert [row["status"] for row in dask_rows] == ["ok", "ok"]
    mlflow = __import__("mlflow").MlflowClient(tracking_uri=team.url("MLFLOW_TRACKING_URI"))
    experiment = mlflow.get_experiment_by_name("char-rnn").experiment_id
    logged = mlflow.search_runs([experiment], "tags.`sweep.id` = 'on-dask' and tags.`sweep.trial` != ''")
    assert {run.info.run_id for run in logged} == {row["run_id"] for row in dask_rows}
    assert all(run.info.status == "FINISHED" for run in logged)
    ran_on = team.log("dask worker")
    assert all(f"trial-{index}" in ran_on for index in range(2)), "the trials ran on the Dask workers"


def _trials(printed: str) -> list[dict[str, Any]]:
    """The sweep command prints its state, then its result as JSON."""
    return json.loads(printed[printed.index("{") :])["trials"]


def test_two_registrations_at_once_on_the_team_server(team: Team, racers: list[Layout]) -> None:
    uri = team.url("MLFLOW_TRACKING_URI")
    assert_one_champion_the_better(register_at_once(racers, uri), racers, uri)


def test_everything_stops_and_no_process_is_left_behind(team: Team) -> None:
    team.stop()
    assert team.leftovers() == []
    assert not any(http_ok_quietly(team.url(name)) for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"))


def http_ok_quietly(url: str) -> bool:
    try:
        return http_ok(url + "/health")
    except OSError:
        return False
