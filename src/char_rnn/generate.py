"""Text generation from a trained model: prompt in, characters of the vocabulary out."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def known_prompt(prompt: str, chars: list[str]) -> tuple[str, list[str]]:
    """Policy for prompt characters outside the vocabulary: they are dropped and reported, never guessed."""
    vocab = set(chars)
    dropped = sorted({c for c in prompt if c not in vocab})
    return "".join(c for c in prompt if c in vocab), dropped


def pick(probs: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Temperature 0 is greedy; otherwise sample from probs sharpened or flattened by the temperature."""
    if temperature <= 0:
        return int(np.argmax(probs))
    logits = np.log(np.maximum(probs.astype(np.float64), 1e-30)) / temperature
    weights = np.exp(logits - logits.max())
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def generate(model: Any, chars: list[str], prompt: str, length: int, temperature: float, seed: int) -> str:
    """Continue `prompt` by `length` characters; the result excludes the prompt."""
    text, dropped = known_prompt(prompt, chars)
    if dropped:
        log.warning("prompt characters not in the vocabulary were dropped: %s", "".join(dropped))
    if not text:
        raise ValueError(f"no character of the prompt {prompt!r} is in the model's vocabulary")
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in text]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(length):
        probs = model(np.asarray([ids], dtype=np.int32), training=False)[0, -1]
        next_id = pick(np.asarray(probs), temperature, rng)
        ids.append(next_id)
        out.append(chars[next_id])
    return "".join(out)
