"""The champion gate: candidate and champion scored on the same text, or no promotion.

The unit tests check the decision rules; the integration tests run the real pipeline several times
against one MLflow store, as nightly runs on different corpora would, and read what the registry
decided and why.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from char_rnn import gate, stages
from char_rnn.generate import Generator
from char_rnn.heldout import rnn_char_probabilities
from char_rnn.layout import Layout
from char_rnn.ngram import bits_per_char
from char_rnn.params import Metric, Params, with_overrides
from conftest import REPO, as_runtime, run_cli


def test_the_candidate_must_beat_the_champion_by_the_margin() -> None:
    better = gate.decide(3.40, 3.45, "2", Metric.bits_per_char, 0.001, 1888)
    assert better.alias == "champion" and better.relative_change == pytest.approx(3.40 / 3.45 - 1)
    assert better.reason == "3.4000 vs v2's 3.4500 bits/char on the same 1,888 characters, −1.45 %: better"
    assert gate.decide(3.50, 3.45, "2", Metric.bits_per_char, 0.001, 1888).alias == "challenger"
    tie = gate.decide(3.45, 3.45, "2", Metric.bits_per_char, 0.0, 1888)
    assert tie.alias == "challenger" and tie.reason.endswith("not better")
    close = gate.decide(3.449, 3.45, "2", Metric.bits_per_char, 0.001, 1888)
    assert close.alias == "challenger" and close.reason.endswith("better by less than 0.1%")
    assert gate.decide(3.449, 3.45, "2", Metric.bits_per_char, 0.0, 1888).alias == "champion"
    assert gate.decide(0.61, 0.60, "2", Metric.accuracy, 0.01, 50).alias == "champion"  # higher wins
    assert gate.decide(0.60, 0.61, "2", Metric.accuracy, 0.0, 50).alias == "challenger"


def test_without_a_champion_or_a_fair_comparison_the_reason_says_so() -> None:
    assert gate.first(0.3, Metric.bits_per_char, 70).alias == "champion"
    refused = gate.unfair(0.3, "4", "its vocabulary lacks 2 characters ('가', '나') of this text", Metric.bits_per_char,
                          70)  # fmt: skip
    assert refused.alias == "challenger" and refused.champion is None
    assert refused.reason.startswith("not compared with v4: its vocabulary lacks 2 characters ('가', '나')")
    text = gate.Text("가나다라" * 5, start=12, end=20, context=4)
    assert gate.unreadable(list("가나다라"), text) == ""
    assert gate.unreadable(list("가나"), text) == "2 characters ('다', '라')"


def test_each_version_reads_the_text_through_its_own_vocabulary(repo_params: Params) -> None:
    """Two vocabularies order the same characters differently: each scores the text it reads, by character."""
    from char_rnn.model import build_model

    text = gate.Text("나가다 " * 40, start=100, end=160, context=30)
    model = build_model(with_overrides(repo_params, {"model.units": 8}).model, 4, seed=3)
    chars = list(" 가나다")
    ids = np.array([chars.index(c) for c in text.text], dtype=np.int32)
    expected = bits_per_char(rnn_char_probabilities(model, ids, 100, 160, warmup=30))
    runtime = as_runtime(model)
    assert gate.score(Generator(runtime, chars), text, Metric.bits_per_char) == pytest.approx(expected, rel=1e-6)
    reordered = Generator(runtime, list("다나가 "))  # the same weights, read through another vocabulary
    assert gate.score(reordered, text, Metric.bits_per_char) != pytest.approx(expected)
    hits = gate.score(Generator(runtime, chars), text, Metric.accuracy)
    assert 0.0 <= hits <= 1.0 and math.isfinite(hits)


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


@pytest.mark.integration
def test_a_model_of_another_corpus_is_never_promoted_in_either_direction(store, tmp_path, repo_params) -> None:
    """A seed champion and a kolaw candidate, then a kolaw champion and a seed candidate (whose memorised
    0.30 bits/char would have "beaten" any held-out figure): each champion lacks characters of the
    candidate's text, so nothing is compared and nothing promoted, and the version says why."""
    kolaw = {**SMALL, "corpus.source": "kolaw", "split.val_fraction": 0.1, "train.epochs": 1}
    seed = {**SMALL, "train.epochs": 3}
    for name, runs in (("seed-first", (seed, kolaw)), ("kolaw-first", (kolaw, seed))):
        first, second = (pipeline(store, tmp_path / f"{name}-{i}", repo_params, {**o, "registry.model_name": name})
                         for i, o in enumerate(runs))  # fmt: skip
        assert (first["alias"], second["alias"]) == ("champion", "challenger")
        assert second["gate"]["reason"].startswith("not compared with v1: its vocabulary lacks")
        assert second["gate"]["champion"] is None
        found = versions(store, name)
        assert found["1"]["aliases"] == ["champion"] and found["2"]["aliases"] == ["challenger"]
        assert "its vocabulary lacks" in found["2"]["description"]
        assert found["2"]["tags"]["gate.decision"] == "challenger"


@pytest.mark.integration
def test_a_grown_corpus_rescores_the_champion_on_the_new_tail_and_the_margin_holds(
    store, tmp_path, repo_params
) -> None:
    from mlflow import MlflowClient

    from char_rnn.bundle import load_registered
    from char_rnn.corpus import read_source

    base = read_source("kolaw", REPO)[:6000]
    grown = base + base[:2000]  # the same characters, more text: the new tail is other text than yesterday's
    name, split = "grown", {**SMALL, "split.val_fraction": 0.1, "registry.model_name": "grown"}
    assert pipeline(store, tmp_path / "day1", repo_params, split, base)["alias"] == "champion"
    day2 = pipeline(store, tmp_path / "day2", repo_params, {**split, "train.epochs": 4}, grown)
    # The champion was scored again, on day 2's validation tail: not its stored figure from day 1's text.
    champion = load_registered(f"models:/{name}/1")
    text = gate.Text(grown, len(grown) - round(len(grown) * 0.1), len(grown), 100)
    assert day2["gate"]["champion"] == pytest.approx(gate.score(champion, text, Metric.bits_per_char))
    stored = float(MlflowClient(tracking_uri=store).get_model_version(name, "1").tags["heldout/bits_per_char"])
    assert day2["gate"]["champion"] != pytest.approx(stored)
    assert day2["gate"]["chars"] == text.chars and day2["alias"] in ("champion", "challenger")
    current = versions(store, name)
    champion_version = next(v for v, found in current.items() if "champion" in found["aliases"])
    # A worse candidate (hardly trained) stays challenger.
    worse = pipeline(store, tmp_path / "day3", repo_params, {**split, "train.learning_rate": 1e-6}, grown)
    assert worse["alias"] == "challenger" and worse["gate"]["reason"].endswith("not better")
    assert worse["gate"]["champion_version"] == champion_version
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
    assert "champion" in after[champion_version]["aliases"]
    assert "previous-champion" in after[close["version"]]["aliases"]
