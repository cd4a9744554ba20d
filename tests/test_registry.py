"""Registration against a real MLflow store: aliases, refusals, and sha256-checked loading."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from char_rnn.layout import Layout
from char_rnn.lineage import ModelIntegrityError, file_sha256
from char_rnn.params import Metric
from char_rnn.registry import CHALLENGER, CHAMPION, RegistrationRefused
from char_rnn.serving import register_generator

NAME = "char-rnn-test"
CHARS = list(" 가나다")


@pytest.fixture
def files(layout: Layout) -> dict[str, Path]:
    """An untrained model file and its vocabulary: registration only needs real files, not a good model."""
    import mlflow

    from char_rnn.tracking import connect
    from char_rnn.windows import save_vocab

    mlflow.set_experiment(experiment_id=connect(layout.mlruns))  # artifacts under the layout's mlruns/
    layout.vocab.parent.mkdir(parents=True)
    save_vocab(CHARS, layout.vocab)
    write_model(layout.model, seed=0)
    return {"model": layout.model, "vocab": layout.vocab}


def write_model(path: Path, seed: int) -> None:
    """A small untrained RNN: another seed, other weights, other bytes."""
    from char_rnn.model import build_model, save_model
    from char_rnn.params import ModelParams

    params = ModelParams(
        cell="simple_rnn",
        units=8,
        layers=1,
        dropout=0.0,
        recurrent_dropout=0.0,
        input="one_hot",
        embedding_dim=8,
        ensemble=1,
    )
    save_model(build_model(params, len(CHARS), seed=seed), path)


def run(status: str = "FINISHED") -> str:
    import mlflow

    with mlflow.start_run() as active:
        pass
    mlflow.MlflowClient().set_terminated(active.info.run_id, status)
    return active.info.run_id


def register_run(files: dict[str, Path], bits: float, status: str = "FINISHED", seed: int | None = None):
    """Register the files with this figure; with `seed`, first replace the model by another training's."""
    if seed is not None:
        write_model(files["model"], seed)
    return register_generator(run(status), files, "가나", NAME, Metric.bits_per_char, {"bits_per_char": bits}, {})


def aliases() -> dict[str, str]:
    from mlflow import MlflowClient

    return {alias: str(version) for alias, version in MlflowClient().get_registered_model(NAME).aliases.items()}


def test_first_version_becomes_champion_with_its_sha256(files: dict[str, Path]) -> None:
    from mlflow import MlflowClient

    first = register_run(files, 2.0)
    assert (first.version, first.alias, first.previous_champion) == ("1", CHAMPION, None)
    assert aliases() == {CHAMPION: "1"}
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert tags["model_sha256"] == file_sha256(files["model"])
    assert tags["vocab_sha256"] == file_sha256(files["vocab"])


def test_not_better_becomes_challenger_and_better_takes_champion(files: dict[str, Path]) -> None:
    register_run(files, 2.0)
    worse = register_run(files, 2.5, seed=1)
    assert (worse.alias, worse.previous_champion, worse.previous_value) == (CHALLENGER, "1", 2.0)
    tie = register_run(files, 2.0, seed=2)
    assert tie.alias == CHALLENGER
    assert aliases() == {CHAMPION: "1", CHALLENGER: "3"}
    better = register_run(files, 1.5, seed=3)
    assert (better.version, better.alias) == ("4", CHAMPION)
    assert aliases() == {CHAMPION: "4", CHALLENGER: "3"}


def test_files_already_registered_are_reported_as_their_version(files: dict[str, Path]) -> None:
    """Going back to params that were already run restores the same bytes: no second version."""
    from mlflow import MlflowClient

    first = register_run(files, 2.0)
    register_run(files, 2.5, seed=1)
    write_model(files["model"], seed=0)  # the first model's bytes again
    again = register_run(files, 2.0)
    assert (again.version, again.alias, again.already_registered) == ("1", CHAMPION, True)
    assert not first.already_registered
    assert sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name='{NAME}'")) == [1, 2]


