"""Open units: any Unicode text is spelled, scored with finite bits by every model kind, and generated
as valid NFC text; the units come from the training text alone."""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from char_rnn import gate
from char_rnn.dynamic import dynamic_char_probabilities
from char_rnn.generate import Generator, Mixture, Sampling
from char_rnn.hybrid import Weights
from char_rnn.ngram import KneserNey
from char_rnn.params import Metric
from char_rnn.units import BYTES, CLOSED, JAMO, OPEN, Units, load_units
from conftest import SEED, as_runtime

TRAINING = SEED * 3 + " abc 123 ."
ODD = [
    "쀍뷁 똠방각하",  # Hangul syllables the training text never had
    "Latin text, ÆØÅ",
    "emoji 🙂🚀 and 𝄞",
    "\u0301 a lone combining mark",
    "tab\tbell\x07 nul\x00 and \u200b",
    "ᄀ a conjoining jamo as a character, ㅋㅋ compatibility jamo",
]


@pytest.fixture(scope="module")
def units() -> Units:
    return Units.open(TRAINING, min_count=2)


def test_open_units_are_bytes_jamo_then_the_frequent_training_characters(units: Units) -> None:
    assert units.kind == OPEN and units.names[:BYTES] == [f"<0x{b:02X}>" for b in range(BYTES)]
    assert units.names[BYTES : BYTES + 67] == JAMO and len(JAMO) == 19 + 21 + 27
    assert "알" in units.chars and "." not in units.chars  # "." occurs once in the training text
    assert units.encode("알").tolist() == [units.index["알"]]
    assert units.encode("각").tolist() == [units.index[j] for j in "\u1100\u1161\u11a8"]  # spelled: L V T
    assert units.encode(".").tolist() == [ord(".")]  # rare: its UTF-8 byte
    assert units.encode("🙂").tolist() == list("🙂".encode())
    assert units.encode("ᄀ").tolist() == list("ᄀ".encode())  # a jamo character of the text: bytes, never a unit


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_spelled_once_and_spelled_back(text: str) -> None:
    units = Units.open(TRAINING, min_count=2)
    text = unicodedata.normalize("NFC", text)
    ids, offsets = units.encode_with_offsets(text)
    assert units.decode(ids) == text and offsets[-1] == len(ids) and len(offsets) == len(text) + 1
    # The speller allows exactly this spelling, and counts its characters.
    speller, state, chars = units.speller, 0, 0
    drawable = not any(0x1100 <= ord(c) <= 0x11FF for c in text)  # generation never draws a jamo character
    for unit in ids:
        assert speller.allowed[state, unit] or not drawable, (text, unit)
        chars, state = chars + speller.completes[state, unit], speller.after[state, unit]
    ended = chars + (state == 2)  # a syllable without a trailing consonant ends when the text does
    assert not drawable or (ended == len(text) and state in (0, 2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=60))
def test_every_unit_sequence_the_speller_allows_decodes_to_nfc_text(draws: list[int]) -> None:
    units = Units.open(TRAINING, min_count=2)
    speller, state, chars, ids = units.speller, 0, 0, []
    for draw in draws:
        allowed = np.flatnonzero(speller.allowed[state])
        unit = int(allowed[draw % len(allowed)])
        ids.append(unit)
        chars, state = chars + speller.completes[state, unit], speller.after[state, unit]
    while state not in (0, 2):  # finish the character in progress with its smallest allowed unit
        unit = int(np.flatnonzero(speller.allowed[state])[0])
        ids.append(unit)
        chars, state = chars + speller.completes[state, unit], speller.after[state, unit]
    text = units.decode(ids)
    assert "\ufffd" not in text and unicodedata.is_normalized("NFC", text)
    assert len(text) <= chars + (state == 2)  # NFC may join a combining mark to the character before it


def tiny_model(vocab: int, seed: int = 3, members: int = 1):
    import keras

    from char_rnn.model import average, build_model
    from char_rnn.params import ModelParams

    shape = ModelParams(cell="gru", units=12, layers=1, dropout=0.0, recurrent_dropout=0.0, input="embedding",
                        embedding_dim=8, ensemble=members)  # fmt: skip
    keras.utils.set_random_seed(seed)
    return average([build_model(shape, vocab, name=f"member{i + 1}", seed=seed + i) for i in range(members)])


@pytest.fixture(scope="module")
def kinds(units: Units) -> dict[str, Generator]:
    """Every model kind the project trains over the same open units: one RNN, an ensemble, the hybrid."""
    ngram = KneserNey.fit(units.encode(TRAINING), units.size, 5)
    rnn, ensemble = as_runtime(tiny_model(units.size)), as_runtime(tiny_model(units.size, members=2))
    hybrid = Mixture(ngram, Weights(0.5, 0.3, 0.2, cache_window=20))
    return {"rnn": Generator(rnn, units), "ensemble": Generator(ensemble, units),
            "hybrid": Generator(ensemble, units, hybrid)}  # fmt: skip


