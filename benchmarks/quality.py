"""Held-out quality of a complete params file against the Kneser-Ney n-gram on the same split.

Runs every stage of the pipeline (in one process, in a temporary project) on the params file given,
then prints the RNN's, the n-gram's and the hybrid's held-out bits per character, their ratios and
the goals of issue 5, and the training wall time:

    .venv/bin/python benchmarks/quality.py benchmarks/configs/kolaw.yaml

Copying the same file over params.yaml and running `dvc repro` reproduces the figures (training is
seeded and deterministic on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Issue 5, as factors of the n-gram's bits/char on the same split: the registered model (hybrid
# allowed) at least 5 % better; the RNN alone within 5 % on kolaw+kobill. The issue rounds them to
# 3.41 and 2.61 (0.95 x 3.589 = 3.4096, 0.95 x 2.752 = 2.6144) and 2.89 (1.05 x 2.752 = 2.8896).
# The RNN alone is shown twice: scored statically, and under dynamic evaluation (it learns from each
# validation segment after scoring it, at a rate chosen on the tuning slice; see char_rnn.dynamic).
GOALS = {
    "kolaw": {"hybrid_bits_per_char": 0.95},
    "kolaw+kobill": {"hybrid_bits_per_char": 0.95, "bits_per_char": 1.05, "dynamic_bits_per_char": 1.05},
}
ROWS = (
    ("n-gram", "ngram_bits_per_char"),
    ("RNN", "bits_per_char"),
    ("RNN dyn.", "dynamic_bits_per_char"),
    ("hybrid", "hybrid_bits_per_char"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a complete params file (same schema as params.yaml)")
    args = parser.parse_args()

    from char_rnn import stages
    from char_rnn.layout import Layout
    from char_rnn.params import load_params

    params = load_params(args.config)
    root = Path(tempfile.mkdtemp(prefix="char-rnn-quality-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        shutil.copy(args.config, root / "params.yaml")
        layout = Layout(root)
        timings: dict[str, float] = {}
        for stage in stages.STAGES:
            started = time.perf_counter()
            stage.run(params, layout)
            timings[stage.name] = time.perf_counter() - started
        metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
        tuned = (json.loads(layout.hybrid.read_text(encoding="utf-8")).get("dynamic") or {}).get("tune_bits_per_char")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args.config, params, metrics, timings, tuned)


def report(config: Path, params, metrics: dict, timings: dict[str, float], tuned: dict | None) -> None:
    kn = metrics["ngram_bits_per_char"]
    print(
        f"config {config}: corpus {params.corpus.source}, {params.model.cell.value}({params.model.units})"
        f" x{params.model.layers}, window {params.window.length}/{params.window.stride},"
        f" {metrics['epochs']} of {params.train.epochs} epochs, train + tune + refit"
        f" {(timings['train'] + timings['tune'] + timings['refit']) / 60:.1f} min"
    )
    print(f"scored: {metrics['heldout_chars']} validation characters, each once ({metrics['bits_per_char_method']})")
    print(f"{'model':<10} {'bits/char':>9} {'vs n-gram':>10} {'goal':>6}")
    goals = GOALS.get(params.corpus.source, {})
    for label, key in ROWS:
        if key in metrics:
            goal = goals[key] * kn if key in goals else None
            verdict = "" if goal is None else f"<={goal:.4f} {'met' if metrics[key] <= goal else 'NOT met'}"
            print(f"{label:<10} {metrics[key]:>9.4f} {metrics[key] / kn - 1:>+10.2%} {verdict}")
    if "hybrid_weight_rnn" in metrics:
        weights = ", ".join(f"{part} {metrics[f'hybrid_weight_{part}']:.3f}" for part in ("rnn", "ngram", "cache"))
        print(f"hybrid weights (fitted on the tuning slice): {weights}")
    if "dynamic_rate" in metrics:
        print(
            f"dynamic evaluation: SGD rate {metrics['dynamic_rate']} (chosen on the tuning slice),"
            f" segments of {params.tune.dynamic_segment}, evaluate {timings['evaluate'] / 60:.1f} min"
        )
        print(
            "tuning slice bits/char by rate:",
            ", ".join(f"{rate} {'diverged' if bits is None else f'{bits:.4f}'}" for rate, bits in tuned.items()),
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
