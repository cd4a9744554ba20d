"""Generation speed: cold-start wall of `char-rnn generate`, and warm characters/s of the NumPy runtime,
the hybrid's mixture loop and Keras re-running `model.predict` over the window per character.

    .venv/bin/python benchmarks/generate_speed.py                       # the champion of the project here
    .venv/bin/python benchmarks/generate_speed.py --model models/model.keras --vocab data/vocab.json
    .venv/bin/python benchmarks/generate_speed.py --project /tmp/seed --hybrid-project /tmp/kolaw

Models: the RNN is `--model` (a models:/ URI or a local .keras file with `--vocab`; default
`models:/<registry.model_name>@champion` of `--project`, the project around the working directory);
the hybrid is `--hybrid-model` (default: the champion of `--hybrid-project`, which must hold a
registered hybrid, e.g. one built by `serve_load.py --prepare hybrid DIR`). Without a hybrid project
the hybrid rows are skipped, and the mixture is the RNN mixed with a 5-gram fitted here on the
project's corpus (weights 0.45 / 0.45 / 0.1, cache 100), which shows the mixture loop's cost but is
not the registered hybrid. Each project's own MLflow store is used (sqlite under its mlruns/);
MLFLOW_TRACKING_URI is ignored.

(a) Cold start: `char-rnn generate -m <model> -p <prompt> --length 100 --temperature 0` (RNN) and
`--length 1000` (hybrid), each a fresh process in its project, wall from start to exit, best of
`--repeats` (default 5), with the text it printed. Then the same command once under
`python -X importtime`, to show which imports the start-up pays for, and `char-rnn --help` as the
floor of any command. Goals (the issue): <= 2 s for 100 characters from the seed champion; <= 3 s
for 1000 characters from the kolaw hybrid (a local .keras file is timed too, but the goal is about
the champion, which is read from the registry).

(b) Warm, in this process, after one warm-up call each, taken in turn (the RNN alone and its mixture
best of 7, since their ratio is a goal; the naive pair once each), greedy, `--chars` characters
(default 1000) from one prompt:
- NumPy runtime: `Generator(model, chars).generate(...)` (an ensemble steps all members at once);
- mixture loop: the same Generator with the hybrid's `Mixture` (RNN + n-gram + cache per character),
  its n-gram's memo (`ngram.Memo`) emptied before every call, so each text is generated for the first
  time; greedy, then both again sampled (temperature 1, a new seed per round, the same for both);
- naive, for reference: the Keras model re-run over the last `window.length` ids per character with
  `model.predict` (the blog's way of generating), and with `model(x)`; `--naive-chars` characters
  (default 100: these run at tens of characters per second).
Goals: the mixture costs <= 1.3x the same ensemble generating alone (ensemble chars/s / mixture
chars/s); the RNN's NumPy runtime >= 10x `model.predict` and >= 1,000 chars/s (the earlier goal).
Exits 1 when a goal that was measured is missed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flow_overhead import VENV_BIN, child_env

from char_rnn.generate import Generator, Mixture, Sampling, load_generator
from char_rnn.layout import find_root
from char_rnn.params import Params, load_params

GOAL_COLD = {"rnn": (100, 2.0), "hybrid": (1000, 3.0)}  # (characters, seconds)
GOAL_MIXTURE = 1.3
GOAL_RATIO, GOAL_RATE = 10.0, 1_000.0


@dataclass
class Subject:
    """A model to measure: its label, how `char-rnn generate` names it, its project, and loaded files."""

    label: str
    model_arg: list[str]  # -m ... (and --vocab ...) for the command line
    project: Path
    params: Params
    files: dict[str, Path]  # model, vocab (and ngram, hybrid)


def store_uri(project: Path) -> str:
    """The project's own store. Not `tracking.tracking_uri`: that prefers MLFLOW_TRACKING_URI, which
    `mlflow.set_tracking_uri` sets, so the second project would be read from the first one's store."""
    return f"sqlite:///{(project / 'mlruns' / 'mlflow.db').resolve()}"


