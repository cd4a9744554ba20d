"""Text generation: prompt in, text out, one unit (`char_rnn.units`) per model step.

Generation runs the trained weights in NumPy (`char_rnn.inference`): the `.keras` file is read
without TensorFlow, so a command or a served model starts in about a second, and each character is
a few small matrix products with the recurrent state carried from step to step, never a re-run of
the model over the text.

With a `Mixture` (the registered hybrid), every character is drawn from `w_rnn * p_rnn + w_kn * p_kn
+ w_cache * p_cache`: the RNN's distribution mixed with the Kneser-Ney n-gram's and the cache's after
the same text (the prompt and what was drawn), with the match model over it when it has one: the
distribution that was scored.

Prompt policy: a prompt is NFC-normalised like the corpus. Open units spell any prompt. With closed
units, characters outside the vocabulary are dropped and reported, never guessed, and a prompt with
no known character is refused. `length` counts characters: with open units a character takes one to
four draws, each allowed only where it continues a well-formed spelling (`units.Speller`), so the
text always decodes; it is returned NFC-normalised.
"""

from __future__ import annotations

import logging
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from collections.abc import Generator as Steps
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn import cache, inference, match
from char_rnn.errors import PipelineError
from char_rnn.hybrid import Weights, load_hybrid
from char_rnn.inference import NumpyModel, pick
from char_rnn.lineage import verify_sha256
from char_rnn.ngram import KneserNey, Suffixes
from char_rnn.units import CLOSED, Speller, Units, load_units

log = logging.getLogger(__name__)

MAX_LENGTH = 10_000
ALL = 1 << 62  # `Generator.reach`: every character before
MAX_SAMPLES = 100


class GenerationError(PipelineError):
    """The request cannot be generated: bad sampling values, or no prompt character the units can spell."""


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
    prompt: str  # the prompt as used: NFC, its characters outside a closed vocabulary removed
    dropped: str  # those removed characters, each once, in code-point order ('' with open units)
    texts: list[str]  # one continuation per sample, without the prompt


@dataclass(frozen=True)
class Row:
    """One request of a batch: its prompt's ids, how to continue it, and its prompt as used."""

    ids: np.ndarray
    sampling: Sampling
    start: Generation  # prompt and dropped characters; no text yet


@dataclass(frozen=True)
class Mixture:
    """The hybrid's n-gram and its weights (RNN, n-gram, cache; the match model's length), as tuned."""

    ngram: KneserNey
    weights: Weights


