"""What the Prefect flow costs over `dvc repro` of the same change, on the seed pipeline.

Two changes, each timed as `dvc repro` and as `python -m pipelines run` (a live `prefect server` on
127.0.0.1, temporary PREFECT_HOME), each in a fresh process on its own fresh copy of the project (git +
DVC, params.yaml as in the repository), after one untimed import of the heavy libraries so that neither
pays a cold disk cache:

- full: every stage of a fresh project (100 epochs of the blog's model);
- evaluate-only: then `evaluate.sample_length` changed (written into params.yaml for `dvc repro`,
  `--set` for the flow, which writes it there): DVC reruns check (it declares the whole file) and
  evaluate, and skips the rest.

    .venv/bin/python benchmarks/flow_overhead.py [--repeats 2]

Goal: flow / dvc repro <= 1.10 for each. Timings here vary by seconds from run to run, so the pair is
repeated (dvc repro, flow, dvc repro, ...), each round on fresh projects, and the ratio is taken of the
best time of each.
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

from tests.harness import GIT_IDENTITY, QUIET, prefect_server, scaffold_project  # noqa: E402

CHANGE = {"evaluate.sample_length": 61}  # the params.yaml default is 60


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's children: quiet, the venv's bin first on PATH (DVC and MLflow exec
    `char-rnn` and `uvicorn` from PATH), and no variable that would point them at another project."""
    env = {**os.environ, **QUIET, **GIT_IDENTITY, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("MLFLOW_TRACKING_URI", "CHAR_RNN_ROOT"):
        env.pop(name, None)
    return {**env, **extra}


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def change_params(root: Path) -> None:
    """CHANGE written into params.yaml as the flow writes an override (comments kept)."""
    from char_rnn.layout import Layout
    from char_rnn.params import load_params, with_overrides
    from pipelines.versioning import write_params

    write_params(Layout(root), with_overrides(load_params(root / "params.yaml"), CHANGE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (dvc repro, flow); the best of each counts")
    repeats = parser.parse_args().repeats
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        base = Path(tmp)
        (base / "prefect").mkdir()
        env = child_env(PREFECT_HOME=str(base / "prefect"))
        warm = "import tensorflow, mlflow.pyfunc, great_expectations, prefect, dvc.repo"
        subprocess.run([sys.executable, "-c", warm], env=env, check=True, capture_output=True)
        with prefect_server(free_port(), base / "prefect") as url:
            flow_env = {**env, "PREFECT_API_URL": url}
            for round_ in range(1, repeats + 1):
                repro_root = scaffold_project(base / f"repro-{round_}")
                flow_root = scaffold_project(base / f"flow-{round_}")
                flow = [sys.executable, "-m", "pipelines", "run", "--root"]
                for change in ("full", "evaluate-only"):
                    if change == "evaluate-only":
                        change_params(repro_root)
                    sets = [f"--set={key}={value}" for key, value in CHANGE.items()] if change != "full" else []
                    repro = timed([sys.executable, "-m", "dvc", "repro"], repro_root, env)
                    flowed = timed([*flow, str(flow_root), *sets], REPO, flow_env)
                    times.setdefault((change, "repro"), []).append(repro)
                    times.setdefault((change, "flow"), []).append(flowed)
                    print(f"round {round_}, {change}: dvc repro {repro:.1f} s, flow {flowed:.1f} s", flush=True)
    for change in ("full", "evaluate-only"):
        repro, flowed = min(times[(change, "repro")]), min(times[(change, "flow")])
        ratio = flowed / repro
        print(f"{change}: flow (python -m pipelines run, live server) {flowed:.1f} s, dvc repro {repro:.1f} s")
        print(f"  best of {repeats}; ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; goal <= +10 %)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