def subject(label: str, project: Path, model: str | None, vocab: Path | None, tmp: Path) -> Subject:
    """Resolve the model to local files: a .keras file as given, a models:/ URI downloaded from the project's store."""
    params = load_params(project / "params.yaml")
    model = model or f"models:/{params.registry.model_name}@champion"
    if not model.startswith("models:/"):
        vocab = (vocab or project / "data" / "vocab.json").resolve()
        path = Path(model).resolve()
        files = {"model": path, "vocab": vocab}
        label = f"{label} (local file {path}; the cold-start goal is for the registered champion)"
        return Subject(label, ["-m", str(path), "--vocab", str(vocab)], project, params, files)
    import mlflow
    from mlflow.models import Model

    from char_rnn.bundle import bundle_files
    from char_rnn.registry import resolve_version

    mlflow.set_tracking_uri(store_uri(project))
    version = resolve_version(model)
    dest = tmp / label
    dest.mkdir()
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(dest)
        )
    )
    bundled = Model.load(str(local)).flavors["python_function"]["artifacts"]
    files = bundle_files({name: entry["path"] for name, entry in bundled.items()}, local)
    return Subject(f"{label} ({model} = version {version.version})", ["-m", model], project, params, files)


# ---- (a) cold start -----------------------------------------------------------------------------------


