"""The champion gate: candidate and champion scored on the same text, or no promotion.

The unit tests check the decision rules; the integration tests run the real pipeline several times
against one MLflow store, as nightly runs on different corpora would, and read what the registry
decided and why.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from char_rnn import gate, stages
from char_rnn.generate import ALL, Generator
from char_rnn.heldout import by_text, rnn_char_hits, rnn_char_probabilities
from char_rnn.layout import Layout
from char_rnn.ngram import bits_per_char
from char_rnn.params import Metric, Params, with_overrides
from char_rnn.units import CLOSED, Units
from conftest import REPO, as_runtime, run_cli

TEXT = gate.Text("가나다라" * 600, start=2000, end=2400, context=100)


def test_the_candidate_must_beat_the_champion_by_the_margin() -> None:
    better = gate.decide(3.40, 3.45, "2", Metric.bits_per_char, 0.001, TEXT, ngram=3.59)
    assert better.alias == "champion" and better.relative_change == pytest.approx(3.40 / 3.45 - 1)
    assert better.reason == (
        "3.4000 vs v2's 3.4500 bits/char on the test text (characters 2,000–2,400, 400) (n-gram 3.5900),"
        " −1.45 %: better"
    )
    assert gate.decide(3.50, 3.45, "2", Metric.bits_per_char, 0.001, TEXT).alias == "challenger"
    tie = gate.decide(3.45, 3.45, "2", Metric.bits_per_char, 0.0, TEXT)
    assert tie.alias == "challenger" and tie.reason.endswith("not better")
    close = gate.decide(3.449, 3.45, "2", Metric.bits_per_char, 0.001, TEXT)
    assert close.alias == "challenger" and close.reason.endswith("better by less than 0.1%")
    assert gate.decide(3.449, 3.45, "2", Metric.bits_per_char, 0.0, TEXT).alias == "champion"
    assert gate.decide(0.61, 0.60, "2", Metric.accuracy, 0.01, TEXT).alias == "champion"  # higher wins
    assert gate.decide(0.60, 0.61, "2", Metric.accuracy, 0.0, TEXT).alias == "challenger"


def test_without_a_champion_or_a_fair_comparison_the_reason_says_so() -> None:
    first = gate.first(3.3, Metric.bits_per_char, TEXT.where, TEXT.chars, ngram=3.5)
    assert first.alias == "champion" and first.reason.endswith("(n-gram 3.5000); there was no champion")
    refused = gate.unfair(0.3, "4", "this run has no test text", Metric.bits_per_char, 70)
    assert refused.alias == "challenger" and refused.champion is None
    assert refused.reason.startswith("not compared with v4: this run has no test text; `char-rnn promote`")
    floor = gate.below_baseline(3.7, Metric.bits_per_char, TEXT, ngram=3.59, bits=3.7)
    assert floor.alias == "challenger" and "3.7000 bits/char on the test text" in floor.reason
    assert "not better than the n-gram's 3.5900 (registry.must_beat_baseline)" in floor.reason
    closed = gate.Text("가나다라" * 5, start=12, end=20, context=4)
    assert gate.unreadable(Units(CLOSED, list("가나다라")), closed) == ""
    assert gate.unreadable(Units(CLOSED, list("가나")), closed) == "2 characters ('다', '라')"
    assert gate.unreadable(Units.open("가", 1), closed) == ""  # open units read any text
    # A match model reads all the text before, as far back as the version can spell it.
    earlier = gate.Text("가마" + "가나다라" * 5, start=14, end=22, context=4)  # an unknown character far back
    assert gate.unreadable(Units(CLOSED, list("가나다라")), earlier) == ""  # what the RNN reads is spelled
    assert gate.read_start(Units(CLOSED, list("가나다라")), earlier, ALL) == 2  # just after '마'
    assert gate.read_start(Units.open("가", 1), earlier, ALL) == 0
    assert gate.read_start(Units(CLOSED, list("가나다라")), earlier, 4) == 10  # without one: the RNN's context


def test_a_hybrid_with_a_match_model_is_scored_reading_all_the_text_before(repo_params: Params) -> None:
    """Its copies may lie anywhere before the test text: the gate reads all of it, as the evaluate stage
    reads the whole corpus, and gets the evaluate stage's figure."""
    from char_rnn.generate import Mixture
    from char_rnn.hybrid import Weights
    from char_rnn.model import build_model
    from char_rnn.ngram import KneserNey

    chars = list(" 가나다")
    rng = np.random.default_rng(5)
    passage, other = "".join(rng.choice(chars, 100)), "".join(rng.choice(chars, 200))
    text = gate.Text(passage + other + passage, start=300, end=400, context=30)  # the copy: 300 back
    ids = np.array([chars.index(c) for c in text.text], dtype=np.int32)
    runtime = as_runtime(build_model(with_overrides(repo_params, {"model.units": 8}).model, 4, seed=3))
    ngram = KneserNey.fit(ids[:200], 4, 2)
    hybrid = Generator(runtime, Units(CLOSED, chars), Mixture(ngram, Weights(0.5, 0.5, match_min=4)))
    evaluated = bits_per_char(hybrid.char_probabilities(ids, 300, 400, 30))
    assert gate.score(hybrid, text, Metric.bits_per_char) == pytest.approx(evaluated)
    without = Generator(runtime, Units(CLOSED, chars), Mixture(ngram, Weights(0.5, 0.5)))
    assert evaluated < 0.5 * gate.score(without, text, Metric.bits_per_char)
    # Without one, a cache that looks back farther than the RNN's context is read whole too.
    long_cache = Generator(runtime, Units(CLOSED, chars), Mixture(ngram, Weights(0.5, 0.3, 0.2, cache_window=50)))
    evaluated = bits_per_char(long_cache.char_probabilities(ids, 300, 400, 30))
    assert gate.score(long_cache, text, Metric.bits_per_char) == pytest.approx(evaluated)


