"""What the Prefect flow costs over calling the stage functions directly, on the seed pipeline.

Both runs start in a fresh process on a fresh copy of the project (git + DVC, params.yaml as in
the repository), after one untimed import of the heavy libraries so neither pays a cold disk cache:

    .venv/bin/python benchmarks/flow_overhead.py [--repeats 2]

The flow runs on a live `prefect server` (127.0.0.1, temporary PREFECT_HOME) and includes what a
direct run does not do: Prefect's own start-up and DVC's bookkeeping (dvc commit). Goal: ratio <= 1.10.
Timings here vary by several seconds from run to run, so the pair is repeated (direct, flow, direct,
...), each on a fresh project, and the ratio is taken of the best time of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # run with .venv/bin/python: dvc, char-rnn, mlflow, prefect live here
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


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's children: quiet, the venv's bin first on PATH (DVC and MLflow exec
    `char-rnn` and `uvicorn` from PATH), and no variable that would point them at another project."""
    env = {**os.environ, **QUIET, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    for name in ("MLFLOW_TRACKING_URI", "CHAR_RNN_ROOT"):
        if name not in extra:
            env.pop(name, None)
    return env


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
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
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


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (direct, flow); the best of each counts")
    repeats = parser.parse_args().repeats
    times: dict[str, list[float]] = {"direct": [], "flow": []}
    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        base = Path(tmp)
        env = {**os.environ, **QUIET, "PREFECT_HOME": str(base / "prefect")}
        warm = "import tensorflow, mlflow.keras, great_expectations, prefect"
        subprocess.run([sys.executable, "-c", warm], env=env, check=True, capture_output=True)
        direct_code = (
            "import sys; from pathlib import Path; from char_rnn import stages; from char_rnn.layout import Layout;"
            " from char_rnn.params import load_params; root = Path(sys.argv[1]);"
            " stages.run_all(load_params(root / 'params.yaml'), Layout(root))"
        )
        (base / "prefect").mkdir(exist_ok=True)
        with prefect_server(free_port(), base / "prefect") as url:
            for round_ in range(1, repeats + 1):
                direct_root = scaffold_project(base / f"direct-{round_}")
                flow_root = scaffold_project(base / f"flow-{round_}")
                times["direct"].append(timed([sys.executable, "-c", direct_code, str(direct_root)], env))
                times["flow"].append(
                    timed(
                        [sys.executable, "-m", "pipelines", "run", "--root", str(flow_root)],
                        {**env, "PREFECT_API_URL": url},
                    )
                )
                print(f"round {round_}: direct {times['direct'][-1]:.1f} s, flow {times['flow'][-1]:.1f} s", flush=True)
    flow, direct = min(times["flow"]), min(times["direct"])
    print(f"flow (python -m pipelines run, live server): {flow:7.1f} s (best of {repeats})")
    print(f"direct (stages.run_all in one process):      {direct:7.1f} s (best of {repeats})")
    print(f"ratio flow / direct: {flow / direct:.3f} ({(flow / direct - 1) * 100:+.1f} %; goal <= +10 %)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
