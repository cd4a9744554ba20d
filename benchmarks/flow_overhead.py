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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: tests/harness.py, shared with the suite, is imported from there
VENV_BIN = Path(sys.executable).parent  # run with .venv/bin/python: dvc, char-rnn, mlflow, prefect live here

from tests.harness import QUIET, prefect_server, scaffold_project  # noqa: E402


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's children: quiet, the venv's bin first on PATH (DVC and MLflow exec
    `char-rnn` and `uvicorn` from PATH), and no variable that would point them at another project."""
    env = {**os.environ, **QUIET, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    for name in ("MLFLOW_TRACKING_URI", "CHAR_RNN_ROOT"):
        if name not in extra:
            env.pop(name, None)
    return env


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
        warm = "import tensorflow, mlflow.pyfunc, great_expectations, prefect"
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