class MixtureRows:
    """What the mixture's parts keep of each row's text as generation appends a unit to each: the
    n-gram's suffixes and, when on, the cache's last characters and the match model's copy. Rows may
    start from prompts of different lengths (requests served together)."""

    def __init__(self, mixture: Mixture, prompts: Sequence[np.ndarray] | np.ndarray) -> None:
        weights, vocab_size = mixture.weights, mixture.ngram.vocab_size
        self.weights = weights
        self.suffixes = Suffixes.of_rows(mixture.ngram, prompts)
        self.recent = cache.Recent(prompts, vocab_size, weights.cache_window) if weights.cache else None
        self.matches = match.Matches(prompts, weights.match_min) if weights.match_min else None

    def mix(self, p_rnn: np.ndarray) -> np.ndarray:
        """(batch, vocab): the mixture after each row's text so far, and the match model over it."""
        p_cache = self.recent.distribution() if self.recent is not None else None
        mixed = self.weights.mix(p_rnn, self.suffixes.distributions(), p_cache)
        return mixed if self.matches is None else self.matches.distribution(mixed)

    def _parts(self) -> list[Any]:
        return [part for part in (self.suffixes, self.recent, self.matches) if part is not None]

    def push(self, ids: np.ndarray) -> None:
        for part in self._parts():
            part.push(ids)

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows from now on (the others' requests are done)."""
        for part in self._parts():
            part.keep(rows)

    def join(self, other: MixtureRows) -> MixtureRows:
        """`other`'s rows after these (requests that joined the batch)."""
        for mine, theirs in zip(self._parts(), other._parts(), strict=True):
            mine.join(theirs)
        return self


def seed_of(sampling: Sampling) -> int:
    return secrets.randbelow(2**62) if sampling.seed is None else sampling.seed


class Spelling:
    """Each row's spelling as its units are drawn: which units may come next, and how many characters
    are complete. A row is finished once it has `length` characters; a unit drawn past them (the
    one that told a syllable had no trailing consonant) is cut off when the text is decoded."""

    def __init__(self, speller: Speller, lengths: np.ndarray) -> None:
        self.speller = speller
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.state = np.zeros(len(self.lengths), dtype=np.int8)  # every prompt is whole characters
        self.chars = np.zeros(len(self.lengths), dtype=np.int64)
        self.units: list[list[int]] = [[] for _ in self.lengths]

    @property
    def finished(self) -> np.ndarray:
        return self.chars >= self.lengths

    def allowed(self) -> np.ndarray | None:
        """(rows, V): the units each row may draw next; None when every unit may (closed units)."""
        return None if len(self.speller.allowed) == 1 else self.speller.allowed[self.state]

    def take(self, chosen: np.ndarray) -> None:
        """Each unfinished row draws its unit; finished rows ignore theirs."""
        for row in np.flatnonzero(~self.finished):
            self.units[row].append(int(chosen[row]))
        going = ~self.finished
        self.chars[going] += self.speller.completes[self.state[going], chosen[going]]
        self.state[going] = self.speller.after[self.state[going], chosen[going]]

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows from now on (the others' requests are done)."""
        self.lengths, self.state, self.chars = self.lengths[rows], self.state[rows], self.chars[rows]
        self.units = [self.units[i] for i in rows]

    def join(self, other: Spelling) -> Spelling:
        """`other`'s rows after these (requests that joined the batch)."""
        self.lengths = np.concatenate([self.lengths, other.lengths])
        self.state = np.concatenate([self.state, other.state])
        self.chars = np.concatenate([self.chars, other.chars])
        self.units += other.units
        return self


class Generator:
    """A model run in NumPy and its units (and, for the hybrid, the mixture): what the CLI, the
    evaluate stage's sample, the champion gate and the served pyfunc generate and score with."""

    def __init__(self, model: NumpyModel, units: Units, mixture: Mixture | None = None, source: str = "") -> None:
        if model.vocab_size != units.size:
            raise GenerationError(f"the vocabulary has {units.size} units but the model predicts {model.vocab_size}")
        if mixture is not None and mixture.ngram.vocab_size != units.size:
            raise GenerationError(f"the n-gram knows {mixture.ngram.vocab_size} units, the vocabulary {units.size}")
        self.model = model
        self.units = units
        self.mixture = mixture
        self.source = source  # what answers, as the CLI says it: a registered version or a file

    def char_probabilities(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray:
        """P(ids[t]) for t in [start, end) under what this generator samples from: the RNN, or the
        mixture with the n-gram and the cache, its weights following the text, with the match model over
        it, as when the evaluate stage scores it (`Weights.score`); held-out scoring with `context`."""
        from char_rnn.heldout import rnn_char_probabilities

        p_rnn = rnn_char_probabilities(self.model, ids, start, end, warmup=context)
        if self.mixture is None:
            return p_rnn
        p_kn = self.mixture.ngram.char_probabilities(ids, start, end)
        return self.mixture.weights.score(p_rnn, p_kn, ids, start, end)

    def reach(self, context: int) -> int:
        """Characters before a scored or generated unit that anything here reads, the RNN reading `context`:
        the n-gram and the cache their own tails; a match model all of them."""
        if self.mixture is None:
            return context
        weights = self.mixture.weights
        return ALL if weights.match_min else max(context, self.mixture.ngram.order, weights.cache_window)

    def char_hits(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray:
        """Greedy accuracy per unit of the RNN (accuracy is a figure of the RNN alone)."""
        from char_rnn.heldout import rnn_char_hits

        return rnn_char_hits(self.model, ids, start, end, warmup=context)

    def generate(self, prompt: str, sampling: Sampling, num_samples: int = 1) -> Generation:
        """`num_samples` continuations of `prompt`, computed together as one batch."""
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise GenerationError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
        row, s = self.prepare(prompt, sampling), sampling
        if self.mixture is None and self.units.kind == CLOSED:  # one unit per character: a fixed number of steps
            out = self.model.run(row.ids.tolist(), num_samples, s.length, s.temperature, s.top_k, seed_of(s))
            texts = [self.units.decode(ids) for ids in out]
        else:
            texts = self._draw(np.tile(row.ids, (num_samples, 1)), sampling)
        return Generation(prompt=row.start.prompt, dropped=row.start.dropped, texts=texts)

    def prepare(self, prompt: str, sampling: Sampling) -> Row:
        """A request checked and turned into ids, before it joins a batch (so a bad one fails alone)."""
        prompt = unicodedata.normalize("NFC", prompt)
        dropped = self.units.unknown(prompt)
        kept = "".join(c for c in prompt if c not in dropped) if dropped else prompt
        if not kept:
            raise GenerationError(f"no character of the prompt {prompt!r} is in the model's vocabulary")
        return Row(self.units.encode(kept), sampling, Generation(kept, dropped, []))

    def text(self, units: list[int], length: int) -> str:
        """The characters that drawn units spell, the first `length` of them."""
        return self.units.decode(units)[:length]

    def _draw(self, prompts: np.ndarray, sampling: Sampling) -> list[str]:
        """Every row continued until it has `sampling.length` characters, each unit drawn by `pick`
        from what may continue its spelling."""
        rng = np.random.default_rng(seed_of(sampling))
        spelling = Spelling(self.units.speller, np.full(len(prompts), sampling.length))
        steps = self.steps(prompts)
        with inference.ONE_BLAS_THREAD:  # once for the loop: each step's own entry then only counts
            probs = next(steps)
            while not spelling.finished.all():
                chosen = pick(probs, sampling.temperature, sampling.top_k, rng, spelling.allowed())
                spelling.take(chosen)
                probs = steps.send(chosen)
        return [self.text(units, sampling.length) for units in spelling.units]

    def steps(self, prompts: np.ndarray) -> Steps[np.ndarray, np.ndarray, None]:
        """Yields (batch, V), the distribution sampled from after each row's text so far (the RNN's, or
        the mixture's), and is sent the units drawn next; the prompts (rows of equal length) read first."""
        prompts = np.asarray(prompts, dtype=np.int32)
        reading = MixtureRows(self.mixture, prompts) if self.mixture else None
        states = self.model.initial_state(len(prompts))
        for t in range(prompts.shape[1]):
            probs, states = self.model.step(prompts[:, t], states)
        while True:
            chosen = yield probs if reading is None else reading.mix(probs)
            if reading is not None:
                reading.push(chosen)
            probs, states = self.model.step(chosen, states)

    def mixture_loop(self, text: np.ndarray, prompt: int, choose: Callable[[np.ndarray, int], np.ndarray]) -> None:
        """Fills text[:, prompt:] column by column with `choose(the distribution after text[:, :n], n)`.

        A test chooses the true text, to check that these distributions are the ones held-out scoring
        measured (`char_probabilities`).
        """
        steps = self.steps(text[:, :prompt])
        probs = next(steps)
        for n in range(prompt, text.shape[1]):
            text[:, n] = choose(probs, n)
            probs = steps.send(text[:, n])


def sample(generator: Generator, prompt: str, length: int, temperature: float, seed: int) -> Generation:
    """One continuation of `prompt`, as the evaluate stage writes its sample (dropped characters logged)."""
    result = generator.generate(prompt, Sampling(length, temperature, seed=seed))
    if result.dropped:
        log.warning("prompt characters not in the closed vocabulary were dropped: %s", result.dropped)
    return result


def load_mixture(ngram_path: Path, hybrid_path: Path) -> Mixture:
    """The n-gram file and the tune stage's hybrid.json; refused when no weights were fitted."""
    hybrid = load_hybrid(hybrid_path)
    if hybrid.weights is None:
        raise GenerationError(f"{hybrid_path}: no hybrid weights were fitted (the split has no tuning slice)")
    ngram = KneserNey.load(ngram_path)
    if ngram.order != hybrid.ngram_order:
        raise GenerationError(
            f"{hybrid_path}: the weights were fitted against a {hybrid.ngram_order}-gram but {ngram_path.name}"
            f" is a {ngram.order}-gram; rerun the baseline and tune stages"
        )
    return Mixture(ngram, hybrid.weights)


def load_generator(
    files: dict[str, Path], digests: dict[str, str | None] | None = None, source: str | None = None
) -> Generator:
    """`files`: model and vocab, plus ngram and hybrid for the mixture. Each file is checked against its
    recorded sha256 first (when `digests` is given); the model is read by the NumPy runtime, which
    accepts only this project's architecture and unpickles nothing. `source` names it (default: the
    model file)."""
    if digests is not None:
        for name, path in files.items():
            verify_sha256(path, digests.get(name))
    mixture = load_mixture(files["ngram"], files["hybrid"]) if "ngram" in files else None
    units = load_units(files["vocab"])
    return Generator(inference.load(files["model"]), units, mixture, source or str(files["model"]))