def cold(subject: Subject, prompt: str, length: int, repeats: int) -> tuple[float, str]:
    """Best wall of `char-rnn generate` as a fresh process, and the text it printed."""
    command = [str(VENV_BIN / "char-rnn"), "generate", *subject.model_arg, "-p", prompt]
    command += ["--length", str(length), "--temperature", "0"]
    walls, texts = [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=subject.project, env=child_env(), capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
        texts.add(done.stdout.rstrip("\n"))
    print(f"  $ {' '.join(command[1:])}   (cwd {subject.project})")
    print(
        f"  walls: {', '.join(f'{w:.2f}' for w in walls)} s; same text every run: {'yes' if len(texts) == 1 else 'NO'}"
    )
    importtime(command, subject.project)
    return min(walls), sorted(texts)[0]


def importtime(command: list[str], cwd: Path, top: int = 6) -> None:
    """The same command once under `python -X importtime`: total import time and the costliest top-level imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command], cwd=cwd, env=child_env(), capture_output=True, text=True
    )
    rows = []
    for line in done.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if found and not found.group(3):  # not indented: imported by the program itself, cumulative time its own
            rows.append((int(found.group(2)) / 1e6, found.group(4)))
    total = sum(seconds for seconds, _ in rows)
    costly = ", ".join(f"{name} {seconds:.2f}" for seconds, name in sorted(rows, reverse=True)[:top])
    print(f"  imports (python -X importtime, one run): {total:.2f} s in all; costliest: {costly}")


def cold_section(subjects: dict[str, Subject], prompt_of: Callable[[Subject], str], repeats: int) -> list[bool]:
    print("(a) cold start: `char-rnn generate` as a fresh process, start to exit")
    help_start = time.perf_counter()
    subprocess.run([str(VENV_BIN / "char-rnn"), "--help"], env=child_env(), capture_output=True, check=True)
    print(f"  floor: `char-rnn --help` {time.perf_counter() - help_start:.2f} s (one run)")
    met = []
    for kind, subject in subjects.items():
        length, goal = GOAL_COLD[kind]
        print(f"{subject.label}: {length} characters, greedy")
        best, text = cold(subject, prompt_of(subject), length, repeats)
        ok = best <= goal
        met.append(ok)
        print(f"  best of {repeats}: {best:.2f} s (goal <= {goal:g} s: {'met' if ok else 'NOT met'})")
        print(f"  text: {text}")
    print()
    return met


# ---- (b) warm -----------------------------------------------------------------------------------------


def interleaved(runs: list[Callable[[int], object]], chars: int, rounds: int = 7) -> list[float]:
    """Characters per second of each run, best of `rounds` taken in turn (a, b, a, b, ...) after one
    warm-up call each: this machine's speed drifts by 20-30 % within minutes, so two figures taken one
    after the other also measure the drift, and their ratio with it."""
    for run in runs:
        run(min(chars, 5))
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run(chars)
            best[i] = min(best[i], time.perf_counter() - start)
    return [chars / seconds for seconds in best]


def greedy(n: int) -> Sampling:
    return Sampling(length=n, temperature=0.0)


def naive(model: Any, prompt_ids: list[int], chars: int, window: int, predict: bool = True) -> list[int]:
    """The blog-style loop: run the Keras model over the last `window` ids, keep the last step's argmax.

    `predict=False` calls the model directly, which skips `predict`'s per-call set-up: still one
    forward pass over the whole window per character, a fairer floor for the naive approach.
    """
    import numpy as np

    ids = list(prompt_ids)
    for _ in range(chars):
        batch = np.asarray([ids[-window:]], dtype=np.int32)
        probs = model.predict(batch, verbose=0) if predict else np.asarray(model(batch, training=False))
        ids.append(int(np.argmax(probs[0, -1])))
    return ids[len(prompt_ids) :]


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null meanwhile (native code writes there, below Python's sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def fitted_mixture(generator: Generator, project: Path, params: Params) -> Mixture:
    """No hybrid given: the RNN with a 5-gram fitted on the project's corpus and a cache, as the old benchmark did."""
    from char_rnn.corpus import read_corpus
    from char_rnn.hybrid import Weights
    from char_rnn.ngram import KneserNey
    from char_rnn.windows import encode

    corpus = project / "data" / "corpus.txt"
    text = read_corpus(corpus) if corpus.is_file() else params.evaluate.prompt * (params.baseline.order + 2)
    known = "".join(c for c in text if c in set(generator.chars))
    ngram = KneserNey.fit(encode(known, generator.chars), len(generator.chars), params.baseline.order)
    return Mixture(ngram, Weights(0.45, 0.45, 0.1, cache_window=100))


def mixture_of(generator: Generator, subject: Subject) -> tuple[Generator, str]:
    """The registered hybrid's mixture when the bundle has one, else the RNN with a fitted 5-gram and cache."""
    if generator.mixture is not None:
        return generator, "the registered hybrid's n-gram, cache and weights"
    mixture = fitted_mixture(generator, subject.project, subject.params)
    return Generator(generator.model, generator.chars, mixture), (
        "a 5-gram fitted here on the corpus and a cache of 100 (not a registered hybrid)"
    )


def numpy_rows(subject: Subject, prompt: str, chars: int) -> tuple[Generator, float, bool | None]:
    """The RNN (ensemble) alone and its mixture through the NumPy runtime: (generator, alone chars/s,
    mixture goal met, or None when the mixture is not a registered hybrid's)."""
    generator = load_generator(subject.files)
    alone = Generator(generator.model, generator.chars)
    members = generator.model.members
    mixture, origin = mixture_of(generator, subject)
    w = mixture.mixture.weights
    seeds = itertools.count()

    def sampled(n: int) -> Sampling:  # the same seed for the RNN alone and the mixture of one round
        return Sampling(length=n, temperature=1.0, seed=next(seeds) // 2)

    def first_time(generate: Callable[[int], Any]) -> Callable[[int], Any]:
        """The n-gram's memo emptied before each call: a text generated for the first time."""
        return lambda n: (mixture.mixture.ngram.memo.clear(), generate(n))

    fast, mixed = interleaved(
        [lambda n: alone.generate(prompt, greedy(n)), first_time(lambda n: mixture.generate(prompt, greedy(n)))], chars
    )
    fast_sampled, mixed_sampled = interleaved(
        [lambda n: alone.generate(prompt, sampled(n)), first_time(lambda n: mixture.generate(prompt, sampled(n)))],
        chars,
    )
    print(f"{subject.label}: {members} member(s), vocabulary {len(generator.chars)}, prompt {prompt!r}")
    print(f"  NumPy runtime, the RNN{' ensemble' if members > 1 else ''} alone: {fast:10,.0f} chars/s")
    print(f"  mixture loop (Generator with a Mixture):       {mixed:10,.0f} chars/s")
    print(f"    mixture: {origin}; weights rnn/n-gram/cache {w.rnn:.3f}/{w.ngram:.3f}/{w.cache:.3f}")
    print(
        f"  sampled (temperature 1, a new seed per round): alone {fast_sampled:,.0f}, mixture {mixed_sampled:,.0f}"
        f" chars/s: {fast_sampled / mixed_sampled:.2f}x"
    )
    cost, ok = fast / mixed, None
    if generator.mixture is not None:
        ok = cost <= GOAL_MIXTURE
        verdict = f"goal <= {GOAL_MIXTURE}x: {'met' if ok else 'NOT met'}"
    else:
        verdict = f"for reference; the goal <= {GOAL_MIXTURE}x is for the registered hybrid"
    print(f"  mixture costs {cost:.2f}x the same {'ensemble' if members > 1 else 'RNN'} alone, greedy ({verdict})")
    return generator, fast, ok


def naive_row(subject: Subject, generator: Generator, prompt: str, fast: float, chars: int) -> float:
    """Keras re-run over the window per character (the blog's way); returns NumPy runtime / model.predict."""
    from char_rnn.model import load_model

    window = subject.params.window.length
    index = {c: i for i, c in enumerate(generator.chars)}
    ids = [index[c] for c in prompt if c in index]
    with quiet_stderr():  # TensorFlow's absl/oneDNN lines at its first ops, whatever TF_CPP_MIN_LOG_LEVEL says
        model = load_model(str(subject.files["model"]))
        slow, called = interleaved(
            [lambda n: naive(model, ids, n, window), lambda n: naive(model, ids, n, window, False)], chars, rounds=1
        )
    print(f"{subject.label}, naive Keras over the last {window} ids per character (for reference):")
    print(f"  model.predict: {slow:8.1f} chars/s; model(x): {called:8.1f} chars/s")
    print(f"  NumPy runtime / model.predict: {fast / slow:,.0f}x; / model(x): {fast / called:,.0f}x")
    return fast / slow


def warm_section(
    subjects: dict[str, Subject], prompt_of: Callable[[Subject], str], args: argparse.Namespace
) -> list[bool]:
    print(
        f"(b) warm, in one process: greedy, {args.chars} characters per call (naive: {args.naive_chars}),"
        " in turn (alone and mixture: best of 7; naive: once each)"
    )
    measured = {kind: numpy_rows(subject, prompt_of(subject), args.chars) for kind, subject in subjects.items()}
    met = [ok for _, _, ok in measured.values() if ok is not None]
    if args.naive_chars > 0:
        from char_rnn.quiet import import_tensorflow

        import_tensorflow()  # first, with its start-up lines hidden: char_rnn.model imports Keras
        for kind, subject in subjects.items():
            generator, fast, _ = measured[kind]
            ratio = naive_row(subject, generator, prompt_of(subject), fast, args.naive_chars)
            if kind == "rnn":
                ok = ratio >= GOAL_RATIO and fast >= GOAL_RATE
                met.append(ok)
                print(f"  goal >= {GOAL_RATIO:g}x and >= {GOAL_RATE:,.0f} chars/s: {'met' if ok else 'NOT met'}")
    print()
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--project", type=Path, help="the RNN's project (default: the one around the working directory)"
    )
    parser.add_argument("--model", help="models:/ URI or .keras file (default: models:/<registry.model_name>@champion)")
    parser.add_argument(
        "--vocab", type=Path, help="vocabulary of a local .keras model (default: <project>/data/vocab.json)"
    )
    parser.add_argument("--hybrid-project", type=Path, help="a project whose champion is a hybrid (default: none)")
    parser.add_argument("--hybrid-model", help="models:/ URI of the hybrid (default: its project's champion)")
    parser.add_argument("--prompt", help="default: evaluate.prompt of each model's project")
    parser.add_argument("--repeats", type=int, default=5, help="cold starts per model; the best counts")
    parser.add_argument("--chars", type=int, default=1_000, help="characters per warm call")
    parser.add_argument("--naive-chars", type=int, default=100, help="characters per naive Keras call; 0: skip")
    parser.add_argument("--no-cold", action="store_true", help="skip (a)")
    parser.add_argument("--no-warm", action="store_true", help="skip (b)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow is imported, for the naive rows
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each project's own store

    with tempfile.TemporaryDirectory(prefix="generate-speed-") as tmp:
        subjects = {"rnn": subject("RNN", (args.project or find_root()).resolve(), args.model, args.vocab, Path(tmp))}
        if args.hybrid_project or args.hybrid_model:
            project = (args.hybrid_project or find_root()).resolve()
            subjects["hybrid"] = subject("hybrid", project, args.hybrid_model, None, Path(tmp))
            if "ngram" not in subjects["hybrid"].files:
                sys.exit(f"{subjects['hybrid'].label} is not a hybrid: its bundle has no n-gram")
        else:
            print("no --hybrid-project: the hybrid rows are skipped; the mixture row uses the RNN and a fitted 5-gram")
        prompt_of = lambda s: args.prompt or s.params.evaluate.prompt  # noqa: E731
        met = [] if args.no_cold else cold_section(subjects, prompt_of, args.repeats)
        met += [] if args.no_warm else warm_section(subjects, prompt_of, args)
    print("every goal measured: met" if all(met) else f"goals missed: {met.count(False)} of {len(met)}")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
