"""Wall time of a clean `dvc repro --force` of the seed pipeline against the blog's script.

    .venv/bin/python benchmarks/pipeline_wall.py [--repeats 3]     # rounds, then the stage table
    .venv/bin/python benchmarks/pipeline_wall.py --stages          # the stage table only

Both sides train the blog's model on the blog's sentence for the same 100 epochs and reach the same
accuracy; each is one command started as a fresh process and timed from start to exit:

- blog: `python benchmarks/blog.py PLOT` (the post's script: TensorFlow, one-hot arrays, fit, evaluate,
  the twin-axis plot), with `TF_CPP_MIN_LOG_LEVEL=3` in its environment;
- pipeline: `dvc repro --force` in a fresh git + DVC project scaffolded as the suite does (`tests/harness.py`)
  (dvc.yaml, params.yaml, .dvcignore, .gitignore, src/; scaffolding is not timed), with the venv's
  bin first on PATH: every stage of dvc.yaml (check ... register) as its own `char-rnn <stage>`
  process, plus DVC's hashing, locking and run-cache bookkeeping.

One untimed import of the heavy libraries first, so neither side pays a cold disk cache. Timings on a
shared two-core machine vary by several seconds, so the rounds are interleaved (blog, repro, blog,
repro, ...; `--repeats N`, default 3) and the ratio is taken of the best wall of each. Goal: repro /
blog <= 1.5. The accuracies printed: the blog's "Train accuracy:" (model.evaluate on its windows) and
the pipeline's reports/metrics.json (`accuracy`: the evaluate stage on the same training windows;
`train_accuracy`: the last epoch of fit).

The stage table times each stage's command from dvc.yaml in order, in another fresh project, as a
child process (wall, and user+sys CPU as /usr/bin/time reports them), and splits each wall into
"start + imports" and "work": the start + imports figure is the wall of a fresh process that only
imports what that stage's process had imported (char_rnn.cli and the heavy packages found in its
sys.modules at exit: tensorflow, great_expectations, mlflow, ...), and work is the rest. The stage
processes are started through a small runpy wrapper that records sys.modules at exit (otherwise the
same code as the `char-rnn` entry point). Below it: each heavy package's standalone import wall in a
fresh process (they overlap: mlflow pulls in pandas, keras pulls in tensorflow), `python -c pass` and
`char-rnn --help`; every such probe is the best of 2. The stage walls do not include DVC's own work:
repro minus their sum is DVC's share (printed when the rounds ran).

`--epochs N` shortens both sides for a smoke test (the comparison is only meaningful at 100).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from flow_overhead import VENV_BIN, child_env  # it puts the repository root on the path

from tests.harness import scaffold_project

GOAL_RATIO = 1.5
PROBE_REPEATS = 2  # fresh-process probes are short and noisy: the best of this many counts
BLOG = Path(__file__).resolve().parent / "blog.py"
# Packages whose import dominates a stage's start; a stage's probe imports those its process loaded.
HEAVY = ("tensorflow", "keras", "great_expectations", "mlflow", "sklearn", "scipy", "pandas", "matplotlib", "h5py")
WARM = "import tensorflow, keras, mlflow.pyfunc, great_expectations, matplotlib.pyplot, dvc.repo"
# Runs the `char-rnn` entry point as its script does, and writes the top-level packages in
# sys.modules at exit to the file named by the first argument.
RECORD_MODULES = (
    "import atexit, json, runpy, sys\n"
    "out, script = sys.argv[1], sys.argv[2]\n"
    "del sys.argv[1:3]\n"
    "sys.argv[0] = script\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted({m.split('.')[0] for m in sys.modules}))))\n"
    "runpy.run_path(script, run_name='__main__')\n"
)


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float  # user + sys of the child and its children, as /usr/bin/time counts them
    stdout: str
    stderr: str


def timed_run(command: list[str], cwd: Path, env: dict[str, str]) -> Timed:
    """Run to completion; wall from start to exit. Exits the benchmark with the child's output on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(
            f"command failed ({done.returncode}): {' '.join(command)}\n"
            f"--- stdout (end) ---\n{done.stdout[-3000:]}\n--- stderr (end) ---\n{done.stderr[-3000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, done.stdout, done.stderr)


def scaffold(dest: Path, epochs: int) -> Path:
    """The suite's git + DVC project (tests/harness.py), with train.epochs changed when a smoke test asks for fewer."""
    root = scaffold_project(dest)
    if epochs != 100:
        params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
        params["train"]["epochs"] = epochs
        (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), "utf-8")
    return root