def test_the_same_model_bundled_as_a_hybrid_is_another_version(files: dict[str, Path], layout: Layout) -> None:
    import json

    import numpy as np

    from char_rnn.ngram import KneserNey

    register_run(files, 2.0)
    layout.ngram.write_bytes(KneserNey.fit(np.array([1, 2, 3, 1, 2, 0, 1, 2, 3]), len(CHARS), 2).to_bytes())
    layout.hybrid.write_text(json.dumps({"weights": {"rnn": 0.5, "ngram": 0.5}, "tune_chars": 9}), encoding="utf-8")
    hybrid = {**files, "ngram": layout.ngram, "hybrid": layout.hybrid}
    version = register_generator(
        run(), hybrid, "가나", NAME, Metric.hybrid_bits_per_char, {"hybrid_bits_per_char": 1.0}, {}
    )
    assert (version.version, version.already_registered) == ("2", False)


@pytest.mark.parametrize("status, bits", [("FAILED", 1.0), ("FINISHED", float("nan"))])
def test_failed_run_is_refused_and_no_alias_moves(files: dict[str, Path], status: str, bits: float) -> None:
    from mlflow import MlflowClient

    register_run(files, 2.0)
    refused = run(status)
    with pytest.raises(RegistrationRefused, match="nothing registered"):
        register_generator(refused, files, "가나", NAME, Metric.bits_per_char, {"bits_per_char": bits}, {})
    assert aliases() == {CHAMPION: "1"}
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name='{NAME}'")] == ["1"]
    experiment = MlflowClient().get_run(refused).info.experiment_id
    assert list(MlflowClient().search_logged_models([experiment], filter_string=f"source_run_id='{refused}'")) == []


def test_tampered_model_file_is_refused(files: dict[str, Path], layout: Layout) -> None:
    import mlflow

    from char_rnn.serving import load_registered

    register_run(files, 2.0)
    uri = f"models:/{NAME}@{CHAMPION}"
    assert load_registered(uri).chars == CHARS  # intact: loads
    (stored,) = layout.mlruns.glob("artifacts/models/*/artifacts/artifacts/model.keras")
    stored.write_bytes(stored.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="does not match the registered"):
        load_registered(uri)
    with pytest.raises(ModelIntegrityError, match="does not match the registered"):
        mlflow.pyfunc.load_model(uri)  # what `mlflow models serve` does first


def test_the_hybrid_is_registered_with_its_ngram_and_weight(files: dict[str, Path], layout: Layout) -> None:
    import json

    import mlflow
    import numpy as np

    from char_rnn.ngram import KneserNey
    from char_rnn.serving import load_registered

    layout.ngram.write_bytes(KneserNey.fit(np.array([1, 2, 3, 1, 2, 0, 1, 2, 3]), len(CHARS), 2).to_bytes())
    weights = {"rnn": 0.25, "ngram": 0.5, "cache": 0.25, "cache_window": 50}
    layout.hybrid.write_text(json.dumps({"weights": weights}), encoding="utf-8")  # a train stage's file, before tune
    hybrid = {**files, "ngram": layout.ngram, "hybrid": layout.hybrid}
    version = register_generator(
        run(), hybrid, "가나", NAME, Metric.hybrid_bits_per_char, {"hybrid_bits_per_char": 3.0}, {}
    )
    assert version.alias == CHAMPION
    tags = mlflow.MlflowClient().get_model_version(NAME, version.version).tags
    assert tags["ngram_sha256"] == file_sha256(layout.ngram) and tags["hybrid_sha256"] == file_sha256(layout.hybrid)
    generator = load_registered(f"models:/{NAME}@{CHAMPION}")
    assert generator.mixture is not None and asdict(generator.mixture.weights) == weights
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert len(served.predict({"prompt": ["가나"], "length": [7], "temperature": [0.0]})["text"][0]) == 7
    (stored,) = layout.mlruns.glob("artifacts/models/*/artifacts/artifacts/ngram.npz")
    stored.write_bytes(stored.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="ngram.npz: sha256"):
        load_registered(f"models:/{NAME}@{CHAMPION}")
