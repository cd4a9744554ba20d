"""The hybrid: `p = w_rnn * p_rnn + w_kn * p_kn + w_cache * p_cache`, a match model over it, and `hybrid.json`.

The weights are fitted by the tune stage on the tuning slice, which neither the RNN nor the n-gram
they are weighed against has read and which is not the scored text; the held-out text is then
scored with them, fixed or, with a `share` < 1 chosen on the same slice, following the text
(`fixed_share`), and generation samples from the fitted mixture. The cache (`char_rnn.cache`) is a
part and the match model (`char_rnn.match`) a layer over the mixture only when their params turn
them on; the match model learns its own trust as it reads, so it has no weight. `hybrid.json`
also records dynamic evaluation's rate, chosen on the same slice. This module is the one place that
writes and reads that file: a file of another format is refused, naming why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from char_rnn import cache, match
from char_rnn.errors import PipelineError
from char_rnn.heldout import average_rnns
from char_rnn.ngram import KneserNey

log = logging.getLogger(__name__)

FORMAT = 3  # 2 also recorded the tuning slice's length and the scoring context, which nothing read


class HybridError(PipelineError):
    """hybrid.json cannot be used: its weights are not a distribution, or it is not a tune stage's file."""


@dataclass(frozen=True)
class Weights:
    """The hybrid's mixture weights, fitted on the tuning slice: RNN, n-gram and (with a window) cache; and
    the match model's length (`match_min`), whose copies, when on, are followed over the mixture."""

    rnn: float
    ngram: float
    cache: float = 0.0
    cache_window: int = 0  # characters the cache looks back; 0 = no cache part
    share: float = 1.0  # scoring a text, the share of these weights the mixture returns to after each unit; 1 = fixed
    match_min: int = 0  # units a match must have before the match model predicts; 0 = no match model

    def __post_init__(self) -> None:
        parts = (self.rnn, self.ngram, self.cache)
        finite = all(isinstance(w, (int, float)) and math.isfinite(w) for w in parts)
        if not finite or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
            raise ValueError(f"hybrid weights must be finite, >= 0 and sum to 1, got {parts}")
        if not isinstance(self.cache_window, int) or self.cache_window < 0 or (self.cache and not self.cache_window):
            raise ValueError(f"the cache window must be an integer >= 0, and >= 1 with a cache weight; got {self}")
        if not isinstance(self.match_min, int) or self.match_min < 0:
            raise ValueError(f"the match length must be an integer >= 0, got {self.match_min!r}")
        if not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise ValueError(f"the share must be > 0 and <= 1, got {self.share!r}")

    def score(self, p_rnn: np.ndarray, p_kn: np.ndarray, ids: np.ndarray, start: int, end: int) -> np.ndarray:
        """The hybrid's probability of each unit of ids[start:end], from the RNN's and the n-gram's: the
        mixture (`track`), and the match model over it."""
        p_cache = cache.char_probabilities(ids, start, end, self.cache_window) if self.cache else None
        mixed = self.track(p_rnn, p_kn, p_cache)
        return match.char_probabilities(ids, start, end, mixed, self.match_min) if self.match_min else mixed

    def mix(self, p_rnn: np.ndarray, p_kn: np.ndarray, p_cache: np.ndarray | None = None) -> np.ndarray:
        """The mixture's probabilities; works on per-character vectors and on full distributions alike."""
        parts = self.parts(p_rnn, p_kn, p_cache)
        return sum(w * np.asarray(p, dtype=np.float64) for w, p in zip(self.prior(), parts, strict=True))

    def track(self, p_rnn: np.ndarray, p_kn: np.ndarray, p_cache: np.ndarray | None = None) -> np.ndarray:
        """The mixture's probability of each unit of a text (per-unit vectors, in order), its weights
        following the text when `share` < 1 (`fixed_share`); with 1, `mix`'s."""
        if self.share == 1:
            return self.mix(p_rnn, p_kn, p_cache)
        parts = np.asarray(self.parts(p_rnn, p_kn, p_cache), dtype=np.float64)
        return fixed_share(parts, self.prior(), [self.share])[0]

    def prior(self) -> np.ndarray:
        """The fitted weights of the parts that have any (the cache only with a cache weight)."""
        return np.array([self.rnn, self.ngram] + ([self.cache] if self.cache else []))

    def parts(self, p_rnn: Any, p_kn: Any, p_cache: Any = None) -> list[Any]:
        """The parts' probabilities in the order of `prior`: the cache's only with a cache weight."""
        if not self.cache:
            return [p_rnn, p_kn]
        if p_cache is None:
            raise ValueError("these weights give the cache a share: pass its probabilities")
        return [p_rnn, p_kn, p_cache]

    def metrics(self) -> dict[str, float]:
        return {
            "hybrid_weight_rnn": self.rnn,
            "hybrid_weight_ngram": self.ngram,
            "hybrid_weight_cache": self.cache,
            "hybrid_match_min": self.match_min,
            "hybrid_share": self.share,
        }