def test_the_champion_is_compared_only_on_text_its_lineage_shows_it_never_learnt_from() -> None:
    grown = "가나다라마바사" * 100
    yesterday = grown[:500]  # the corpus a day ago: its test text began at 450
    text = gate.Text(grown, start=630, end=700, context=50)
    assert gate.overlap(gate.seen_tags(yesterday, 450), text) == ""  # the start of this corpus, before its test
    assert "past the start of the test text (characters 630" in gate.overlap(gate.seen_tags(grown, 650), text)
    edited = "다" + yesterday[1:]
    assert "are not the start of this corpus" in gate.overlap(gate.seen_tags(edited, 450), text)
    assert gate.overlap({}, text) == "its lineage does not say which text it learnt from"


def test_each_version_reads_the_text_through_its_own_units(repo_params: Params) -> None:
    """Two vocabularies order the same characters differently, open units spell them: each version
    scores the text it reads, in bits per character."""
    from char_rnn.model import build_model

    text = gate.Text("나가다 " * 40, start=100, end=160, context=30)
    model = build_model(with_overrides(repo_params, {"model.units": 8}).model, 4, seed=3)
    chars = list(" 가나다")
    ids = np.array([chars.index(c) for c in text.text], dtype=np.int32)
    expected = bits_per_char(rnn_char_probabilities(model, ids, 100, 160, warmup=30))
    runtime = as_runtime(model)
    closed = Generator(runtime, Units(CLOSED, chars))
    assert gate.score(closed, text, Metric.bits_per_char) == pytest.approx(expected, rel=1e-6)
    reordered = Generator(runtime, Units(CLOSED, list("다나가 ")))  # the same weights, another vocabulary
    assert gate.score(reordered, text, Metric.bits_per_char) != pytest.approx(expected)
    hits = rnn_char_hits(model, ids, 100, 160, warmup=30)
    assert gate.score(closed, text, Metric.accuracy) == pytest.approx(hits.mean())
    units = Units.open("", 1)  # every character spelled: 가 is two jamo, a space one byte
    spelled = Generator(as_runtime(build_model(with_overrides(repo_params, {"model.units": 8}).model, units.size,
                                               seed=3)), units)  # fmt: skip
    ids, offsets = units.encode_with_offsets(text.text[70:160])
    probs = spelled.char_probabilities(ids, int(offsets[30]), len(ids), 30)
    assert len(probs) == 2 * 45 + 15 and gate.score(spelled, text, Metric.bits_per_char) == pytest.approx(
        -np.log2(probs).sum() / 60
    )


# ---- the pipeline, run after run, against one store ------------------------------------------------------------

