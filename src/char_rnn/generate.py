"""Text generation: prompt in, characters of the vocabulary out, one character per model step.

The trained model maps a whole sequence to next-character probabilities at every position, so the
naive generator re-runs it over the text for every new character. `StepModel` instead calls the
trained layers themselves, their recurrent *cells* one character at a time, and carries the cells'
state from step to step: the same weights and arithmetic as the full model (the tests compare the
probabilities), a few small ops per character, and the stored model stays the training one.

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

from char_rnn.errors import PipelineError

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


def known_prompt(prompt: str, chars: list[str]) -> tuple[str, str]:
    """The policy for prompt characters outside the vocabulary: dropped and reported, never guessed."""
    vocab = set(chars)
    return "".join(c for c in prompt if c in vocab), "".join(sorted({c for c in prompt if c not in vocab}))


class StepModel:
    """The trained model's own layers, run one character per step with the recurrent state carried.

    The whole generation (prompt, then sampling) is one compiled TensorFlow loop, so a character
    costs a few small ops, not a Python round trip into TensorFlow; it is traced once per model.
    """

    def __init__(self, model: Any) -> None:
        import keras
        import tensorflow as tf

        self._layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        self._cells = [layer.cell for layer in self._layers if isinstance(layer, keras.layers.RNN)]
        self.vocab_size = int(model.output_shape[-1])
        scalar = tf.TensorSpec([], tf.int32)
        self._run = tf.function(
            self._generate,
            input_signature=[tf.TensorSpec([None], tf.int32), scalar, scalar,
                             tf.TensorSpec([], tf.float32), scalar, tf.TensorSpec([], tf.int64)],
        )

    def initial_state(self, batch: Any) -> list[Any]:
        """Zeros, as the RNN layers start every sequence during training."""
        return [cell.get_initial_state(batch) for cell in self._cells]

    def step(self, ids: Any, states: list[Any]) -> tuple[Any, list[Any]]:
        """ids (batch,) and the cells' states -> next-character probabilities (batch, vocab), new states."""
        import keras

        x, new_states, cells = ids, [], iter(zip(self._cells, states))
        for layer in self._layers:
            if isinstance(layer, keras.layers.RNN):
                cell, state = next(cells)
                x, state = cell(x, state, training=False)
                new_states.append(state)
            else:  # the encoder, Dropout (identity at inference) and Dense work on one step as on a sequence
                x = layer(x, training=False)
        return x, new_states

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
        seed = secrets.randbelow(2**62) if sampling.seed is None else sampling.seed
        ids = self._run(np.asarray(prompt_ids, dtype=np.int32), batch, sampling.length,
                        sampling.temperature, sampling.top_k, seed)
        return ids.numpy()


class Generator:
    """A model and its vocabulary: what the CLI, the evaluate stage and the served pyfunc generate with."""

    def __init__(self, model: Any, chars: list[str]) -> None:
        outputs = model.output_shape[-1]
        if outputs != len(chars):
            raise GenerationError(f"the vocabulary has {len(chars)} characters but the model predicts {outputs}")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        self._steps = StepModel(model)

    def generate(self, prompt: str, sampling: Sampling, num_samples: int = 1) -> Generation:
        """`num_samples` continuations of `prompt`, computed together as one batch."""
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise GenerationError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
        kept, dropped = known_prompt(prompt, self.chars)
        if not kept:
            raise GenerationError(f"no character of the prompt {prompt!r} is in the model's vocabulary")
        out = self._steps.run([self._index[c] for c in kept], num_samples, sampling)
        texts = ["".join(self.chars[i] for i in row) for row in out]
        return Generation(prompt=kept, dropped=dropped, texts=texts)


def generate(model: Any, chars: list[str], prompt: str, length: int, temperature: float, seed: int) -> str:
    """One continuation of `prompt` (without it), as the evaluate stage writes its sample."""
    result = Generator(model, chars).generate(prompt, Sampling(length, temperature, seed=seed))
    if result.dropped:
        log.warning("prompt characters not in the vocabulary were dropped: %s", result.dropped)
    return result.texts[0]


def load_generator(model_path: Path, vocab_path: Path, digests: dict[Path, str] | None = None) -> Generator:
    """Check each file against its recorded sha256 first, then load the model in Keras' safe mode."""
    from char_rnn.model import load_model
    from char_rnn.registry import verify_sha256
    from char_rnn.windows import load_vocab

    for path, expected in (digests or {}).items():
        verify_sha256(path, expected)
    return Generator(load_model(str(model_path)), load_vocab(vocab_path))
