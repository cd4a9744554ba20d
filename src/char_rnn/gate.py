"""The champion gate: the candidate and the champion scored on the same text, or no promotion.

A figure stored with the champion came from the champion's own text; comparing it with a figure
from another text (another corpus, or yesterday's tail of a growing one) says nothing. So when a run
registers, the current champion is scored again on this run's scored text (the validation tail, or
the training text without a split), with the same held-out procedure and context, through the
distribution that version serves (the RNN alone or the hybrid's mixture), and so is the candidate.
The candidate is promoted only when it is better by at least `registry.min_improvement`, relative
(as MLflow's `MetricThreshold(min_relative_change=...)` gates a candidate against a baseline).
When the two cannot be compared fairly (the champion cannot read every character of the text, or
its files cannot be loaded or fail their sha256 check), nothing is promoted and the reason says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from char_rnn.ngram import bits_per_char
from char_rnn.notes import change
from char_rnn.params import Metric
from char_rnn.registry import CHALLENGER, CHAMPION


class Scorer(Protocol):
    """What the gate scores: a version's served distribution over its vocabulary."""

    chars: list[str]

    def char_probabilities(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray: ...

    def char_hits(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Text:
    """The scored text: the whole corpus (the context before the span is read too) and the span scored."""

    text: str
    start: int
    end: int
    context: int  # characters before each scored one that a model may read (held-out scoring's warm-up)

    @property
    def read_from(self) -> int:
        return max(self.start - self.context, 0)

    @property
    def chars(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Decision:
    alias: str  # champion or challenger
    reason: str  # one sentence, on the version's description
    figure: str  # what is compared: "bits/char" or "accuracy"
    candidate: float | None
    champion: float | None
    champion_version: str | None
    relative_change: float | None  # candidate against champion, signed so that < 0 is better for bits
    chars: int


def figure_name(metric: Metric) -> str:
    return "accuracy" if metric is Metric.accuracy else "bits/char"


def score(scorer: Scorer, text: Text, metric: Metric) -> float:
    """The gate's figure for one version on the text: bits per character, or greedy accuracy."""
    index = {c: i for i, c in enumerate(scorer.chars)}
    ids = np.array([index[c] for c in text.text[text.read_from : text.end]], dtype=np.int32)
    start = text.start - text.read_from
    if metric is Metric.accuracy:
        return float(np.mean(scorer.char_hits(ids, start, len(ids), text.context)))
    return bits_per_char(scorer.char_probabilities(ids, start, len(ids), text.context))


def unreadable(chars: list[str], text: Text) -> str:
    """Characters of the text read that a vocabulary lacks, as a short readable list ('' when none)."""
    missing = sorted(set(text.text[text.read_from : text.end]) - set(chars))
    shown = ", ".join(repr(c) for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    return f"{len(missing)} characters ({shown})" if missing else ""


def decide(
    candidate: float, champion: float, champion_version: str, metric: Metric, min_improvement: float, chars: int
) -> Decision:
    """Champion when the candidate beats the champion's figure on the same text by the relative margin."""
    relative = candidate / champion - 1 if champion else math.inf
    gain = relative if metric.higher_is_better else -relative
    promote = gain > 0 and gain >= min_improvement
    verdict = "better" if promote else ("not better" if gain <= 0 else f"better by less than {min_improvement:.1%}")
    name = figure_name(metric)
    reason = (
        f"{candidate:.4f} vs v{champion_version}'s {champion:.4f} {name} on the same {chars:,} characters,"
        f" {change(relative)}: {verdict}"
    )
    return Decision(
        CHAMPION if promote else CHALLENGER, reason, name, candidate, champion, champion_version, relative, chars
    )


def first(candidate: float, metric: Metric, chars: int) -> Decision:
    """No champion yet: the first version is it."""
    name = figure_name(metric)
    reason = f"{candidate:.4f} {name} on {chars:,} characters; there was no champion"
    return Decision(CHAMPION, reason, name, candidate, None, None, None, chars)


def unfair(candidate: float, champion_version: str, why: str, metric: Metric, chars: int) -> Decision:
    """The champion cannot be scored on this text: no promotion; a person may still decide (`char-rnn promote`)."""
    reason = f"not compared with v{champion_version}: {why}; `char-rnn promote` it if it should serve"
    return Decision(CHALLENGER, reason, figure_name(metric), candidate, None, champion_version, None, chars)
