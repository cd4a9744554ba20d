"""Text generation: prompt in, characters of the vocabulary out, one character per model step.

Generation runs the trained weights in NumPy (`char_rnn.inference`): the `.keras` file is read
without TensorFlow, so a command or a served model starts in about a second, and each character is
a few small matrix products with the recurrent state carried from step to step, never a re-run of
the model over the text.

With a `Mixture` (the registered hybrid), every character is drawn from `w_rnn * p_rnn + w_kn * p_kn
+ w_cache * p_cache`: the RNN's distribution mixed with the Kneser-Ney n-gram's and the cache's after
the same text, the distribution that was scored.

Prompt policy: characters outside the vocabulary are dropped and reported, never guessed; a prompt
with no known character is refused. Output ids index the vocabulary, so output is vocabulary only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from char_rnn import cache, inference
from char_rnn.errors import PipelineError
from char_rnn.hybrid import Weights, load_hybrid
from char_rnn.inference import NumpyModel, pick
from char_rnn.lineage import verify_sha256
from char_rnn.ngram import KneserNey, Suffixes
from char_rnn.windows import load_vocab

log = logging.getLogger(__name__)

MAX_LENGTH = 10_000
MAX_SAMPLES = 100


class GenerationError(PipelineError):
    """The request cannot be generated: bad sampling values, or no prompt character in the vocabulary."""


@dataclass(frozen=True)
class Sampling:
    """How to continue a prompt; `seed=None` draws fresh randomness, a seed makes the text repeatable."""

    length: int = 100
    temperature: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.length <= MAX_LENGTH:
            raise GenerationError(f"length must be between 1 and {MAX_LENGTH}, got {self.length}")
        if not self.temperature >= 0:  # also refuses NaN
            raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = every character), got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GenerationError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")


@dataclass(frozen=True)
class Generation:
    prompt: str  # the prompt as used: its characters outside the vocabulary removed
    dropped: str  # those removed characters, each once, in code-point order
    texts: list[str]  # one continuation per sample, without the prompt


@dataclass(frozen=True)
class Row:
    """One request of a batch: its prompt's ids, how to continue it, and its prompt as used."""

    ids: np.ndarray
    sampling: Sampling
    start: Generation  # prompt and dropped characters; no text yet


@dataclass(frozen=True)
class Mixture:
    """The hybrid's n-gram and its weights (RNN, n-gram, cache), as the tune stage fitted them."""

    ngram: KneserNey
    weights: Weights

    def mix(self, p_rnn: np.ndarray, suffixes: Suffixes, recent: cache.Recent | None) -> np.ndarray:
        """(batch, vocab) mixture after each row's text so far (its n-gram `suffixes`; `recent`, the cache)."""
        p_cache = recent.distribution() if recent is not None else None
        return self.weights.mix(p_rnn, suffixes.distributions(), p_cache)


def known_prompt(prompt: str, chars: list[str]) -> tuple[str, str]:
    """The policy for prompt characters outside the vocabulary: dropped and reported, never guessed."""
    vocab = set(chars)
    return "".join(c for c in prompt if c in vocab), "".join(sorted({c for c in prompt if c not in vocab}))


def seed_of(sampling: Sampling) -> int:
    return secrets.randbelow(2**62) if sampling.seed is None else sampling.seed


