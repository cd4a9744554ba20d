"""Text generation: prompt in, characters of the vocabulary out, one character per model step.

The trained model maps a whole sequence to next-character probabilities at every position, so the
naive generator re-runs it over the text for every new character. `StepModel` instead calls the
trained layers themselves, their recurrent *cells* one character at a time, and carries the cells'
state from step to step: the same weights and arithmetic as the full model (the tests compare the
probabilities), a few small ops per character, and the stored model stays the training one.

With a `Mixture` (the registered hybrid), every character is drawn from `w_rnn * p_rnn + w_kn * p_kn
+ w_cache * p_cache`: the step model's distribution mixed with the Kneser-Ney n-gram's and the
cache's after the same text. The n-gram is NumPy, so that loop runs in Python, one step-model call
per character; the RNN alone keeps the compiled loop.

Prompt policy: characters outside the vocabulary are dropped and reported, never guessed; a prompt
with no known character is refused. Output ids index the vocabulary, so output is vocabulary only.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from char_rnn import cache
from char_rnn.errors import PipelineError
from char_rnn.hybrid import Weights, load_hybrid
from char_rnn.lineage import verify_sha256
from char_rnn.ngram import KneserNey
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
class Mixture:
    """The hybrid's n-gram and its weights (RNN, n-gram, cache), as the tune stage fitted them."""

    ngram: KneserNey
    weights: Weights

    def mix(self, p_rnn: np.ndarray, contexts: np.ndarray) -> np.ndarray:
        """(batch, vocab) mixture after each row of `contexts` (the ids generated so far)."""
        p_kn = np.stack([self.ngram.distribution(row) for row in contexts])
        window, vocab = self.weights.cache_window, self.ngram.vocab_size
        p_cache = np.stack([cache.distribution(row, vocab, window) for row in contexts]) if window else None
        return self.weights.mix(p_rnn, p_kn, p_cache)


def pick(probs: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """NumPy twin of `StepModel._pick`: greedy at temperature 0, else a draw among the top k."""
    if sampling.temperature == 0:
        return probs.argmax(axis=-1).astype(np.int32)
    logits = np.log(np.maximum(probs, 1e-30))
    scaled = (logits - logits.max(axis=-1, keepdims=True)) / sampling.temperature
    if 0 < sampling.top_k < probs.shape[-1]:
        kth = np.sort(scaled, axis=-1)[:, -sampling.top_k][:, None]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    weights = np.exp(scaled)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in weights], dtype=np.int32)


def known_prompt(prompt: str, chars: list[str]) -> tuple[str, str]:
    """The policy for prompt characters outside the vocabulary: dropped and reported, never guessed."""
    vocab = set(chars)
    return "".join(c for c in prompt if c in vocab), "".join(sorted({c for c in prompt if c not in vocab}))


