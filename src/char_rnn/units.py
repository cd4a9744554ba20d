"""Text units: what the models read and predict, and how a text is spelled in them.

Two kinds, a param (`vocab.units`):

- **closed**, the blog's: one unit per distinct character of the training text, sorted by code
  point. Text holding any other character cannot be spelled; a prompt's unknown characters are
  dropped and reported.
- **open**: any Unicode text. The units are the 256 byte values of UTF-8, the 67 conjoining jamo
  that spell every precomposed Hangul syllable by Unicode's canonical decomposition (19 leading
  consonants, 21 vowels, 27 trailing consonants), and every character that occurs at least
  `min_count` times in the training text. A character with a unit of its own is that unit; any
  other Hangul syllable is its two or three jamo; any other character is its UTF-8 bytes. Rare
  training characters are spelled too, so the model learns the spellings it needs for characters
  it never saw. Conjoining jamo met as characters of the text are always spelled in bytes, so a
  jamo unit only ever stands in a syllable and every text has exactly one spelling.

Figures are bits per character of the NFC text whatever the kind: a character's probability is the
product of its units' probabilities, so its bits are the sum of theirs. Generation draws units
through `Speller`, which only lets through a unit that can continue a well-formed spelling (a vowel
after a leading consonant, a continuation byte after a lead byte, ...), so generated text always
decodes; it is NFC-normalised like the corpus.

The inventory comes from the training text alone (the window stage passes it nothing else): a
character that only held-out text has is spelled, never given a unit of its own.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from char_rnn.errors import PipelineError

FORMAT = 2
CLOSED, OPEN = "closed", "open"
BYTES = 256
# Unicode's conjoining jamo that compose the 11,172 syllables U+AC00..U+D7A3 (Unicode 15, section 3.12).
LEADS = [chr(0x1100 + i) for i in range(19)]
VOWELS = [chr(0x1161 + i) for i in range(21)]
TAILS = [chr(0x11A8 + i) for i in range(27)]
JAMO = LEADS + VOWELS + TAILS
SYLLABLES = (0xAC00, 0xD7A3)


class UnitsError(PipelineError):
    """A text that these units cannot spell, or a vocabulary file that is not one."""


def byte_name(value: int) -> str:
    """A byte unit as the vocabulary file writes it: never one character, so never a character unit."""
    return f"<0x{value:02X}>"


def is_syllable(char: str) -> bool:
    return SYLLABLES[0] <= ord(char) <= SYLLABLES[1]


def is_jamo(char: str) -> bool:
    """Any conjoining jamo code point, archaic ones included: spelled in bytes when met in text."""
    code = ord(char)
    return 0x1100 <= code <= 0x11FF or 0xA960 <= code <= 0xA97F or 0xD7B0 <= code <= 0xD7FF


def jamo_of(syllable: str) -> str:
    """The syllable's leading consonant, vowel and (if any) trailing consonant."""
    index = ord(syllable) - SYLLABLES[0]
    lead, rest = divmod(index, 21 * 28)
    vowel, tail = divmod(rest, 28)
    return LEADS[lead] + VOWELS[vowel] + (TAILS[tail - 1] if tail else "")


@dataclass(frozen=True)
class Units:
    """An inventory of units (`names[id]`) and how text is spelled in it."""

    kind: str
    names: list[str]
    min_count: int = 0  # open: how often a training character needed to be to get a unit of its own
    _spellings: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def closed(cls, training: str) -> Units:
        return cls(CLOSED, sorted(set(training)))

    @classmethod
    def open(cls, training: str, min_count: int) -> Units:
        counts = Counter(training)
        own = sorted(c for c, n in counts.items() if n >= min_count and not is_jamo(c))
        return cls(OPEN, [byte_name(b) for b in range(BYTES)] + JAMO + own, min_count)

    @property
    def size(self) -> int:
        return len(self.names)

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @cached_property
    def chars(self) -> list[str]:
        """The characters with a unit of their own (every unit of a closed vocabulary)."""
        first = 0 if self.kind == CLOSED else BYTES + len(JAMO)
        return self.names[first:]

    def spell(self, char: str) -> tuple[int, ...]:
        """The units of one character; `UnitsError` when a closed vocabulary lacks it."""
        found = self._spellings.get(char)
        if found is None:
            found = self._spellings[char] = self._spelling(char)
        return found

    def _spelling(self, char: str) -> tuple[int, ...]:
        own = self.index.get(char) if len(char) == 1 and not (self.kind == OPEN and is_jamo(char)) else None
        if own is not None:
            return (own,)
        if self.kind == CLOSED:
            raise UnitsError(f"{char!r} (U+{ord(char):04X}) is not in the closed vocabulary of {self.size} characters")
        if is_syllable(char):
            return tuple(self.index[j] for j in jamo_of(char))
        return tuple(char.encode("utf-8"))  # byte b is unit b

    def encode(self, text: str) -> np.ndarray:
        return self.encode_with_offsets(text)[0]

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, offsets): `offsets[i]` is where character i's units start, `offsets[-1]` the unit count."""
        spellings = {c: self.spell(c) for c in set(text)}
        offsets = np.zeros(len(text) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(spellings[c]) for c in text), np.int64, len(text)), out=offsets[1:])
        ids = np.fromiter(itertools.chain.from_iterable(map(spellings.__getitem__, text)), np.int32, int(offsets[-1]))
        return ids, offsets

    def unknown(self, text: str) -> str:
        """The characters of `text` that cannot be spelled, each once, by code point ('' for open units)."""
        if self.kind == OPEN:
            return ""
        return "".join(sorted(set(text) - set(self.index)))

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """The text that units spell, NFC-normalised; bytes that do not form UTF-8 become U+FFFD."""
        if self.kind == CLOSED:
            return "".join(self.names[i] for i in ids)
        parts: list[str] = []
        pending = bytearray()
        for i in ids:
            if i < BYTES:
                pending.append(i)
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            parts.append(self.names[i])
        parts.append(pending.decode("utf-8", errors="replace"))
        return unicodedata.normalize("NFC", "".join(parts))

    @cached_property
    def speller(self) -> Speller:
        return Speller.of(self)

    def to_json(self) -> str:
        payload = {"format": FORMAT, "kind": self.kind, "min_count": self.min_count, "size": self.size}
        return json.dumps({**payload, "units": self.names}, ensure_ascii=False, indent=1) + "\n"


