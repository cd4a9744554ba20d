"""A simulated month of arriving text: kolaw+kobill delivered as documents, run by run, against one store.

The constitution and two bills arrive first, then two bills at a time, and once an English manual
(a bad arrival: drift must stop it before training, naming it; the operator then removes it). Each
arrival runs every stage in this process, as `char-rnn run` does (the functions `dvc repro` calls),
with `train.init: champion` and the gate registering the candidate as champion or challenger. For
comparison the same corpus is trained once more from scratch, through evaluate, in a project of its
own. Printed (and `--json`): per arrival, the drift figures, the candidate's, the champion's and the
n-gram's bits per character on that arrival's test text, the gate's decision, and training minutes
warm and scratch; then the goals of issue 25 judged. The figures are also logged to one MLflow run
("growing corpus"), one step per arrival, with a plot of test bits/char per arrival:

    .venv/bin/python -m benchmarks.growing_corpus benchmarks/configs/kolaw+kobill.yaml \\
        --set model.ensemble=1 --set 'tune.dynamic_rates=[]' \\
        --set 'tune.mixture_shares=[0.1,0.03,0.01,0.003,0.001]' --set tune.match_min=4 --json growing.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.warm_start import TRAINING

MANUAL = "Press the start button, then wait until the washing machine beeps twice.\n" * 40
ARRIVALS = ((0, 1, 2), (3, 4), (5, 6), "bad", (7, 8), (9, 10))  # kolaw+kobill's documents, in order
MODEL = "char-rnn-growing"
EXPERIMENT = "growing-corpus"


def deliver(folder: Path, documents: list[Any], arrival: Any) -> list[str]:
    """Write one arrival's files, named to sort after every earlier one."""
    folder.mkdir(parents=True, exist_ok=True)
    if arrival == "bad":
        names = ["06b-manual-en.txt"]  # after bill 06, before 07: it arrived then
        (folder / names[0]).write_text(MANUAL, encoding="utf-8")
        return names
    names = [f"{i:02d}-{Path(documents[i].name).name}" for i in arrival]
    for i, name in zip(arrival, names):
        (folder / name).write_text(documents[i].text, encoding="utf-8")
    return names


def stages_through(params: Any, layout: Any, last: str) -> tuple[dict[str, Any], dict[str, float]]:
    from char_rnn import stages

    results, seconds = {}, {}
    for stage in stages.STAGES[: [s.name for s in stages.STAGES].index(last) + 1]:
        started = time.perf_counter()
        results[stage.name] = stage.run(params, layout)
        seconds[stage.name] = time.perf_counter() - started
    return results, seconds


def arrival_row(results: dict[str, Any], seconds: dict[str, float], metric: str) -> dict[str, Any]:
    gate = results["register"].get("gate") or {}
    test = results["evaluate"]
    promoted = results["register"].get("alias") == "champion"
    candidate = gate.get("candidate") or _figure(test, metric)
    return {
        "decision": results["register"]["summary"],
        "alias": results["register"].get("alias"),
        "drift": results["drift"]["summary"],
        "divergence": _observed(results["drift"], "drift.text"),
        "max_unseen_share": max((d["unseen_share"] or 0 for d in results["drift"]["documents"]), default=None),
        "candidate": candidate,
        "champion_before": gate.get("champion"),
        "champion_after": candidate if promoted else gate.get("champion"),  # None: still no champion
        "ngram": gate.get("ngram") or _figure(test, "ngram_bits_per_char"),
        "rnn": _figure(test, "bits_per_char"),
        "test_chars": _figure(test, "chars"),
        "warm_start": results["train"]["warm_start"],
        "warm_minutes": sum(seconds[name] for name in TRAINING) / 60,
        "metric": metric,
    }


def _figure(metrics: dict[str, Any], key: str) -> float | None:
    from char_rnn.heldout import by_text

    return by_text({k: v for k, v in metrics.items() if k != "summary"}).get("test", {}).get(key)


def _observed(report: dict[str, Any], suite: str) -> float | None:
    found = [e["observed"] for s in report["suites"] if s["suite"] == suite for e in s["expectations"]]
    return found[0] if found else None


def scratch_run(root: Path, config: Path, base: Any, folder: Path) -> dict[str, Any]:
    """The same corpus from scratch, through evaluate, in a project of its own."""
    from char_rnn.heldout import by_text
    from char_rnn.layout import Layout
    from char_rnn.params import with_overrides

    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(folder, root / "data" / "raw" / "docs")
    shutil.copy(config, root / "params.yaml")
    layout = Layout(root)
    _, seconds = stages_through(with_overrides(base, {"train.init": "scratch"}), layout, "evaluate")
    test = by_text(json.loads(layout.metrics.read_text(encoding="utf-8")))["test"]
    return {"minutes": sum(seconds[name] for name in TRAINING) / 60, "figure": test[base.registry.metric.value]}


