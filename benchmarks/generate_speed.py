"""Characters per second: the stateful step generator vs re-running `model.predict` over the window.

    python benchmarks/generate_speed.py [--chars 1000] [--model models/model.keras] [--vocab data/vocab.json]

Both generate greedily from the same prompt in one process, each after one warm-up call. Without a
trained model (no models/model.keras) an untrained one of params.yaml's shape is used: speed does
not depend on the weights. Exits 1 when the goal (>= 10x and >= 1,000 characters/s) is missed.
For reference it also times the hybrid's mixture loop (the RNN stepped from Python, mixed with a
Kneser-Ney n-gram of `baseline.order` fitted on the corpus and a 100-character cache), which has no
goal of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from char_rnn.corpus import read_corpus
from char_rnn.generate import Generator, Mixture, Sampling
from char_rnn.hybrid import Weights
from char_rnn.layout import Layout
from char_rnn.ngram import KneserNey
from char_rnn.params import load_params
from char_rnn.windows import build_vocab, encode, load_vocab

GOAL_RATIO, GOAL_RATE = 10.0, 1_000.0


def naive(model: Any, prompt_ids: list[int], chars: int, window: int, predict: bool = True) -> list[int]:
    """The blog-style loop: run the model over the last `window` ids, keep the last step's argmax.

    `predict=False` calls the model directly, which skips `predict`'s per-call set-up: still one
    forward pass over the whole window per character, but a fairer floor for the naive approach.
    """
    import numpy as np

    ids = list(prompt_ids)
    for _ in range(chars):
        batch = np.asarray([ids[-window:]], dtype=np.int32)
        probs = model.predict(batch, verbose=0) if predict else np.asarray(model(batch, training=False))
        ids.append(int(np.argmax(probs[0, -1])))
    return ids[len(prompt_ids) :]


def rate(run: Callable[[int], object], chars: int) -> float:
    start = time.perf_counter()
    run(chars)
    return chars / (time.perf_counter() - start)


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow is first imported, below
    layout = Layout.discover()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=1_000)
    parser.add_argument("--model", type=Path, default=layout.model)
    parser.add_argument("--vocab", type=Path, default=layout.vocab)
    args = parser.parse_args()
    params = load_params(layout.params)

    from char_rnn.model import build_model, load_model

    if args.model.is_file():
        model, chars, source = load_model(str(args.model)), load_vocab(args.vocab), str(args.model)
    else:
        text = read_corpus(layout.corpus) if layout.corpus.is_file() else params.evaluate.prompt
        chars = build_vocab(text)
        model, source = build_model(params.model, len(chars)), "untrained model of params.yaml's shape"
    prompt = "".join(c for c in params.evaluate.prompt if c in chars) or chars[0]
    index = {c: i for i, c in enumerate(chars)}
    generator = Generator(model, chars)
    greedy = lambda n: Sampling(length=n, temperature=0.0)  # noqa: E731

    prompt_ids, window = [index[c] for c in prompt], params.window.length
    generator.generate(prompt, greedy(5))  # traces the loop once
    naive(model, prompt_ids, 2, window)
    naive(model, prompt_ids, 2, window, predict=False)
    fast = rate(lambda n: generator.generate(prompt, greedy(n)), args.chars)
    slow = rate(lambda n: naive(model, prompt_ids, n, window), args.chars)
    called = rate(lambda n: naive(model, prompt_ids, n, window, predict=False), args.chars)
    text = read_corpus(layout.corpus) if layout.corpus.is_file() else prompt * (params.baseline.order + 2)
    ngram = KneserNey.fit(encode("".join(c for c in text if c in index), chars), len(chars), params.baseline.order)
    hybrid = Generator(model, chars, Mixture(ngram, Weights(0.45, 0.45, 0.1, cache_window=100)))
    hybrid.generate(prompt, greedy(5))
    mixed = rate(lambda n: hybrid.generate(prompt, greedy(n)), args.chars)
    ratio = fast / slow
    print(f"model: {source}; prompt {prompt!r}; {args.chars} characters each, greedy")
    print(f"stateful step generator:               {fast:10.1f} chars/s")
    print(f"naive, model.predict over the window:  {slow:10.1f} chars/s  (window = {window} characters)")
    print(f"naive, model(...) over the window:     {called:10.1f} chars/s  (for reference)")
    print(f"hybrid mixture, RNN + {params.baseline.order}-gram + cache:   {mixed:10.1f} chars/s  (for reference)")
    print(
        f"ratio vs model.predict: {ratio:.1f}x; vs model(...): {fast / called:.1f}x"
        f" (goal >= {GOAL_RATIO:.0f}x and >= {GOAL_RATE:,.0f} chars/s)"
    )
    met = ratio >= GOAL_RATIO and fast >= GOAL_RATE
    print("goal met" if met else "goal MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
