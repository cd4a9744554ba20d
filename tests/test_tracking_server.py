"""The stages against a real `mlflow server` on 127.0.0.1, as a team would share one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from char_rnn import stages
from conftest import free_port, run_cli

pytestmark = pytest.mark.integration


class MlflowServer:
    """`mlflow server` on a free loopback port, over a SQLite store in `folder`; stopped and started
    again on the same port and store, as an operator restarting it would."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder, self.process = free_port(), folder, None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
                   "--default-artifact-root", (self.folder / "server-artifacts").as_uri()]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start on {self.url}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def test_pipeline_logs_and_registers_through_a_tracking_server(layout, tiny_params, mlflow_server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    results = stages.run_all(tiny_params, layout)
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    run_id = results["train"]["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train/accuracy")] == [1, 2, 3]
    assert client.get_run(run_id).data.metrics["memorised/bits_per_char"] == pytest.approx(
        results["evaluate"]["bits_per_char"]
    )
    assert client.get_model_version_by_alias("char-rnn-seed", "champion").run_id == run_id
    assert not (layout.mlruns / "artifacts").exists(), "with a server, nothing goes into the local store"


def test_a_server_outage_during_training_is_ridden_out(layout, tiny_params, mlflow_server, monkeypatch):
    """The server stopped after the first epochs and started again seconds later: the client's
    retries (with backoff) carry training through, and every epoch is logged."""
    import threading

    from mlflow import MlflowClient

    from char_rnn.params import with_overrides

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    params = with_overrides(tiny_params, {"train.epochs": 60})
    _up_to_training(params, layout)
    done: dict[str, object] = {}
    training = threading.Thread(target=lambda: done.update(train=stages.train(params, layout)))
    training.start()
    client = MlflowClient(mlflow_server.url)
    run_id = _wait(lambda: _run_id(client), "the train stage's run")
    _wait(lambda: len(client.get_metric_history(run_id, "train/loss")) >= 2, "two epochs logged")
    mlflow_server.stop()
    time.sleep(4)
    mlflow_server.start()
    training.join(timeout=300)
    assert "train" in done, "training did not end"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 61))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_server_gone_for_good_fails_the_stage_in_one_line_naming_it(layout, tiny_params, mlflow_server):
    from char_rnn.faults import unreachable

    _up_to_training(tiny_params, layout)
    mlflow_server.stop()
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # fmt: skip
    started = time.monotonic()
    failed = run_cli("train", cwd=layout.root, env=env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        f"error: the MLflow tracking server {mlflow_server.url} did not answer (2 retries with backoff);"
        " rerun when it is back"
    ), failed.stderr
    assert time.monotonic() - started < 120
    assert unreachable(ValueError("something else")) is None


def test_a_registration_cut_short_is_finished_or_undone_by_the_next(layout, tiny_params, mlflow_server, monkeypatch):
    """What a registration cut short leaves (a version created, its alias not moved) is deleted by the
    next register stage, which then registers the model whole."""
    from mlflow import MlflowClient

    from char_rnn import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    stages.run_all(tiny_params, layout)
    client, name = MlflowClient(mlflow_server.url), tiny_params.registry.model_name
    [found] = client.search_model_versions(f"name = '{name}'")
    complete = client.get_model_version(name, found.version)
    assert registry.PENDING not in complete.tags and complete.aliases == ["champion"]
    client.delete_model_version(name, complete.version)
    cut_short = registry.register_version(complete.source, name, dict(complete.tags), "cut short")
    assert client.get_model_version(name, cut_short).tags[registry.PENDING] == "true"
    stages.register(tiny_params, layout)
    [version] = client.search_model_versions(f"name = '{name}'")
    assert version.version != cut_short and registry.PENDING not in version.tags  # the cut-short one is gone
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    crowned = registry.register_version(complete.source, name, dict(complete.tags), "cut short after its alias moved")
    registry.crown(name, crowned)
    assert registry.clear_pending(name) == [f"version {crowned}: finished (its alias had moved)"]
    assert registry.PENDING not in client.get_model_version(name, crowned).tags


def _up_to_training(params, layout) -> None:
    for stage in stages.STAGES[: [s.name for s in stages.STAGES].index("train")]:
        stage.run(params, layout)


def _run_id(client) -> str | None:
    experiment = client.get_experiment_by_name("char-rnn")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return runs[0].info.run_id if runs else None


def _wait(check, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.2)
    return found