def log_to_mlflow(rows: list[dict[str, Any]], store: str, plot: Path) -> str:
    """One MLflow run, one step per good arrival, and the plot: what a reviewer opens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    good = [row for row in rows if "stopped" not in row]
    steps = [row["arrival"] for row in good]
    figure, axis = plt.subplots(figsize=(7, 4))
    lines = (
        ("champion_before", "champion before the arrival (re-scored)", "o-"),
        ("candidate", "candidate (warm-started once there is a champion)", "s--"),
        ("ngram", "n-gram", "^:"),
    )
    for key, label, style in lines:
        axis.plot(steps, [row[key] if row[key] is not None else float("nan") for row in good], style, label=label)
    for row in rows:
        if "stopped" in row:  # the bad arrival: stopped by drift before training
            axis.axvline(row["arrival"], color="grey", linestyle=":")
            axis.annotate("stopped by drift", (row["arrival"], 0.97), xycoords=("data", "axes fraction"), ha="center")
    axis.set(
        xlabel="arrival", ylabel="test bits/char (lower is better)", title="Growing corpus: each arrival's test text"
    )
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(plot, dpi=120)
    from char_rnn.tracking import KIND

    mlflow.set_tracking_uri(store)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:  # artifacts beside the store; a model-training one
        artifacts = (Path(store.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=KIND)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="growing corpus") as run:
        for row in good:
            keys = ("champion_before", "champion_after", "candidate", "ngram")
            figures = {f"test/{key}": row[key] for key in keys if row[key] is not None}
            mlflow.log_metrics({**figures, "train/warm_minutes": row["warm_minutes"]}, step=row["arrival"])
        mlflow.log_artifact(str(plot))
        mlflow.log_dict({"arrivals": rows}, "arrivals.json")
        return run.info.run_id


def replot(saved: Path, store: str, plot: Path) -> str:
    """The MLflow run and plot again from a `--json` file (the figures, without training again)."""
    return log_to_mlflow(json.loads(saved.read_text(encoding="utf-8"))["rows"], store, plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE override (YAML value)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="the project and its store go here (default: a temporary folder)")
    args = parser.parse_args()

    from char_rnn.corpus import read_documents
    from char_rnn.drift import DriftFailed
    from char_rnn.layout import Layout
    from char_rnn.params import load_params, with_overrides

    config = args.config.resolve()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.sets)}
    overrides |= {"corpus.source": "data/raw/docs", "train.init": "champion", "registry.model_name": MODEL}
    base = with_overrides(load_params(config), overrides)
    documents = read_documents("kolaw+kobill", Path.cwd())
    root = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="char-rnn-growing-"))
    project = root / "project"
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, project / "params.yaml")
    os.environ["MLFLOW_TRACKING_URI"] = store = f"sqlite:///{root / 'mlflow.db'}"
    layout, folder, rows = Layout(project), project / "data" / "raw" / "docs", []
    for number, arrival in enumerate(ARRIVALS, start=1):
        names = deliver(folder, documents, arrival)
        print(f"arrival {number}: {', '.join(names)}", flush=True)
        row: dict[str, Any] = {"arrival": number, "documents": names}
        try:
            results, seconds = stages_through(base, layout, "register")
        except DriftFailed as exc:
            row["stopped"] = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            (folder / names[0]).unlink()  # the operator takes the file out; the next arrival goes on
            print(f"  stopped: {row['stopped']}", flush=True)
            rows.append(row)
            continue
        row |= arrival_row(results, seconds, base.registry.metric.value)
        if number > 1:
            scratch = scratch_run(root / "scratch", config, base, folder)
            row |= {"scratch_minutes": scratch["minutes"], "scratch_figure": scratch["figure"]}
        print("  " + json.dumps(row, ensure_ascii=False), flush=True)
        rows.append(row)
    run_id = log_to_mlflow(rows, store, root / "growing_corpus.png")
    print(json.dumps({"rows": rows, "mlflow_run": run_id, "store": store, "plot": str(root / "growing_corpus.png")},
                     ensure_ascii=False, indent=1))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "mlflow_run": run_id, "store": store}, indent=1) + "\n")


if __name__ == "__main__":
    main()