class StepModel:
    """The trained model's own layers, run one character per step with the recurrent state carried.

    The whole generation (prompt, then sampling) is one compiled TensorFlow loop, so a character
    costs a few small ops, not a Python round trip into TensorFlow; it is traced once per model.
    An ensemble (`model.average`) steps each member and averages their probabilities, as it scores.
    """

    def __init__(self, model: Any) -> None:
        import keras
        import tensorflow as tf

        from char_rnn.model import members

        self._members = [
            [layer for layer in member.layers if not isinstance(layer, keras.layers.InputLayer)]
            for member in members(model)
        ]
        self.vocab_size = int(model.output_shape[-1])
        self._step: Any = None  # compiled on first use: only the mixture loop steps from Python
        scalar = tf.TensorSpec([], tf.int32)
        self._run = tf.function(
            self._generate,
            input_signature=[
                tf.TensorSpec([None], tf.int32),
                scalar,
                scalar,
                tf.TensorSpec([], tf.float32),
                scalar,
                tf.TensorSpec([], tf.int64),
            ],
        )

    def initial_state(self, batch: Any) -> list[list[Any]]:
        """Zeros for every cell of every member, as the RNN layers start every sequence in training."""
        import keras

        return [
            [layer.cell.get_initial_state(batch) for layer in layers if isinstance(layer, keras.layers.RNN)]
            for layers in self._members
        ]

    def step(self, ids: Any, states: list[list[Any]]) -> tuple[Any, list[list[Any]]]:
        """ids (batch,) and the cells' states -> next-character probabilities (batch, vocab), new states."""
        import keras

        outputs, new_states = [], []
        for layers, member_states in zip(self._members, states):
            x, cells, updated = ids, iter(member_states), []
            for layer in layers:
                if isinstance(layer, keras.layers.RNN):
                    x, state = layer.cell(x, next(cells), training=False)
                    updated.append(state)
                else:  # the encoder, Dropout (identity at inference) and Dense work on one step as on a sequence
                    x = layer(x, training=False)
            outputs.append(x)
            new_states.append(updated)
        return (outputs[0] if len(outputs) == 1 else keras.ops.mean(keras.ops.stack(outputs), axis=0)), new_states

    def _pick(self, probs: Any, temperature: Any, top_k: Any, seed: Any) -> Any:
        """Greedy at temperature 0; else a draw from the k most likely ids (all when top_k is 0)."""
        import tensorflow as tf

        def sample() -> Any:
            logits = tf.math.log(tf.maximum(probs, 1e-30))
            # Shift the best to 0 before dividing: a tiny temperature gives -inf, not NaN, to the rest.
            scaled = (logits - tf.reduce_max(logits, axis=-1, keepdims=True)) / temperature
            k = tf.where(top_k > 0, tf.minimum(top_k, self.vocab_size), self.vocab_size)
            kth = tf.math.top_k(scaled, k).values[:, -1:]
            scaled = tf.where(scaled >= kth, scaled, float("-inf"))
            return tf.random.stateless_categorical(scaled, 1, seed, dtype=tf.int32)[:, 0]

        return tf.cond(temperature > 0, sample, lambda: tf.argmax(probs, axis=-1, output_type=tf.int32))

    def _generate(self, prompt: Any, batch: Any, length: Any, temperature: Any, top_k: Any, seed: Any) -> Any:
        import tensorflow as tf

        states = self.initial_state(batch)
        probs = tf.zeros([batch, self.vocab_size])
        for t in tf.range(tf.size(prompt)):
            probs, states = self.step(tf.fill([batch], prompt[t]), states)
        out = tf.TensorArray(tf.int32, size=length)
        for t in tf.range(length):
            ids = self._pick(probs, temperature, top_k, tf.stack([seed, tf.cast(t, tf.int64)]))
            out = out.write(t, ids)
            probs, states = self.step(ids, states)
        return tf.transpose(out.stack())

    def run(self, prompt_ids: list[int], batch: int, sampling: Sampling) -> np.ndarray:
        """(batch, length) ids continuing `prompt_ids`; the same seed gives the same ids."""
        ids = self._run(
            np.asarray(prompt_ids, dtype=np.int32),
            batch,
            sampling.length,
            sampling.temperature,
            sampling.top_k,
            seed_of(sampling),
        )
        return ids.numpy()

    def run_mixture(self, prompt_ids: list[int], batch: int, sampling: Sampling, mixture: Mixture) -> np.ndarray:
        """As `run`, each character drawn from the mixture with the n-gram instead of the RNN alone."""
        import tensorflow as tf

        if self._step is None:
            self._step = tf.function(self.step)
        rng = np.random.default_rng(seed_of(sampling))
        text = np.tile(np.asarray(prompt_ids, dtype=np.int32), (batch, 1))
        states = self.initial_state(batch)
        for t in range(text.shape[1]):
            probs, states = self._step(tf.constant(text[:, t]), states)
        for _ in range(sampling.length):
            ids = pick(mixture.mix(probs.numpy(), text), sampling, rng)
            text = np.concatenate([text, ids[:, None]], axis=1)
            probs, states = self._step(tf.constant(ids), states)
        return text[:, len(prompt_ids) :]


def seed_of(sampling: Sampling) -> int:
    return secrets.randbelow(2**62) if sampling.seed is None else sampling.seed


class Generator:
    """A model and its vocabulary (and, for the hybrid, the mixture): what the CLI, the evaluate stage
    and the served pyfunc generate with."""

    def __init__(self, model: Any, chars: list[str], mixture: Mixture | None = None) -> None:
        outputs = model.output_shape[-1]
        if outputs != len(chars):
            raise GenerationError(f"the vocabulary has {len(chars)} characters but the model predicts {outputs}")
        if mixture is not None and mixture.ngram.vocab_size != len(chars):
            raise GenerationError(
                f"the n-gram knows {mixture.ngram.vocab_size} characters, the vocabulary {len(chars)}"
            )
        self.model = model
        self.chars = chars
        self.mixture = mixture
        self._index = {c: i for i, c in enumerate(chars)}
        self._steps = StepModel(model)

    def generate(self, prompt: str, sampling: Sampling, num_samples: int = 1) -> Generation:
        """`num_samples` continuations of `prompt`, computed together as one batch."""
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise GenerationError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
        kept, dropped = known_prompt(prompt, self.chars)
        if not kept:
            raise GenerationError(f"no character of the prompt {prompt!r} is in the model's vocabulary")
        prompt_ids = [self._index[c] for c in kept]
        if self.mixture is None:
            out = self._steps.run(prompt_ids, num_samples, sampling)
        else:
            out = self._steps.run_mixture(prompt_ids, num_samples, sampling, self.mixture)
        texts = ["".join(self.chars[i] for i in row) for row in out]
        return Generation(prompt=kept, dropped=dropped, texts=texts)


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
    recorded sha256 first (when `digests` is given), then the model is loaded in Keras' safe mode."""
    from char_rnn.model import load_model

    if digests is not None:
        for name, path in files.items():
            verify_sha256(path, digests.get(name))
    mixture = load_mixture(files["ngram"], files["hybrid"]) if "ngram" in files else None
    return Generator(load_model(str(files["model"])), load_vocab(files["vocab"]), mixture)
