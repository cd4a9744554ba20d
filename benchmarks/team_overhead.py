"""What the team setup costs a nightly run: the seed pipeline through the work pool's worker on the team's
services, against the one-machine flow, in one run (goal: ratio <= 1.25).

    .venv/bin/python -m benchmarks.team_overhead [--repeats 1]     # from the repository root

Team: README's "Team setup" on loopback (`tests/team_services.py`, the services `tests/test_team.py`
starts), then `prefect deployment run char-rnn/nightly`, timed until the flow run is final: the worker's
git clone, every stage with MLflow over HTTP (PostgreSQL, artifacts proxied to S3), `dvc push` to S3 and
the run branch pushed to origin. One machine: `python -m pipelines run` in a clone of the same commit,
with the laptop defaults (SQLite MLflow store, the `local` DVC remote), on the same Prefect server.
Both run the seed pipeline (params.yaml as committed). The pair alternates per round; the best of each counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from tests.harness import QUIET
from tests.team_services import MARKER, Team, run_nightly, team_services


def one_machine(team: Team, round_: int) -> float:
    """`python -m pipelines run` in a fresh clone of origin's first commit (before the team's DVC remote)."""
    checkout = team.base / f"one-machine-{round_}"
    subprocess.run(["git", "clone", "-q", str(team.origin), str(checkout)], check=True)
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=checkout, capture_output=True,
                           text=True, check=True).stdout.strip()  # fmt: skip
    subprocess.run(["git", "checkout", "-q", first], cwd=checkout, check=True)
    laptop = {k: v for k, v in team.env.items() if not k.startswith(("MLFLOW_", "AWS_", "PG"))}
    env = {**laptop, **QUIET, "PREFECT_API_URL": team.url("PREFECT_API_URL")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines", "run"], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def through_the_worker(team: Team) -> float:
    start = time.perf_counter()
    flow_run = run_nightly(team)
    assert flow_run.state.is_completed(), flow_run.state.message
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (one machine, worker); best of each")
    repeats = parser.parse_args().repeats
    times: dict[str, list[float]] = {"one machine": [], "worker": []}
    warm = "import tensorflow, mlflow.pyfunc, great_expectations, prefect"  # neither run pays a cold disk cache
    subprocess.run([sys.executable, "-c", warm], env={**os.environ, **QUIET}, check=True, capture_output=True)
    started = time.perf_counter()
    with team_services() as team:
        print(f"team services up in {time.perf_counter() - started:.1f} s (README's commands)", flush=True)
        for round_ in range(1, repeats + 1):
            times["one machine"].append(one_machine(team, round_))
            times["worker"].append(through_the_worker(team))
            print(f"round {round_}: one machine {times['one machine'][-1]:.1f} s, worker {times['worker'][-1]:.1f} s")
        team.stop()
        assert team.leftovers() == [], f"{MARKER}: processes left behind"
    worker, alone = min(times["worker"]), min(times["one machine"])
    print(f"worker (deployment run on the team's services): {worker:7.1f} s (best of {repeats})")
    print(f"one machine (python -m pipelines run):           {alone:7.1f} s (best of {repeats})")
    print(f"ratio worker / one machine: {worker / alone:.3f} (goal <= 1.25)")


if __name__ == "__main__":
    main()
