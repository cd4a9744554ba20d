"""The stages against a real `mlflow server` on 127.0.0.1, as a team would share one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from char_rnn import stages
from conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--default-artifact-root",
        (tmp_path / "server-artifacts").as_uri(),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start on {url}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_pipeline_logs_and_registers_through_a_tracking_server(layout, tiny_params, mlflow_server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    results = stages.run_all(tiny_params, layout)
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run_id = results["train"]["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train/accuracy")] == [1, 2, 3]
    assert client.get_run(run_id).data.metrics["memorised/bits_per_char"] == pytest.approx(
        results["evaluate"]["bits_per_char"]
    )
    assert client.get_model_version_by_alias("char-rnn-ko", "champion").run_id == run_id
    assert not (layout.mlruns / "artifacts").exists(), "with a server, nothing goes into the local store"
