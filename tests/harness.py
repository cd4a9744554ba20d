"""Real projects and servers that the suite and the benchmarks both start: a fresh git + DVC project
with the repository's pipeline, a `prefect server`, a process group stopped whole, and the quiet
environment they run in.

Tests import it as `harness` (tests/ is on their path); benchmarks as `tests.harness`, with the
repository root on theirs. It starts nothing on import.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's: dvc, char-rnn, mlflow, prefect
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "mlruns/.gitignore", "data/raw/.gitkeep")
QUIET = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def scaffold_project(dest: Path) -> Path:
    """A fresh git + DVC project with the repository's pipeline files (dvc.yaml hashes src/ as deps)."""
    for name in PROJECT_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "src" / "char_rnn", dest / "src" / "char_rnn", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, **QUIET, **GIT_IDENTITY}
    for command in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "scaffold"],
    ):
        subprocess.run(command, cwd=dest, env=env, check=True, capture_output=True)
    return dest


@contextmanager
def prefect_server(port: int, home: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 in its own process group; stops the whole group on exit."""
    env = {**os.environ, **QUIET, "PREFECT_HOME": str(home), **(extra_env or {})}
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http_ok(f"{url}/health", process, timeout_s=120)
        yield url
    finally:
        stop_group(process)
        log.close()


def wait_http_ok(url: str, process: subprocess.Popen, timeout_s: float, interval_s: float = 0.05) -> None:
    """Poll `GET url` until it answers 200; fails when the server process exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


def stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process group (the process and everything it started), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