def run_blog(workdir: Path, epochs: int) -> tuple[float, float]:
    """(wall s, the accuracy it printed)."""
    done = timed_run(
        [sys.executable, str(BLOG), str(workdir / "blog_loss_accuracy.png"), "--epochs", str(epochs)],
        workdir,
        child_env(),
    )
    found = re.search(r"^Train accuracy: ([0-9.eE+-]+)\s*$", done.stdout, re.MULTILINE)
    if found is None:
        sys.exit(f"the blog's script printed no 'Train accuracy:' line:\n{done.stdout[-2000:]}")
    return done.wall_s, float(found.group(1))


def run_repro(root: Path) -> tuple[float, dict[str, float]]:
    """(wall s of `dvc repro --force`, reports/metrics.json)."""
    done = timed_run([str(VENV_BIN / "dvc"), "repro", "--force"], root, child_env())
    metrics = json.loads((root / "reports" / "metrics.json").read_text(encoding="utf-8"))
    if "accuracy" not in metrics:
        sys.exit(f"reports/metrics.json has no 'accuracy' (keys: {', '.join(metrics)}); update this benchmark")
    return done.wall_s, metrics


def stage_commands(root: Path) -> list[tuple[str, list[str]]]:
    """(stage, argv) in dvc.yaml's order; every stage's cmd is `char-rnn <stage>`."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    commands = []
    for name, stage in stages.items():
        argv = str(stage["cmd"]).split()
        if argv[0] != "char-rnn":
            sys.exit(f"dvc.yaml stage {name}: expected a `char-rnn ...` command, found {stage['cmd']!r}")
        commands.append((name, argv[1:]))
    return commands


def import_wall(modules: list[str], cwd: Path) -> float:
    """Best wall of a fresh interpreter that imports `modules` (nothing: `python -c pass`)."""
    code = "; ".join(f"import {m}" for m in modules) or "pass"
    return min(timed_run([sys.executable, "-c", code], cwd, child_env()).wall_s for _ in range(PROBE_REPEATS))


@dataclass(frozen=True)
class StageRow:
    name: str
    run: Timed
    heavy: tuple[str, ...]  # the HEAVY packages its process had loaded at exit
    start_s: float  # start + imports: a fresh process importing char_rnn.cli and `heavy`


def time_stages(root: Path, workdir: Path) -> list[StageRow]:
    """Each stage of dvc.yaml as its own process, in order, and the probe of its start + imports."""
    script = str(VENV_BIN / "char-rnn")
    rows = []
    probes: dict[tuple[str, ...], float] = {}
    for name, args in stage_commands(root):
        record = workdir / f"modules-{name}.json"
        run = timed_run([sys.executable, "-c", RECORD_MODULES, str(record), script, *args], root, child_env())
        loaded = set(json.loads(record.read_text()))
        heavy = tuple(m for m in HEAVY if m in loaded)
        if heavy not in probes:
            probes[heavy] = import_wall(["char_rnn.cli", *heavy], root)
        rows.append(StageRow(name, run, heavy, probes[heavy]))
        print(f"  stage {name}: {run.wall_s:.1f} s", flush=True)
    return rows


def print_stage_table(rows: list[StageRow], epochs: int, repro_best: float | None) -> None:
    print()
    print(f"Stage x seconds: each `char-rnn <stage>` of dvc.yaml as its own process, in order ({epochs} epochs)")
    print("  wall:   start to exit of the stage's process")
    print("  cpu:    user + sys of that process (2 cores: cpu can exceed wall)")
    print(
        "  start+imports: wall of a fresh process importing char_rnn.cli and the heavy packages that stage loaded"
        f" (best of {PROBE_REPEATS})"
    )
    print("  work:   wall - start+imports (reading, training, scoring, writing, MLflow calls)")
    print()
    print(f"  {'stage':<10} {'wall s':>7} {'cpu s':>7} {'start+imports s':>16} {'work s':>7}  heavy packages loaded")
    for row in rows:
        work = row.run.wall_s - row.start_s
        print(
            f"  {row.name:<10} {row.run.wall_s:7.1f} {row.run.cpu_s:7.1f} {row.start_s:16.1f} {work:7.1f}"
            f"  {', '.join(row.heavy) or '-'}"
        )
    total, cpu = sum(r.run.wall_s for r in rows), sum(r.run.cpu_s for r in rows)
    starts = sum(r.start_s for r in rows)
    print(f"  {'sum':<10} {total:7.1f} {cpu:7.1f} {starts:16.1f} {total - starts:7.1f}")
    if repro_best is not None:
        print(
            f"  dvc repro --force (best round) {repro_best:.1f} s - sum of stage walls {total:.1f} s"
            f" = {repro_best - total:+.1f} s of DVC's own work (hashing, lock, run-cache, git checks)"
        )
        if repro_best < total:
            print("  (negative: the stages ran slower here than inside the repro; the machine's load changed)")


def print_import_floors(root: Path) -> None:
    """What any process pays before it works: the interpreter, the CLI, each heavy package alone."""
    print()
    print(
        f"Reference: fresh-process walls, best of {PROBE_REPEATS}"
        " (standalone imports overlap: keras imports tensorflow, mlflow pandas)"
    )
    bare = import_wall([], root)
    print(f"  {'python -c pass':<34} {bare:6.1f} s")
    command = [str(VENV_BIN / "char-rnn"), "--help"]
    help_wall = min(timed_run(command, root, child_env()).wall_s for _ in range(PROBE_REPEATS))
    print(f"  {'char-rnn --help':<34} {help_wall:6.1f} s")
    for module in ("char_rnn.cli", "tensorflow", "great_expectations", "mlflow", "dvc.repo"):
        wall = import_wall([module], root)
        print(f"  {'import ' + module:<34} {wall:6.1f} s  ({wall - bare:+.1f} s over python -c pass)")


def stage_table(workdir: Path, epochs: int, repro_best: float | None) -> None:
    """The stage x seconds table in a fresh project, then the import floors."""
    root = scaffold(workdir / "stages", epochs)
    print_stage_table(time_stages(root, workdir), epochs, repro_best)
    print_import_floors(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (blog, repro); the best of each counts")
    parser.add_argument("--stages", action="store_true", help="print only the stage x seconds table")
    parser.add_argument("--epochs", type=int, default=100, help="both sides' epochs (100 = the blog; less: smoke test)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pipeline-wall-") as tmp:
        workdir = Path(tmp)
        timed_run([sys.executable, "-c", WARM], workdir, child_env())  # untimed: the disk cache, both sides
        repro_best = None
        if not args.stages:
            repro_best = rounds(workdir, args.repeats, args.epochs)
        stage_table(workdir, args.epochs, repro_best)


def rounds(workdir: Path, repeats: int, epochs: int) -> float:
    """Interleaved (blog, repro) rounds; prints both sides and the ratio of the bests; returns the best repro wall."""
    blog: list[tuple[float, float]] = []
    repro: list[tuple[float, dict[str, float]]] = []
    for round_ in range(1, repeats + 1):
        blog_dir = workdir / f"blog-{round_}"
        blog_dir.mkdir()
        blog.append(run_blog(blog_dir, epochs))
        root = scaffold(workdir / f"repro-{round_}", epochs)
        repro.append(run_repro(root))
        (b_wall, b_acc), (r_wall, r_metrics) = blog[-1], repro[-1]
        print(
            f"round {round_}: blog {b_wall:.1f} s (accuracy {b_acc:.4f}), "
            f"dvc repro --force {r_wall:.1f} s (accuracy {r_metrics['accuracy']:.4f})",
            flush=True,
        )
    b_wall, b_acc = min(blog)
    r_wall, r_metrics = min(repro, key=lambda pair: pair[0])
    ratio = r_wall / b_wall
    print()
    print(f"Wall, fresh process to exit, best of {repeats} interleaved rounds ({epochs} epochs each):")
    print(f"  blog's script (python benchmarks/blog.py):        {b_wall:7.1f} s   rounds: {_list(w for w, _ in blog)}")
    print(f"  pipeline (dvc repro --force, fresh git+DVC repo): {r_wall:7.1f} s   rounds: {_list(w for w, _ in repro)}")
    print(f"  ratio repro / blog: {ratio:.2f}x (goal <= {GOAL_RATIO}x: {'met' if ratio <= GOAL_RATIO else 'NOT met'})")
    print("Final training accuracy (of the best round of each):")
    print(f"  blog, model.evaluate on its 51 windows ('Train accuracy:'): {b_acc:.4f}")
    print(
        f"  pipeline, reports/metrics.json: accuracy {r_metrics['accuracy']:.4f} (evaluate stage, training windows),"
        f" train_accuracy {r_metrics.get('train_accuracy', float('nan')):.4f} (last epoch of fit)"
    )
    same = abs(r_metrics["accuracy"] - b_acc) <= 0.01
    print(f"  difference {r_metrics['accuracy'] - b_acc:+.4f} ({'within' if same else 'NOT within'} 0.01)")
    print()
    return r_wall


def _list(walls: Iterable[float]) -> str:
    return ", ".join(f"{w:.1f}" for w in walls)


if __name__ == "__main__":
    main()