SMALL = {"model.cell": "gru", "model.units": 16, "window.stride": 5, "train.batch_size": 64, "train.epochs": 2,
         "evaluate.sample_length": 5, "evaluate.context": 100}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Any:
    """One MLflow store for every run of the module, as a team's nightly runs share one."""
    folder = tmp_path_factory.mktemp("store")
    shutil.copy(migrated_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    os.environ.pop("MLFLOW_TRACKING_URI") if previous is None else os.environ.update(MLFLOW_TRACKING_URI=previous)


def pipeline(store: str, root: Path, repo_params: Params, overrides: dict[str, Any], text: str | None = None) -> dict:
    """Every stage on a project of its own (params, corpus), logging and registering into the shared store."""
    root.mkdir(parents=True)
    if text is not None:
        (root / "data" / "raw").mkdir(parents=True)
        (root / "data" / "raw" / "text.txt").write_text(text, encoding="utf-8")
        overrides = {"corpus.source": "data/raw/text.txt", **overrides}
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return stages.run_all(with_overrides(repo_params, overrides), Layout(root))["register"]


def versions(store: str, name: str) -> dict[str, dict[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    found = {}
    for version in client.search_model_versions(f"name='{name}'"):
        aliases = client.get_model_version(name, version.version).aliases
        found[str(version.version)] = {"aliases": aliases, "tags": version.tags, "description": version.description}
    return found


OPEN = {"vocab.units": "open", "split.val_fraction": 0.1, "split.test_fraction": 0.1}


@pytest.mark.integration
def test_another_corpus_or_no_test_text_is_never_compared_in_either_direction(store, tmp_path, repo_params) -> None:
    """A seed champion and a kolaw candidate, then a kolaw champion and a seed candidate, under one
    registered model: the seed champion learnt from text that is not the start of kolaw, and the seed
    run has no test text (its memorised 0.30 bits/char would have "beaten" any held-out figure), so
    nothing is compared and nothing promoted, and the version says why."""
    kolaw = {**SMALL, **OPEN, "corpus.source": "kolaw", "train.epochs": 1}
    seed = {**SMALL, "train.epochs": 3}
    reasons = {
        "seed-first": "the 71 characters it learnt from are not the start of this corpus",
        "kolaw-first": "this run has no test text; it is scored on the 71 characters it trained on",
    }
    for name, runs in (("seed-first", (seed, kolaw)), ("kolaw-first", (kolaw, seed))):
        first, second = (pipeline(store, tmp_path / f"{name}-{i}", repo_params, {**o, "registry.model_name": name})
                         for i, o in enumerate(runs))  # fmt: skip
        assert (first["alias"], second["alias"]) == ("champion", "challenger")
        assert second["gate"]["reason"].startswith(f"not compared with v1: {reasons[name]}")
        assert second["gate"]["champion"] is None
        found = versions(store, name)
        assert found["1"]["aliases"] == ["champion"] and found["2"]["aliases"] == ["challenger"]
        assert reasons[name] in found["2"]["description"] and found["2"]["tags"]["gate.decision"] == "challenger"
        assert found["2"]["description"].startswith("challenger: not compared")  # plain text, not markdown
        drift = json.loads((tmp_path / f"{name}-1" / "reports" / "drift.json").read_text(encoding="utf-8"))
        learnt = runs[0].get("corpus.source", "seed")  # another corpus is not drift either: not compared
        assert f"{name} version 1 learnt {learnt}, not this corpus: not compared" in drift["summary"], drift["summary"]


@pytest.mark.integration
def test_a_grown_corpus_with_new_characters_is_compared_on_its_new_test_text_and_promoted(
    store, tmp_path, repo_params
) -> None:
    """The nightly case: yesterday's corpus grew, and its new test text holds characters yesterday's
    units never had. The champion is scored again on the new test text, through its own units, and
    the better candidate is promoted; never refused for vocabulary."""
    from mlflow import MlflowClient

    from char_rnn.bundle import load_registered
    from char_rnn.corpus import read_source
    from char_rnn.units import load_units

    full = read_source("kolaw+kobill", REPO)
    base, grown = full[:6000], full[:9000]
    name, split = "grown", {**SMALL, **OPEN, "registry.model_name": "grown"}
    day1 = pipeline(store, tmp_path / "day1", repo_params, {**split, "train.epochs": 1}, base)
    assert day1["alias"] == "champion"
    new = set(grown[8100:]) - set(load_units(tmp_path / "day1" / "data" / "vocab.json").chars)
    assert len(new) >= 10, "the premise: day 2's test text has characters day 1's units lack"
    day2 = pipeline(store, tmp_path / "day2", repo_params, {**split, "train.epochs": 4}, grown)
    champion = load_registered(f"models:/{name}/1")
    text = gate.Text(grown, 8100, 9000, 100)
    assert day2["gate"]["champion"] == pytest.approx(gate.score(champion, text, Metric.bits_per_char))
    stored = float(MlflowClient(tracking_uri=store).get_model_version(name, "1").tags["test/bits_per_char"])
    assert day2["gate"]["champion"] != pytest.approx(stored)  # scored again, on the new text: not yesterday's figure
    assert day2["alias"] == "champion", day2["gate"]["reason"]
    # One procedure: the gate's figure for the candidate is the one evaluate reported on the test text.
    reported = by_text(json.loads((tmp_path / "day2" / "reports" / "metrics.json").read_text(encoding="utf-8")))
    assert day2["gate"]["candidate"] == pytest.approx(reported["test"]["bits_per_char"], rel=1e-6)
    assert day2["gate"]["ngram"] == pytest.approx(reported["test"]["ngram_bits_per_char"])
    reason = day2["gate"]["reason"]
    assert reason.startswith(f"{day2['gate']['candidate']:.4f} vs v1's {day2['gate']['champion']:.4f} bits/char")
    assert "on the test text (characters 8,100–9,000, 900) (n-gram" in reason and reason.endswith(": better")
    tags = versions(store, name)[day2["version"]]["tags"]
    assert tags["data.seen_chars"] == "8100" and tags["data.units"] == "open"
    # The same files registered again are that version, lineage tags and all: nothing new.
    day2_params = with_overrides(repo_params, {"corpus.source": "data/raw/text.txt", **split, "train.epochs": 4})
    again = stages.register(day2_params, Layout(tmp_path / "day2"))
    assert again["already_registered"] and again["version"] == day2["version"]
    # A worse candidate (hardly trained) stays challenger.
    worse = pipeline(store, tmp_path / "day3", repo_params, {**split, "train.learning_rate": 1e-6}, grown)
    assert worse["alias"] == "challenger" and worse["gate"]["reason"].endswith("not better")
    assert worse["gate"]["champion_version"] == day2["version"]
    # A better one by less than the margin stays challenger too.
    margin = {**split, "train.epochs": 8, "registry.min_improvement": 0.9}
    close = pipeline(store, tmp_path / "day4", repo_params, margin, grown)
    assert close["alias"] == "challenger" and "better by less than 90.0%" in close["gate"]["reason"]
    # A person promotes it, with a reason; a rollback is one command.
    promoted = run_cli("promote", f"models:/{name}/{close['version']}", "--reason", "reviewed the samples",
                       "--by", "reviewer", cwd=tmp_path / "day4", env={"MLFLOW_TRACKING_URI": store})  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr
    assert f"version {close['version']} of {name} is @champion" in promoted.stdout
    assert "champion" in versions(store, name)[close["version"]]["aliases"]
    back = run_cli("rollback", "--model", name, cwd=tmp_path / "day4", env={"MLFLOW_TRACKING_URI": store})
    assert back.returncode == 0, back.stderr
    after = versions(store, name)
    assert "champion" in after[day2["version"]]["aliases"]
    assert "previous-champion" in after[close["version"]]["aliases"]
    # Yesterday's text shrunk back: the champion learnt from part of that test text, so no comparison.
    shrunk = pipeline(store, tmp_path / "day5", repo_params, {**split, "train.epochs": 8}, base)
    assert shrunk["alias"] == "challenger" and "past the start of the test text" in shrunk["gate"]["reason"]


@pytest.mark.integration
def test_a_first_version_worse_than_the_ngram_is_not_crowned(store, tmp_path, repo_params) -> None:
    from char_rnn.corpus import read_source

    floor = {**SMALL, **OPEN, "registry.model_name": "floor", "registry.must_beat_baseline": True,
             "train.epochs": 1}  # fmt: skip
    first = pipeline(store, tmp_path / "floor", repo_params, floor, read_source("kolaw", REPO)[:5000])
    assert first["alias"] == "challenger" and "not better than the n-gram's" in first["gate"]["reason"]
    assert first["gate"]["ngram"] < first["gate"]["candidate"]
    found = versions(store, "floor")["1"]
    assert found["aliases"] == ["challenger"] and "registry.must_beat_baseline" in found["description"]
