"""Time to quality of a warm start against training from scratch, on text that arrived.

kolaw+kobill as documents in a folder: the constitution and the first bills arrive first, a champion
is trained on them and registered; then the last bills arrive, and the grown corpus is trained twice,
from scratch and from the champion (`train.init: champion`), each through evaluate. Printed: each
run's training seconds (train + tune + refit), its test figure (what `registry.metric` names) and
the n-gram's, and the goal of issue 25 judged (warm: within 1 % of scratch's test figure in at most
a third of its time):

    .venv/bin/python -m benchmarks.warm_start benchmarks/configs/kolaw+kobill.yaml --first 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TRAINING = ("train", "tune", "refit")


def project(root: Path, config: Path, documents: list[Any]) -> Any:
    """A project whose corpus is the given documents as a folder, with the config's params."""
    from char_rnn.layout import Layout

    folder = root / "data" / "raw" / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    for i, document in enumerate(documents):
        (folder / f"{i:02d}-{Path(document.name).name}").write_text(document.text, encoding="utf-8")
    (root / "params.yaml").write_text(config.read_text(encoding="utf-8"), encoding="utf-8")
    return Layout(root)


def run(layout: Any, params: Any, register: bool) -> dict[str, Any]:
    """Every stage (register only when asked) with its seconds; the test figures."""
    from char_rnn import stages
    from char_rnn.heldout import by_text

    seconds, results = {}, {}
    for stage in stages.STAGES if register else stages.STAGES[:-1]:
        started = time.perf_counter()
        results[stage.name] = stage.run(params, layout)
        seconds[stage.name] = round(time.perf_counter() - started, 1)
        print(f"  {stage.name}: {seconds[stage.name]} s", flush=True)
    metrics = by_text(json.loads(layout.metrics.read_text(encoding="utf-8")))
    test = metrics["test"]
    return {
        "train_seconds": round(sum(seconds[name] for name in TRAINING), 1),
        "seconds": seconds,
        "test": {key: test.get(key) for key in (params.registry.metric.value, "bits_per_char", "ngram_bits_per_char")},
        "warm_start": results["train"].get("warm_start"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--first", type=int, default=8, help="documents in the first arrival (the rest arrive next)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    from char_rnn.corpus import read_documents
    from char_rnn.params import load_params, with_overrides

    config = args.config.resolve()
    base = load_params(config)
    documents = read_documents(base.corpus.source, Path.cwd())
    root = Path(tempfile.mkdtemp(prefix="char-rnn-warm-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"  # one store: the champion is shared
    common = {"corpus.source": "data/raw/docs", "registry.model_name": "char-rnn-warm-start-bench"}
    print(f"first arrival: {args.first} documents; store {os.environ['MLFLOW_TRACKING_URI']}", flush=True)
    champion = run(project(root / "first", config, documents[: args.first]), with_overrides(base, common), True)
    figures = {"champion": champion}
    for init in ("scratch", "champion"):
        print(f"grown corpus ({len(documents)} documents), train.init: {init}", flush=True)
        layout = project(root / init, config, documents)
        figures[init] = run(layout, with_overrides(base, {**common, "train.init": init}), False)
    metric = base.registry.metric.value
    scratch, warm = figures["scratch"], figures["champion"]
    ratio = warm["train_seconds"] / scratch["train_seconds"]
    gap = warm["test"][metric] / scratch["test"][metric] - 1
    figures["goal"] = {"time_ratio": round(ratio, 3), "test_gap": round(gap, 5), "met": ratio <= 1 / 3 and gap <= 0.01}
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
