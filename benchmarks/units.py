"""Which units: the same config trained with each unit design, compared on the validation text.

    .venv/bin/python -m benchmarks.units benchmarks/configs/kolaw.yaml --min-counts 1 2 3 1000000000

Open units (`char_rnn.units`) give a character a unit of its own when the training text has it at
least `vocab.min_count` times and spell the others (Hangul syllables in jamo, anything else in UTF-8
bytes). `min_count` 1 leaves nothing spelled in training, so the spellings the held-out text needs
are never learnt; a huge one spells every character (jamo and bytes only: about two units per Korean
character). Each design is chosen on the validation text, never the test text, which is printed only
to show how far the choice carries. Optional overrides (`--set model.ensemble=1`) make it a cheaper
proxy of the config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.quality import overrides, run_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--min-counts", type=int, nargs="+", default=[1, 2, 3, 10**9])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", nargs="*", default=[], help="dotted overrides, e.g. model.ensemble=1")
    args = parser.parse_args()
    fixed = overrides(args.set)
    print("min_count | units | units/char train, val | val RNN | val n-gram | val hybrid | test hybrid | train min")
    for min_count in args.min_counts:
        run = run_once(args.config, args.seed, {**fixed, "vocab.units": "open", "vocab.min_count": min_count})
        spec, val, test = run["spec"], run["metrics"]["validation"], run["metrics"]["test"]
        ratios = [spec[f"{s}_units"] / spec[f"{s}_chars"] for s in ("train", "val")]
        print(
            f"{min_count} | {spec['vocab_size']} | {ratios[0]:.3f}, {ratios[1]:.3f} | {val['bits_per_char']:.4f} |"
            f" {val['ngram_bits_per_char']:.4f} | {val.get('hybrid_bits_per_char', float('nan')):.4f} |"
            f" {test.get('hybrid_bits_per_char', float('nan')):.4f} | {run['train_minutes']:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