class Generator:
    """A model run in NumPy and its vocabulary (and, for the hybrid, the mixture): what the CLI, the
    evaluate stage's sample, the champion gate and the served pyfunc generate and score with."""

    def __init__(self, model: NumpyModel, chars: list[str], mixture: Mixture | None = None) -> None:
        if model.vocab_size != len(chars):
            raise GenerationError(
                f"the vocabulary has {len(chars)} characters but the model predicts {model.vocab_size}"
            )
        if mixture is not None and mixture.ngram.vocab_size != len(chars):
            raise GenerationError(
                f"the n-gram knows {mixture.ngram.vocab_size} characters, the vocabulary {len(chars)}"
            )
        self.model = model
        self.chars = chars
        self.mixture = mixture
        self._index = {c: i for i, c in enumerate(chars)}

    def char_probabilities(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray:
        """P(ids[t]) for t in [start, end) under what this generator samples from: the RNN, or the
        mixture with the n-gram and the cache; held-out scoring (`char_rnn.heldout`) with `context`."""
        from char_rnn.heldout import rnn_char_probabilities

        p_rnn = rnn_char_probabilities(self.model, ids, start, end, warmup=context)
        if self.mixture is None:
            return p_rnn
        weights, p_kn = self.mixture.weights, self.mixture.ngram.char_probabilities(ids, start, end)
        p_cache = cache.char_probabilities(ids, start, end, weights.cache_window) if weights.cache_window else None
        return weights.mix(p_rnn, p_kn, p_cache)

    def char_hits(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray:
        """Greedy accuracy per character of the RNN (accuracy is a figure of the RNN alone)."""
        from char_rnn.heldout import rnn_char_hits

        return rnn_char_hits(self.model, ids, start, end, warmup=context)

    def generate(self, prompt: str, sampling: Sampling, num_samples: int = 1) -> Generation:
        """`num_samples` continuations of `prompt`, computed together as one batch."""
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise GenerationError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
        row, s = self.prepare(prompt, sampling), sampling
        prompt_ids = row.ids.tolist()
        if self.mixture is None:
            out = self.model.run(prompt_ids, num_samples, s.length, s.temperature, s.top_k, seed_of(s))
        else:
            out = self._run_mixture(prompt_ids, num_samples, sampling)
        texts = ["".join(self.chars[i] for i in ids) for ids in out]
        return Generation(prompt=row.start.prompt, dropped=row.start.dropped, texts=texts)

    def prepare(self, prompt: str, sampling: Sampling) -> Row:
        """A request checked and turned into ids, before it joins a batch (so a bad one fails alone)."""
        kept, dropped = known_prompt(prompt, self.chars)
        if not kept:
            raise GenerationError(f"no character of the prompt {prompt!r} is in the model's vocabulary")
        return Row(np.array([self._index[c] for c in kept]), sampling, Generation(kept, dropped, []))

    def _run_mixture(self, prompt_ids: list[int], batch: int, sampling: Sampling) -> np.ndarray:
        """As `NumpyModel.run`, each character drawn from the mixture after the text so far."""
        rng = np.random.default_rng(seed_of(sampling))
        text = np.empty((batch, len(prompt_ids) + sampling.length), dtype=np.int32)
        text[:, : len(prompt_ids)] = prompt_ids
        self.mixture_loop(
            text, len(prompt_ids), lambda mixed, n: pick(mixed, sampling.temperature, sampling.top_k, rng)
        )
        return text[:, len(prompt_ids) :]

    def mixture_loop(self, text: np.ndarray, prompt: int, choose: Callable[[np.ndarray, int], np.ndarray]) -> None:
        """Fills text[:, prompt:] column by column with `choose(the mixture after text[:, :n], n)`.

        Sampling chooses by drawing; a test chooses the true text, to check that this loop's
        distributions are the ones held-out scoring measured (`char_probabilities`).
        """
        assert self.mixture is not None
        mixture, window = self.mixture, self.mixture.weights.cache_window
        recent = cache.Recent(text[:, :prompt], self.model.vocab_size, window) if window else None
        suffixes = Suffixes(mixture.ngram, text[:, :prompt])
        states = self.model.initial_state(len(text))
        for t in range(prompt):
            probs, states = self.model.step(text[:, t], states)
        for n in range(prompt, text.shape[1]):
            text[:, n] = choose(mixture.mix(probs, suffixes, recent), n)
            suffixes.push(text[:, n])
            if recent is not None:
                recent.push(text[:, n])
            probs, states = self.model.step(text[:, n], states)


def sample(generator: Generator, prompt: str, length: int, temperature: float, seed: int) -> Generation:
    """One continuation of `prompt`, as the evaluate stage writes its sample (dropped characters logged)."""
    result = generator.generate(prompt, Sampling(length, temperature, seed=seed))
    if result.dropped:
        log.warning("prompt characters not in the vocabulary were dropped: %s", result.dropped)
    return result


def load_mixture(ngram_path: Path, hybrid_path: Path) -> Mixture:
    """The n-gram file and the tune stage's hybrid.json; refused when no weights were fitted."""
    hybrid = load_hybrid(hybrid_path)
    if hybrid.weights is None:
        raise GenerationError(f"{hybrid_path}: no hybrid weights were fitted (the split has no tuning slice)")
    ngram = KneserNey.load(ngram_path)
    if hybrid.ngram_order is not None and ngram.order != hybrid.ngram_order:
        raise GenerationError(
            f"{hybrid_path}: the weights were fitted against a {hybrid.ngram_order}-gram but {ngram_path.name}"
            f" is a {ngram.order}-gram; rerun the baseline and tune stages"
        )
    return Mixture(ngram, hybrid.weights)


def load_generator(files: dict[str, Path], digests: dict[str, str | None] | None = None) -> Generator:
    """`files`: model and vocab, plus ngram and hybrid for the mixture. Each file is checked against its
    recorded sha256 first (when `digests` is given); the model is read by the NumPy runtime, which
    accepts only this project's architecture and unpickles nothing."""
    if digests is not None:
        for name, path in files.items():
            verify_sha256(path, digests.get(name))
    mixture = load_mixture(files["ngram"], files["hybrid"]) if "ngram" in files else None
    return Generator(inference.load(files["model"]), load_vocab(files["vocab"]), mixture)