@pytest.mark.parametrize("odd", ODD)
def test_any_text_gets_finite_bits_from_every_model_kind_and_the_ngram(odd: str, units: Units, kinds) -> None:
    text = gate.Text(TRAINING + odd, len(TRAINING), len(TRAINING) + len(odd), context=30)
    ids, offsets = units.encode_with_offsets(text.text)
    start, chars = int(offsets[text.start]), len(odd)
    for name, generator in kinds.items():
        probs = generator.char_probabilities(ids, start, len(ids), 30)
        assert np.all((probs > 0) & (probs <= 1)), name
        bits = gate.score(generator, text, Metric.bits_per_char)
        # The character-level figure is the sum of its units' log-probabilities, per character.
        assert bits == pytest.approx(-np.log2(probs).sum() / chars, rel=1e-9), name
        assert math.isfinite(bits) and bits > 0, name
    ngram = kinds["hybrid"].mixture.ngram
    assert np.all(ngram.char_probabilities(ids, start) > 0)
    dynamic = dynamic_char_probabilities(tiny_model(units.size), ids, start, len(ids), 0.5, 5, 30)
    assert np.all(np.isfinite(np.log2(dynamic))) and np.all(dynamic > 0)


def test_the_units_distribution_sums_to_one_at_every_step(units: Units, kinds) -> None:
    prompts = np.stack([units.encode(SEED[:12]), units.encode(SEED[12:24])])
    for name, generator in kinds.items():
        steps = generator.steps(prompts)
        probs = next(steps)
        for unit in units.encode("쀍 🙂 a\u0301")[:8]:
            assert probs.shape == (2, units.size) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5), name
            probs = steps.send(np.array([unit, unit]))


@pytest.mark.parametrize("temperature", [0.0, 1.0, 3.0])
def test_generation_is_valid_nfc_text_of_the_asked_length(temperature: float, kinds) -> None:
    for name, generator in kinds.items():
        for seed in range(4):
            result = generator.generate("쀍뷁 ", Sampling(length=25, temperature=temperature, seed=seed), 3)
            for text in result.texts:
                assert unicodedata.is_normalized("NFC", text) and "\ufffd" not in text, (name, text)
                # 25 characters drawn; NFC may join a drawn combining mark to the character before it.
                joined = any(unicodedata.combining(d) for c in text for d in unicodedata.normalize("NFD", c)[1:])
                assert len(text) == 25 or (len(text) < 25 and joined), (name, text)
            assert result.prompt == "쀍뷁 " and result.dropped == ""


def test_a_flat_model_draws_spellings_of_characters_it_never_saw(units: Units) -> None:
    """An untrained model spreads its mass: drawn text holds bytes- and jamo-spelled characters."""
    generator = Generator(as_runtime(tiny_model(units.size, seed=11)), units)
    text = "".join(generator.generate("알", Sampling(length=200, temperature=3.0, seed=1)).texts)
    unseen = {c for c in text if c not in units.index}
    assert unseen and any(c.isalpha() for c in unseen)


def test_closed_units_drop_unknown_prompt_characters_and_score_their_own_text() -> None:
    closed = Units.closed(SEED)
    assert closed.kind == CLOSED and closed.unknown("알파벳 abc") == "abc벳파"
    generator = Generator(as_runtime(tiny_model(closed.size)), closed)
    result = generator.generate("알엔엔 xyz", Sampling(length=10, temperature=0.0))
    assert result.prompt == "알엔엔 " and result.dropped == "xyz" and len(result.texts[0]) == 10


def test_a_character_only_in_the_test_text_is_not_a_unit_and_still_scores(tmp_path: Path, repo_params) -> None:
    """The window and baseline stages learn nothing from held-out text: the units and the n-gram's counts
    are those of the training text alone."""
    import json

    from char_rnn import stages
    from char_rnn.layout import Layout
    from char_rnn.params import with_overrides

    body = SEED * 12
    text = body + " 쀍쀍쀍 " + SEED  # 쀍 only in the test text (the last 10 %), three times
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "text.txt").write_text(text, encoding="utf-8")
    params = with_overrides(repo_params, {"corpus.source": "data/raw/text.txt", "vocab.units": "open",
                                          "split.test_fraction": 0.1, "split.val_fraction": 0.1,
                                          "split.tune_fraction": 0.05})  # fmt: skip
    layout = Layout(tmp_path)
    for stage in ("ingest", "window", "baseline"):
        stages.stage(stage).run(params, layout)
    units = load_units(layout.vocab)
    spec = json.loads((layout.windows / "spec.json").read_text())
    seen = text[: spec["train_chars"] + spec["tune_chars"]]  # what the n-gram may count
    assert "쀍" in text[-spec["test_chars"] :] and "쀍" not in units.index
    assert units.names == Units.open(text[: spec["train_chars"]], 2).names
    ngram = KneserNey.load(layout.ngram)
    alone = KneserNey.fit(units.encode(seen), units.size, params.baseline.order)
    for mine, theirs in zip(ngram.tables, alone.tables):
        assert np.array_equal(mine.keys, theirs.keys) and np.array_equal(mine.counts, theirs.counts)
    baseline = json.loads(layout.baseline.read_text())
    assert math.isfinite(baseline["ngram_bits_per_char"]["test"]) and baseline["chars"]["test"] == spec["test_chars"]
