"""The champion gate: the candidate and the champion scored on text neither learnt from, or no promotion.

A figure stored with the champion came from the champion's own text; comparing it with a figure from
another text (yesterday's tail of a growing corpus) says nothing. So when a run registers, the
current champion is scored again on this run's **test text**, with the same held-out procedure and
context, through the distribution that version serves (the RNN alone or the hybrid's mixture), each
version reading the text through its own units, and so is the candidate. The figures are bits per
character whatever the units, so versions with different units compare. The candidate is promoted
only when it is better by at least `registry.min_improvement`, relative (as MLflow's
`MetricThreshold(min_relative_change=...)` gates a candidate against a baseline).

The comparison is fair only on text the champion never learnt from. A version records which text
that was (`seen_tags`: the first `seen_chars` characters of its corpus, everything before its test
text, and their sha256), so the gate checks that those characters are the start of this run's corpus
and end before its test text; a growing corpus passes, an edited one does not. Where the two cannot
be compared fairly (the champion learnt from this test text, its lineage does not say, its files
cannot be loaded, its closed units cannot spell the text, or this run has no test text at all, as in
the blog's setting), nothing is promoted and the reason says why; a person may still decide
(`char-rnn promote`). A first version becomes champion, unless `registry.must_beat_baseline` asks
for an absolute floor and the n-gram does better on the same text (as TFMA's value thresholds do).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from char_rnn.ngram import bits_per_char
from char_rnn.notes import change
from char_rnn.params import Metric
from char_rnn.registry import CHALLENGER, CHAMPION
from char_rnn.units import Units

# Not `*_sha256`: those tags name a version's files, which `registry.registered_version` matches exactly.
SEEN_CHARS, SEEN_HASH = "data.seen_chars", "data.seen_text_hash"
PROMOTE = "`char-rnn promote` it if it should serve"


class Scorer(Protocol):
    """What the gate scores: a version's served distribution over its units."""

    units: Units

    def char_probabilities(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray: ...

    def char_hits(self, ids: np.ndarray, start: int, end: int, context: int) -> np.ndarray: ...

    def reach(self, context: int) -> int: ...


@dataclass(frozen=True)
class Text:
    """The scored text: the whole corpus (the context before the span is read too) and the characters
    [start, end) scored: this run's test text."""

    text: str
    start: int
    end: int
    context: int  # units before each scored one that the RNN reads (held-out scoring's warm-up)

    def read_from(self, reach: int) -> int:
        """Where a version that reads `reach` characters before a scored one starts reading (every character
        is at least one unit, so `context` characters hold at least the RNN's `context` units)."""
        return max(self.start - reach, 0)

    @property
    def chars(self) -> int:
        return self.end - self.start

    @property
    def where(self) -> str:
        return f"the test text (characters {self.start:,}–{self.end:,}, {self.chars:,})"


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
    ngram: float | None = None  # the n-gram's bits/char on the same text


def figure_name(metric: Metric) -> str:
    return "accuracy" if metric is Metric.accuracy else "bits/char"


def score(scorer: Scorer, text: Text, metric: Metric) -> float:
    """The gate's figure for one version on the text: bits per character, or greedy accuracy (per unit).
    `UnitsError` when the version's closed units cannot spell the text."""
    begin = read_start(scorer.units, text, scorer.reach(text.context))
    ids, offsets = scorer.units.encode_with_offsets(text.text[begin : text.end])
    start = int(offsets[text.start - begin])
    if metric is Metric.accuracy:
        return float(np.mean(scorer.char_hits(ids, start, len(ids), text.context)))
    return bits_per_char(scorer.char_probabilities(ids, start, len(ids), text.context), text.chars)


def seen_tags(corpus: str, seen: int) -> dict[str, str]:
    """Which text a version learnt from (or chose on): the corpus's first `seen` characters."""
    return {SEEN_CHARS: str(seen), SEEN_HASH: "sha256:" + hashlib.sha256(corpus[:seen].encode("utf-8")).hexdigest()}


def overlap(tags: dict[str, str], text: Text) -> str:
    """Why the champion may have learnt from the scored text ('' when its lineage shows it did not)."""
    if SEEN_CHARS not in tags or SEEN_HASH not in tags:
        return "its lineage does not say which text it learnt from"
    seen = int(tags[SEEN_CHARS])
    if seen > text.start:
        return f"it learnt from the first {seen:,} characters, past the start of {text.where}"
    if seen_tags(text.text, seen)[SEEN_HASH] != tags[SEEN_HASH]:
        return f"the {seen:,} characters it learnt from are not the start of this corpus (earlier text changed)"
    return ""


def read_start(units: Units, text: Text, reach: int) -> int:
    """Where a version that reads `reach` characters before the scored ones starts: there, or just after
    the last character before the RNN's context that its closed units cannot spell (a match model reads
    back as far as the version can spell; what the RNN reads must be spellable: `unreadable`)."""
    begin, needed = text.read_from(reach), text.read_from(text.context)
    missing = units.unknown(text.text[begin:needed])
    return max([begin] + [text.text.rfind(c, begin, needed) + 1 for c in missing])


def unreadable(units: Units, text: Text) -> str:
    """Characters of the scored text and the RNN's context before it that closed units lack, as a short
    readable list ('' when none)."""
    missing = units.unknown(text.text[text.read_from(text.context) : text.end])
    shown = ", ".join(repr(c) for c in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    return f"{len(missing)} characters ({shown})" if missing else ""


def decide(
    candidate: float,
    champion: float,
    champion_version: str,
    metric: Metric,
    min_improvement: float,
    text: Text,
    ngram: float | None = None,
) -> Decision:
    """Champion when the candidate beats the champion's figure on the same text by the relative margin."""
    relative = candidate / champion - 1 if champion else math.inf
    gain = relative if metric.higher_is_better else -relative
    promote = gain > 0 and gain >= min_improvement
    verdict = "better" if promote else ("not better" if gain <= 0 else f"better by less than {min_improvement:.1%}")
    name = figure_name(metric)
    reason = (
        f"{candidate:.4f} vs v{champion_version}'s {champion:.4f} {name} on {text.where}{_beside(ngram)},"
        f" {change(relative)}: {verdict}"
    )
    return Decision(
        CHAMPION if promote else CHALLENGER,
        reason,
        name,
        candidate,
        champion,
        champion_version,
        relative,
        text.chars,
        ngram,
    )


def first(candidate: float, metric: Metric, where: str, chars: int, ngram: float | None = None) -> Decision:
    """No champion yet: the first version is it."""
    name = figure_name(metric)
    reason = f"{candidate:.4f} {name} on {where}{_beside(ngram)}; there was no champion"
    return Decision(CHAMPION, reason, name, candidate, None, None, None, chars, ngram)


def below_baseline(candidate: float, metric: Metric, text: Text, ngram: float, bits: float) -> Decision:
    """Worse than the n-gram on the same text while `registry.must_beat_baseline` is set: never crowned."""
    reason = (
        f"{bits:.4f} bits/char on {text.where} is not better than the n-gram's {ngram:.4f}"
        f" (registry.must_beat_baseline); {PROMOTE}"
    )
    return Decision(CHALLENGER, reason, figure_name(metric), candidate, None, None, None, text.chars, ngram)


def unfair(candidate: float, champion_version: str, why: str, metric: Metric, chars: int) -> Decision:
    """The champion cannot be compared with the candidate on this text: no promotion."""
    reason = f"not compared with v{champion_version}: {why}; {PROMOTE}"
    return Decision(CHALLENGER, reason, figure_name(metric), candidate, None, champion_version, None, chars)


def _beside(ngram: float | None) -> str:
    return "" if ngram is None else f" (n-gram {ngram:.4f})"