def fixed_share(parts: np.ndarray, prior: np.ndarray, shares: Sequence[float]) -> np.ndarray:
    """(shares, units): each unit's probability under the mixture whose weights follow the text.

    After each unit the weights move to each part's share of the probability the mixture gave it (the
    part that predicted it gains), then take back `share` of the `prior`: Herbster & Warmuth's fixed
    share, which tracks whichever part predicts the current passage best (the n-gram through text it
    has counted before, a near-copy of an earlier document; the RNN elsewhere) at a cost of at most
    -log2(1 - share) bits per unit against the best sequence of parts. Only the text before a unit
    moves its weights. With share 1 the weights stay the prior. `parts`: (parts, units).
    """
    share = np.asarray(shares, dtype=np.float64)[:, None]
    weights = np.tile(prior, (len(share), 1))
    scored = np.empty((len(share), parts.shape[1]))
    for t in range(parts.shape[1]):
        joint = weights * parts[:, t]
        scored[:, t] = total = joint.sum(axis=1)
        posterior = np.divide(joint, total[:, None], out=weights.copy(), where=total[:, None] > 0)
        weights = (1 - share) * posterior + share * prior
    return scored


class DynamicChoice(BaseModel):
    """Dynamic evaluation's rate, chosen on the tuning slice, and the settings it was chosen for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(ge=0.0, description="0 = static scoring won")
    segment: int = Field(ge=1)
    context: int = Field(ge=1)
    tune_bits_per_char: dict[str, float | None] = Field(description="each candidate rate's figure; None = diverged")


class Hybrid(BaseModel):
    """`models/hybrid.json`: what the tune stage chose on the tuning slice (nothing without one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[3] = FORMAT
    weights: Weights | None = None
    ngram_order: int | None = Field(
        default=None, ge=1, description="order of the n-gram the weights were fitted against (None: no weights)"
    )
    dynamic: DynamicChoice | None = None


def dump_hybrid(hybrid: Hybrid) -> str:
    """The file's text; the stage writes it (whole, atomically) where its layout says."""
    return hybrid.model_dump_json(indent=1) + "\n"


def load_hybrid(path: Path) -> Hybrid:
    """hybrid.json of this format, else `HybridError` naming the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HybridError(f"{path}: not JSON ({exc}); rerun the tune stage") from None
    if not isinstance(raw, dict):
        raise HybridError(f"{path}: expected a JSON object; rerun the tune stage")
    if raw.get("format") != FORMAT:
        raise HybridError(
            f"{path}: format {raw.get('format')!r} is not known (this version reads {FORMAT}); rerun the tune stage"
        )
    try:
        return Hybrid.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise HybridError(f"{path}: unusable hybrid record ({problems}); rerun the tune stage") from None


def fit_weights(
    parts: Sequence[np.ndarray],
    layer: tuple[np.ndarray, np.ndarray] | None = None,
    tolerance: float = 1e-12,
    max_steps: int = 100_000,
) -> np.ndarray:
    """Mixture weights that maximise the log-likelihood of a tuning slice, by expectation-maximisation.

    `parts[i][t]` is model i's probability of character t. Each step sets every weight to that model's
    share of the mixture's probability, summed over the slice; the log-likelihood never decreases and
    is concave in the weights, so the steps climb to its maximum (Jelinek & Mercer's interpolation).
    With the match model's `layer` (`match.copies`: the scored probability is `copied + kept * mixture`)
    the copy is one more component whose weight is given, and the weights are fitted for what is scored:
    where the copy predicts a unit, the parts do not compete for it. They stop when a step gains less
    than `tolerance` nats per character.
    """
    probs = np.asarray(parts, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"need non-empty probability vectors of the same length, got shape {probs.shape}")
    copied, kept = layer if layer is not None else (0.0, 1.0)
    weights, previous = np.full(len(probs), 1.0 / len(probs)), -np.inf
    for _ in range(max_steps):
        mixed = copied + kept * (weights @ probs)
        with np.errstate(divide="ignore"):
            likelihood = float(np.mean(np.log(mixed)))
        if not math.isfinite(likelihood):
            raise ValueError("a tuning character has probability 0 under every part: no weights can score it")
        if likelihood - previous < tolerance:
            return weights
        shares = np.sum(weights[:, None] * kept * probs / mixed, axis=1)
        weights, previous = shares / shares.sum(), likelihood
    log.warning("the hybrid's weights did not converge in %d steps; using the last ones, %s", max_steps, weights)
    return weights


def fit_hybrid_weights(
    models: Sequence[Any],
    ids: np.ndarray,
    tune: tuple[int, int],
    order: int,
    context: int,
    cache_window: int,
    shares: Sequence[float] = (),
    match_min: int = 0,
) -> Weights:
    """Weights on ids[t0:t1] for RNNs trained on ids[:t0] only, against an n-gram fitted on ids[:t0] too,
    and among 1 (fixed weights) and `shares`, the share under which they score the slice best.

    Neither model has read the tuning slice, so the weights measure them as they do on unseen text; the
    cache and the match model read the text before each character, as they will on the scored text;
    nothing after t1 (the scored text) is read. Several RNNs count as one, their probabilities averaged.
    The weights and the share are fitted for what is scored: the mixture, and the match model over it.
    """
    t0, t1 = tune
    if not 1 <= t0 < t1 <= len(ids):
        raise ValueError(f"need a non-empty tuning slice after the first character, got {tune}")
    ngram = KneserNey.fit(ids[:t0], int(models[0].output_shape[-1]), order)
    parts = [average_rnns(models, ids, t0, t1, warmup=context), ngram.char_probabilities(ids, t0, t1)]
    if cache_window:
        parts.append(cache.char_probabilities(ids, t0, t1, cache_window))
    layer = match.copies(ids, t0, t1, match_min) if match_min else None
    fitted = fit_weights(parts, layer)
    weights = Weights(*(float(w) for w in fitted), cache_window=cache_window, match_min=match_min)
    if not shares:
        return weights
    then = None if layer is None else lambda p: layer[0] + layer[1] * p  # the match model, as scored
    share = best_share(np.asarray(weights.parts(*parts)), weights.prior(), shares, then)
    return dataclasses.replace(weights, share=share)


def best_share(
    parts: np.ndarray,
    prior: np.ndarray,
    shares: Sequence[float],
    then: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    """Among 1 (the fitted weights held fixed) and `shares`, the one under which `fixed_share` (and `then`
    over it: the match model) scores `parts`' text best; a tie keeps the fixed weights."""
    candidates = [1.0, *shares]
    with np.errstate(divide="ignore"):
        scored = fixed_share(parts, prior, candidates)
        likelihood = [np.log(then(row) if then else row).mean() for row in scored]
    return candidates[int(np.argmax(likelihood))]