def load_units(path: Path) -> Units:
    """A vocabulary file of this format, or the blog's first format (a closed list of characters)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnitsError(f"{path}: not a vocabulary file ({exc})") from None
    if payload.get("format") == 1 and len(payload.get("chars", ())) == payload.get("size"):
        return Units(CLOSED, payload["chars"])
    if payload.get("format") != FORMAT or len(payload.get("units", ())) != payload.get("size"):
        raise UnitsError(f"{path}: not a vocabulary of format {FORMAT}")
    if payload["kind"] not in (CLOSED, OPEN):
        raise UnitsError(f"{path}: units of kind {payload['kind']!r} are not known")
    return Units(payload["kind"], payload["units"], payload.get("min_count", 0))


# ---- generation: which unit may come next ------------------------------------------------------------

# States of a spelling in progress. A syllable's vowel may be followed by a trailing consonant or end
# the syllable; UTF-8's first continuation byte is narrower after E0, ED, F0 and F4 (no overlong
# forms, no surrogates, nothing past U+10FFFF), and after E1 it skips U+1100..U+11FF: a conjoining
# jamo drawn as a character would join the syllable before it under NFC.
STATES = 11
BOUNDARY, AFTER_LEAD, AFTER_VOWEL, CONT1, CONT2, CONT3, AFTER_E0, AFTER_ED, AFTER_F0, AFTER_F4, AFTER_E1 = range(STATES)
_CONTINUATION = {  # state -> [(first allowed byte, last allowed byte)], state after it
    CONT1: ([(0x80, 0xBF)], BOUNDARY),
    CONT2: ([(0x80, 0xBF)], CONT1),
    CONT3: ([(0x80, 0xBF)], CONT2),
    AFTER_E0: ([(0xA0, 0xBF)], CONT1),
    AFTER_E1: ([(0x80, 0x83), (0x88, 0xBF)], CONT1),
    AFTER_ED: ([(0x80, 0x9F)], CONT1),
    AFTER_F0: ([(0x90, 0xBF)], CONT2),
    AFTER_F4: ([(0x80, 0x8F)], CONT2),
}


def _after_lead_byte(value: int) -> int | None:
    """The state after a byte that starts a character, or None if no character starts with it."""
    if value < 0x80:
        return BOUNDARY
    special = {0xE0: AFTER_E0, 0xE1: AFTER_E1, 0xED: AFTER_ED, 0xF0: AFTER_F0, 0xF4: AFTER_F4}
    if value in special:
        return special[value]
    if 0xC2 <= value <= 0xDF:
        return CONT1
    if 0xE1 <= value <= 0xEF:
        return CONT2
    if 0xF1 <= value <= 0xF3:
        return CONT3
    return None


@dataclass(frozen=True)
class Speller:
    """The spelling automaton as tables indexed [state, unit]: whether the unit may come next, the
    state after it, and how many characters it completes (a vowel's syllable completes when the
    next unit is not a trailing consonant, so that unit may complete two)."""

    allowed: np.ndarray  # (states, V) bool
    after: np.ndarray  # (states, V) int8
    completes: np.ndarray  # (states, V) int8

    @classmethod
    def of(cls, units: Units) -> Speller:
        v = units.size
        if units.kind == CLOSED:
            return cls(np.ones((1, v), bool), np.zeros((1, v), np.int8), np.ones((1, v), np.int8))
        allowed, after, completes = (np.zeros((STATES, v), dtype) for dtype in (bool, np.int8, np.int8))
        starts = cls._starts(units)
        for unit, (state, done) in starts.items():
            allowed[BOUNDARY, unit], after[BOUNDARY, unit], completes[BOUNDARY, unit] = True, state, done
            allowed[AFTER_VOWEL, unit], after[AFTER_VOWEL, unit], completes[AFTER_VOWEL, unit] = True, state, done + 1
        for vowel in VOWELS:
            allowed[AFTER_LEAD, units.index[vowel]], after[AFTER_LEAD, units.index[vowel]] = True, AFTER_VOWEL
        for tail in TAILS:
            allowed[AFTER_VOWEL, units.index[tail]], completes[AFTER_VOWEL, units.index[tail]] = True, 1
        for state, (ranges, then) in _CONTINUATION.items():
            for low, high in ranges:
                allowed[state, low : high + 1], after[state, low : high + 1] = True, then
                completes[state, low : high + 1] = then == BOUNDARY
        return cls(allowed, after, completes)

    @staticmethod
    def _starts(units: Units) -> dict[int, tuple[int, int]]:
        """Units that may start a character: (state after it, characters it completes). An ASCII byte
        whose character has a unit of its own is left out: that character has one spelling."""
        starts = dict.fromkeys(range(BYTES + len(JAMO), units.size), (BOUNDARY, 1))
        starts |= {units.index[lead]: (AFTER_LEAD, 0) for lead in LEADS}
        for value in range(BYTES):
            state = _after_lead_byte(value)
            if state is not None and not (value < 0x80 and chr(value) in units.index):
                starts[value] = (state, int(state == BOUNDARY))
        return starts
