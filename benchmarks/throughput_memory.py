"""Training throughput and peak memory: the blog's one-hot arrays against our streamed integer ids.

    .venv/bin/python benchmarks/throughput_memory.py [--epochs 3] [--repeats 3]

Both train the blog's model (SimpleRNN(100), one-hot input, window 20, stride 1, batch 32, Adam) on
every window of kolaw (18,884 characters, 380 distinct), for the same number of epochs:

- blog: `to_categorical` input and target arrays (windows x 20 x V, float64), `categorical_crossentropy`,
  `model.fit(x_onehot, y_onehot)`, exactly as in the blog post;
- ours: what `char_rnn.training.fit` does (seeded and deterministic, `window_dataset` streaming int ids,
  `build_model` with the in-model OneHot, sparse cross-entropy), without its MLflow epoch logger.

A third run trains ours on a 1,000,000-character corpus (kolaw repeated) for the same number of
steps as the kolaw run (each epoch cut to kolaw's steps with `take`), so the two peak RSS differ only
by what the corpus size costs. Each run is a child process, so its peak RSS (`ru_maxrss`) is its own.
chars/s counts predicted characters (windows x 20 per epoch) over the time spent in `fit`. Timings
on this kind of machine vary by 20-40 % from run to run, so the three runs are repeated in turn
(blog, ours, ours-1m, blog, ...) and each reports its best: the fastest fit and its own peak RSS.
Goals (issue 5): ours >= 2.5x the blog's chars/s, <= 1/5 of its peak RSS, and 1M vs kolaw < 100 MiB apart;
(issue 16) ours >= 4x the blog's chars/s.

Where the time goes: each run's chars/s times the floating-point operations of one predicted
character (the one-hot model's matmuls, forward and backward: 3 x 2 x (V x U + U x U + U x V))
gives the GFLOP/s it achieved, printed next to this machine's float32 matmul peak as TensorFlow
reaches it (a 2048 x 2048 product, and the model's own shapes: a batch of 32 x 20 one-hot rows times
the kernel, and one step's 32 x 100 by 100 x 100 recurrence), measured in another child process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LENGTH, BATCH, UNITS, SEED = 20, 32, 100, 42
MILLION = 1_000_000


def kolaw_ids(n_chars: int | None = None) -> tuple[np.ndarray, int]:
    """kolaw as ids (vocabulary of kolaw itself), repeated and cut to n_chars when asked."""
    from char_rnn.corpus import read_source
    from char_rnn.windows import build_vocab, encode

    text = read_source("kolaw", REPO)
    if n_chars is not None:
        text = (text * (n_chars // len(text) + 1))[:n_chars]
    chars = build_vocab(text)
    return encode(text, chars), len(chars)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_blog(epochs: int) -> dict[str, float]:
    """The blog's code, with kolaw instead of its sentence."""
    import keras
    from keras import layers

    ids, vocab_size = kolaw_ids()
    keras.utils.set_random_seed(SEED)
    datax = [ids[i : i + LENGTH].tolist() for i in range(len(ids) - LENGTH)]
    datay = [ids[i + 1 : i + LENGTH + 1].tolist() for i in range(len(ids) - LENGTH)]
    x_onehot = keras.utils.to_categorical(datax, vocab_size)
    y_onehot = keras.utils.to_categorical(datay, vocab_size)
    inputs = keras.Input(shape=(LENGTH, vocab_size))
    x = layers.SimpleRNN(units=UNITS, return_sequences=True)(inputs)
    outputs = layers.TimeDistributed(layers.Dense(units=vocab_size, activation="softmax"))(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = epoch_timer()
    start = time.perf_counter()
    model.fit(x_onehot, y_onehot, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - start
    array_mib = (x_onehot.nbytes + y_onehot.nbytes) / 2**20
    return {"windows": len(datax), "fit_s": seconds, "later_epochs_s": timer.later, "array_mib": array_mib}


def run_ours(epochs: int, n_chars: int | None, steps: int | None) -> dict[str, float]:
    """`char_rnn.training.fit`'s recipe; `steps` cuts every epoch to that many batches."""
    import keras

    from char_rnn.model import build_model, compile_model
    from char_rnn.params import load_params
    from char_rnn.training import seed_everything
    from char_rnn.windows import count_windows, window_dataset

    ids, vocab_size = kolaw_ids(n_chars)
    seed_everything(SEED)
    params = load_params(REPO / "params.yaml")  # the blog's model: SimpleRNN(100), one-hot, Adam 0.001
    windows = count_windows(len(ids), LENGTH, 1)
    model = build_model(params.model, vocab_size)
    compile_model(model, params.train, steps_per_epoch=-(-windows // BATCH))
    data = window_dataset(ids, LENGTH, 1, BATCH, shuffle_seed=SEED)
    if steps is not None:
        data, windows = data.take(steps), min(windows, steps * BATCH)
    timer = epoch_timer()
    start = time.perf_counter()
    model.fit(data, epochs=epochs, callbacks=[keras.callbacks.TerminateOnNaN(), timer], shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    return {"windows": windows, "fit_s": seconds, "later_epochs_s": timer.later, "array_mib": ids.nbytes / 2**20}


def epoch_timer() -> Any:
    """Seconds of the epochs after the first: the steady rate, without the first epoch's tracing,
    which both sides pay once per process."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.start)

        @property
        def later(self) -> float:
            return sum(self.seconds[1:])

    return EpochTimer()


def training_flop_per_char(vocab_size: int) -> float:
    """One predicted character's matmul FLOP in training, one-hot input: forward 2(VU + UU + UV), x 3 with backward."""
    return 3 * 2 * (vocab_size * UNITS + UNITS * UNITS + UNITS * vocab_size)


def matmul_peak() -> dict[str, float]:
    """GFLOP/s of TensorFlow float32 matmuls on this machine: a large square product and the model's shapes."""
    import tensorflow as tf

    _, vocab_size = kolaw_ids()
    shapes = {"2048x2048x2048": (2048, 2048, 2048), "onehot_640x380x100": (BATCH * LENGTH, vocab_size, UNITS)}
    shapes["recurrence_32x100x100"] = (BATCH, UNITS, UNITS)
    result = {}
    for name, (m, k, n) in shapes.items():
        a, b = tf.random.normal((m, k)), tf.random.normal((k, n))
        product = tf.function(lambda a, b: tf.matmul(a, b))
        product(a, b).numpy()
        calls = max(3, int(2e10 / (2 * m * k * n)))
        start = time.perf_counter()
        for _ in range(calls):
            out = product(a, b)
        out.numpy()
        result[name] = 2 * m * k * n * calls / (time.perf_counter() - start) / 1e9
    return result


def child(kind: str, epochs: int) -> None:
    """Runs in its own process; prints one JSON line that the parent reads."""
    if kind == "peak":
        print("RESULT " + json.dumps(matmul_peak()), flush=True)
        return
    result = {
        "blog": lambda: run_blog(epochs),
        "ours": lambda: run_ours(epochs, None, None),
        "ours-1m": lambda: run_ours(epochs, MILLION, -(-count_kolaw_windows() // BATCH)),
    }[kind]()
    result["chars_per_s"] = result["windows"] * LENGTH * epochs / result["fit_s"]
    result["steady_chars_per_s"] = result["windows"] * LENGTH * (epochs - 1) / result["later_epochs_s"]
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


def count_kolaw_windows() -> int:
    ids, _ = kolaw_ids()
    return len(ids) - LENGTH


def measure(kind: str, epochs: int) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--epochs", str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{kind} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = time.perf_counter() - start
    return result


def report(results: dict[str, dict[str, float]], epochs: int) -> None:
    print(
        f"\nSimpleRNN(100), one-hot, window {LENGTH}, batch {BATCH}, {epochs} epochs; each run in its own"
        " process; the best of the rounds"
    )
    header = f"{'run':<34}{'windows':>9}{'fit s':>8}{'chars/s':>10}{'steady':>9}{'data MiB':>10}{'peak RSS MiB':>14}"
    print(f"{header}{'wall s':>8}")
    names = {
        "blog": "blog: to_categorical, kolaw",
        "ours": "ours: streamed ids, kolaw",
        "ours-1m": "ours: streamed ids, 1M chars *",
    }
    for kind, r in results.items():
        print(
            f"{names[kind]:<34}{r['windows']:>9}{r['fit_s']:>8.1f}{r['chars_per_s']:>10.0f}{r['steady']:>9.0f}"
            f"{r['array_mib']:>10.1f}{r['peak_rss_mib']:>14.0f}{r['wall_s']:>8.1f}"
        )
    print("* same number of steps as kolaw (each epoch cut with take); the data are the 1M-char corpus")
    print("steady: chars/s of the epochs after the first (each side's best round), without the first epoch's tracing")
    blog, ours, big = results["blog"], results["ours"], results["ours-1m"]
    speed = ours["chars_per_s"] / blog["chars_per_s"]
    memory = ours["peak_rss_mib"] / blog["peak_rss_mib"]
    apart = big["peak_rss_mib"] - ours["peak_rss_mib"]
    print(f"\nthroughput ours / blog: {speed:.2f}x   (goal >= 2.5x: {'met' if speed >= 2.5 else 'NOT met'})")
    print(
        f"peak RSS ours / blog:   {memory:.3f} = 1/{1 / memory:.1f}"
        f"   (goal <= 1/5: {'met' if memory <= 0.2 else 'NOT met'})"
    )
    print(
        f"peak RSS 1M - kolaw:    {apart:+.0f} MiB   (goal < 100 MiB apart: {'met' if abs(apart) < 100 else 'NOT met'})"
    )
    steady = ours["steady"] / blog["steady"]
    for label, ratio in (("whole fit", speed), ("steady", steady)):
        verdict = "met" if ratio >= 4 else "NOT met"
        print(f"throughput ours / blog, {label}: {ratio:.2f}x   (issue 16 goal >= 4x: {verdict})")


def report_flops(results: dict[str, dict[str, float]], peak: dict[str, float]) -> None:
    _, vocab_size = kolaw_ids()
    flop = training_flop_per_char(vocab_size)
    print(f"\nmatmul FLOP per predicted character in training (one-hot arithmetic, V={vocab_size}): {flop:,.0f}")
    for kind, r in results.items():
        print(f"  {kind:<8} {r['chars_per_s'] * flop / 1e9:6.1f} GFLOP/s achieved")
    shapes = ", ".join(f"{name} {gflops:.1f}" for name, gflops in peak.items())
    print(f"TensorFlow float32 matmul on this machine, GFLOP/s: {shapes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the steady rate needs a second epoch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three runs; each reports its best")
    parser.add_argument("--child", choices=["blog", "ours", "ours-1m", "peak"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")
    if args.child:
        child(args.child, args.epochs)
        return
    rounds: dict[str, list[dict[str, float]]] = {"blog": [], "ours": [], "ours-1m": []}
    for round_ in range(1, args.repeats + 1):
        for kind, runs in rounds.items():
            runs.append(measure(kind, args.epochs))
            print(
                f"round {round_}: {kind:<8} {runs[-1]['chars_per_s']:>8.0f} chars/s,"
                f" peak RSS {runs[-1]['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    best = {kind: max(runs, key=lambda r: r["chars_per_s"]) for kind, runs in rounds.items()}
    for kind, runs in rounds.items():
        best[kind]["steady"] = max(r["steady_chars_per_s"] for r in runs)
    report(best, args.epochs)
    peak = measure("peak", args.epochs)
    peak.pop("wall_s")
    report_flops(best, peak)


if __name__ == "__main__":
    main()
