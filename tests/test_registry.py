"""The registry against a real MLflow store: versions and their files, aliases moved by hand, refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from harness import QUIET, stop_group, wait_http_ok

from char_rnn import registry
from char_rnn.layout import Layout
from char_rnn.lineage import ModelIntegrityError, file_sha256
from char_rnn.params import Metric, Params, RegistryParams
from char_rnn.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, RegistrationRefused
from conftest import assert_one_champion_the_better, free_port, register_at_once

NAME = "char-rnn-test"
CHARS = list(" 가나다")

# In a fresh process, as `mlflow models serve` does: load the registered generator and answer one request,
# then print which modules are loaded and, for each third-party module the project's loaded code imports,
# the distributions that provide it.
SERVED_IMPORTS = """
import ast, json, sys
from importlib import metadata
import mlflow.pyfunc
mlflow.pyfunc.load_model(sys.argv[1]).predict({"prompt": ["가나"], "length": [3], "temperature": [0.0]})
loaded = {name.partition(".")[0] for name in sys.modules}
named = set()
for module in [m for n, m in list(sys.modules.items()) if n.startswith("char_rnn.")]:
    for node in ast.walk(ast.parse(open(module.__file__, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            named |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            named.add(node.module.partition(".")[0])
dists = metadata.packages_distributions()
ours = {top: dists[top] for top in named & loaded - {"char_rnn"} if top in dists}
print(json.dumps({"loaded": sorted(loaded), "ours": ours}))
"""


@pytest.fixture
def files(layout: Layout) -> dict[str, Path]:
    """An untrained model file and its vocabulary: registration only needs real files, not a good model."""
    import mlflow

    from char_rnn.tracking import connect
    from char_rnn.units import CLOSED, Units
    from char_rnn.windows import save_vocab

    mlflow.set_experiment(experiment_id=connect(layout.mlruns))  # artifacts under the layout's mlruns/
    layout.vocab.parent.mkdir(parents=True)
    save_vocab(Units(CLOSED, CHARS), layout.vocab)
    write_model(layout.model, seed=0)
    return {"model": layout.model, "vocab": layout.vocab}


def write_model(path: Path, seed: int) -> None:
    """A small untrained RNN: another seed, other weights, other bytes."""
    from char_rnn.model import build_model, save_model
    from char_rnn.params import ModelParams

    params = ModelParams(cell="simple_rnn", units=8, layers=1, dropout=0.0, recurrent_dropout=0.0,
                         input="one_hot", embedding_dim=8, ensemble=1)  # fmt: skip
    save_model(build_model(params, len(CHARS), seed=seed), path)


def run(status: str = "FINISHED") -> str:
    import mlflow

    with mlflow.start_run() as active:
        pass
    mlflow.MlflowClient().set_terminated(active.info.run_id, status)
    return active.info.run_id


def publish(files: dict[str, Path], seed: int | None = None, ranking: RegistryParams | None = None) -> str:
    """What the register stage does once the gate has spoken: log the pyfunc, register it with its sha256."""
    import mlflow

    from char_rnn.serving import log_generator

    if seed is not None:
        write_model(files["model"], seed)
    digests = {name: file_sha256(path) for name, path in files.items()}
    with mlflow.start_run(run_id=run()):
        uri = log_generator(files, digests, "가나").model_uri
    tags = {f"{name}_sha256": digest for name, digest in digests.items()}
    return registry.register_version(uri, NAME, tags, "registered by a test", ranking)


def aliases() -> dict[str, str]:
    from mlflow import MlflowClient

    return {alias: str(version) for alias, version in MlflowClient().get_registered_model(NAME).aliases.items()}


def test_a_version_records_the_sha256_of_every_file_and_its_description(files: dict[str, Path]) -> None:
    from mlflow import MlflowClient

    assert publish(files) == "1"
    version = MlflowClient().get_model_version(NAME, "1")
    assert version.tags["model_sha256"] == file_sha256(files["model"])
    assert version.tags["vocab_sha256"] == file_sha256(files["vocab"])
    assert version.description == "registered by a test"
    assert registry.current_champion(NAME) is None  # registering moves no alias: the gate decides


def test_the_registered_model_says_what_it_is_which_figure_ranks_it_and_how_the_champion_is_chosen(
    files: dict[str, Path],
) -> None:
    """The MLflow UI shows it above the versions table; a registration under other params rewrites it."""
    from mlflow import MlflowClient

    publish(files, ranking=RegistryParams(model_name=NAME, metric=Metric.bits_per_char, min_improvement=0.001))
    first = MlflowClient().get_registered_model(NAME).description
    assert "character-level RNN language model of Korean text" in first
    assert "**Ranked by** `bits_per_char` (`registry.metric`; lower is better)" in first
    assert "better by at least 0.1 % (`registry.min_improvement`)" in first and "must_beat_baseline" not in first
    floor = RegistryParams(model_name=NAME, metric=Metric.accuracy, min_improvement=0.02, must_beat_baseline=True)
    publish(files, seed=1, ranking=floor)
    again = MlflowClient().get_registered_model(NAME).description
    assert "`accuracy` (`registry.metric`; higher is better)" in again and "at least 2 %" in again
    assert "None that the n-gram beats on that text is (`registry.must_beat_baseline`)" in again


def test_crowning_keeps_the_previous_champion_and_rollback_restores_it(files: dict[str, Path]) -> None:
    from mlflow import MlflowClient

    first, second, third = publish(files), publish(files, seed=1), publish(files, seed=2)
    assert registry.crown(NAME, first) is None and aliases() == {CHAMPION: "1"}
    registry.make_challenger(NAME, third)
    assert registry.crown(NAME, second) == "1"
    assert aliases() == {CHAMPION: "2", PREVIOUS_CHAMPION: "1", CHALLENGER: "3"}
    promoted = registry.promote(f"models:/{NAME}/{third}", "better on yesterday's bills", by="reviewer")
    assert promoted == {"model_name": NAME, "champion": "3", "previous_champion": "2"}
    assert aliases() == {CHAMPION: "3", PREVIOUS_CHAMPION: "2"}  # the challenger won: its alias is gone
    tags = MlflowClient().get_model_version(NAME, "3").tags
    assert (tags["promoted_by"], tags["promoted_reason"]) == ("reviewer", "better on yesterday's bills")
    assert "Promoted to champion by reviewer" in MlflowClient().get_model_version(NAME, "3").description
    assert registry.rollback(NAME, by="on-call")["champion"] == "2"
    assert aliases() == {CHAMPION: "2", PREVIOUS_CHAMPION: "3"}
    with pytest.raises(RegistrationRefused, match="needs a reason"):
        registry.promote(f"models:/{NAME}/1", " ", by="someone")


def test_only_no_such_model_or_alias_means_no_champion(files: dict[str, Path], layout: Layout) -> None:
    """No champion crowns the candidate without a comparison, so only MLflow's answers "no such registered
    model" and "no such alias" mean it; a store that cannot be read at that moment is an error."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    assert registry.current_champion(NAME) is None  # no such registered model
    first = publish(files)
    assert registry.current_champion(NAME) is None  # a registered model without the alias
    registry.crown(NAME, first)
    assert str(registry.current_champion(NAME).version) == first
    with sqlite3.connect(layout.mlruns / "mlflow.db") as db:  # the store's aliases become unreadable
        db.execute("ALTER TABLE registered_model_aliases RENAME TO unreadable")
    with pytest.raises(MlflowException, match="no such table: registered_model_aliases"):
        registry.current_champion(NAME)


@pytest.fixture
def mlflow_server(layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen]:
    """A real `mlflow server` on a free loopback port, which the test's MLflow client (and `files`) use."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", (tmp_path / "server-artifacts").as_uri()]  # fmt: skip
    env = {**os.environ, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        wait_http_ok(f"{url}/health", server, timeout_s=120)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield server
    finally:
        stop_group(server)


@pytest.mark.integration
def test_a_tracking_server_down_when_the_champion_is_read_is_an_error(
    mlflow_server: subprocess.Popen, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real server, MLflow's "no such model" and "no such alias" are still "no champion"; with
    the server stopped, reading the champion fails instead of letting the candidate be crowned."""
    from mlflow.exceptions import MlflowException

    assert registry.current_champion(NAME) is None
    registry.crown(NAME, publish(files))
    assert str(registry.current_champion(NAME).version) == "1"
    registry.crown(NAME, publish(files, seed=1))
    assert aliases() == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    stop_group(mlflow_server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's backoff would take minutes
    with pytest.raises(MlflowException, match="Max retries exceeded"):
        registry.current_champion(NAME)


def test_the_served_generator_pins_what_it_imports_and_nothing_else(files: dict[str, Path], layout: Layout) -> None:
    """The served pyfunc runs on the NumPy runtime: neither TensorFlow nor Keras is imported, so neither is
    pinned; every third-party package the project's code imports on that path is."""
    import mlflow

    from char_rnn.tracking import tracking_uri

    registry.crown(NAME, publish(files))
    uri = f"models:/{NAME}@{CHAMPION}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(layout.mlruns)}
    served = subprocess.run([sys.executable, "-c", SERVED_IMPORTS, uri], env=env, capture_output=True, text=True)
    assert served.returncode == 0, served.stderr[-3000:]
    found = json.loads(served.stdout.splitlines()[-1])
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text(encoding="utf-8").split()
    pinned = {canonical(line.partition("==")[0]) for line in requirements}
    imported = {top: {canonical(dist) for dist in dists} for top, dists in found["ours"].items()}
    assert not {"tensorflow", "keras"} & set(found["loaded"])
    assert {"h5py", "threadpoolctl", "numpy", "mlflow"} <= set(imported)  # the premise: what the runtime reads with
    assert [top for top, dists in imported.items() if not dists & pinned] == [], "imported, not pinned"
    assert pinned <= set().union(*imported.values()), "pinned, never imported"


def canonical(distribution: str) -> str:
    return distribution.lower().replace("_", "-")


def test_rollback_needs_a_previous_champion(files: dict[str, Path]) -> None:
    registry.crown(NAME, publish(files))
    with pytest.raises(registry.ModelNotFound, match="no @previous-champion"):
        registry.rollback(NAME, by="on-call")


def test_a_failed_run_is_refused_before_anything_is_logged(layout: Layout, tiny_params: Params) -> None:
    """The register stage on a trained project whose run has no finite figure, then whose run failed:
    refused both times, and the store holds no logged model, no registered model, no new artifact."""
    from mlflow import MlflowClient

    from char_rnn import stages

    for stage in stages.STAGES[:-1]:
        stage.run(tiny_params, layout)
    client, run_id = MlflowClient(), json.loads(layout.train_run.read_text(encoding="utf-8"))["run_id"]
    before, figures = logged(client, run_id), layout.metrics.read_text(encoding="utf-8")
    layout.metrics.write_text(json.dumps({**json.loads(figures), "bits_per_char": float("nan")}), encoding="utf-8")
    with pytest.raises(
        RegistrationRefused, match=f"run {run_id} is FINISHED with bits_per_char=nan; nothing registered"
    ):
        stages.register(tiny_params, layout)
    assert logged(client, run_id) == before
    layout.metrics.write_text(figures, encoding="utf-8")
    client.set_terminated(run_id, "FAILED")
    with pytest.raises(RegistrationRefused, match=f"run {run_id} is FAILED with bits_per_char=.*; nothing registered"):
        stages.register(tiny_params, layout)
    assert logged(client, run_id) == before


def logged(client: Any, run_id: str) -> dict[str, list[Any]]:
    """What a registration would add: logged models, registered models, the run's artifacts and tags."""
    experiment = client.get_run(run_id).info.experiment_id
    return {
        "logged models": [model.model_id for model in client.search_logged_models([experiment])],
        "registered models": [model.name for model in client.search_registered_models()],
        "artifacts": sorted(artifact.path for artifact in client.list_artifacts(run_id)),
        "tags": sorted(client.get_run(run_id).data.tags.items()),
    }


def test_files_already_registered_are_found_exactly(files: dict[str, Path], layout: Layout) -> None:
    """Going back to params that were already run restores the same bytes: that version, no second one."""
    import mlflow
    import numpy as np

    from char_rnn.bundle import HYBRID_BUNDLE
    from char_rnn.ngram import KneserNey

    version = publish(files)
    # The run's lineage on the version (a params hash, which text it learnt from) does not tell files apart.
    mlflow.MlflowClient().set_model_version_tag(NAME, version, "params_sha256", "0" * 64)
    digests = {f"{name}_sha256": file_sha256(path) for name, path in files.items()}
    assert registry.registered_version(NAME, digests, HYBRID_BUNDLE) == "1"
    write_model(files["model"], seed=1)
    changed = {**digests, "model_sha256": file_sha256(files["model"])}
    assert registry.registered_version(NAME, changed, HYBRID_BUNDLE) is None
    # The same model bundled as a hybrid holds more files: another version, not this one.
    layout.ngram.write_bytes(KneserNey.fit(np.array([1, 2, 3, 1, 2, 0, 1, 2, 3]), len(CHARS), 2).to_bytes())
    hybrid = {**digests, "ngram_sha256": file_sha256(layout.ngram)}
    assert registry.registered_version(NAME, hybrid, HYBRID_BUNDLE) is None


@pytest.mark.parametrize("store", ["mlflow", "sqlite"])  # through MLflow's client; the store read directly
def test_tampered_model_file_is_refused(files: dict[str, Path], layout: Layout, store: str) -> None:
    import mlflow

    from char_rnn.bundle import load_registered
    from char_rnn.tracking import tracking_uri

    registry.crown(NAME, publish(files))
    uri, given = f"models:/{NAME}@{CHAMPION}", tracking_uri(layout.mlruns) if store == "sqlite" else None
    assert load_registered(uri, given).units.names == CHARS  # intact: loads
    (stored,) = layout.mlruns.glob("artifacts/models/*/artifacts/artifacts/model.keras")
    stored.write_bytes(stored.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="does not match the registered"):
        load_registered(uri, given)
    with pytest.raises(ModelIntegrityError, match="does not match the registered"):
        mlflow.pyfunc.load_model(uri)  # what `mlflow models serve` does first


def test_the_hybrid_is_registered_with_its_ngram_and_weights(files: dict[str, Path], layout: Layout) -> None:
    import mlflow
    import numpy as np

    from char_rnn.bundle import load_registered
    from char_rnn.hybrid import Hybrid, Weights, dump_hybrid
    from char_rnn.ngram import KneserNey

    layout.ngram.write_bytes(KneserNey.fit(np.array([1, 2, 3, 1, 2, 0, 1, 2, 3]), len(CHARS), 2).to_bytes())
    weights = {"rnn": 0.25, "ngram": 0.5, "cache": 0.25, "cache_window": 50, "share": 0.1, "match_min": 2}
    layout.hybrid.write_text(dump_hybrid(Hybrid(weights=Weights(**weights), ngram_order=2)), encoding="utf-8")
    registry.crown(NAME, publish({**files, "ngram": layout.ngram, "hybrid": layout.hybrid}))
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert tags["ngram_sha256"] == file_sha256(layout.ngram) and tags["hybrid_sha256"] == file_sha256(layout.hybrid)
    generator = load_registered(f"models:/{NAME}@{CHAMPION}")
    assert generator.mixture is not None and asdict(generator.mixture.weights) == weights
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert len(served.predict({"prompt": ["가나다가나"], "length": [7], "temperature": [0.0]})["text"][0]) == 7
    (stored,) = layout.mlruns.glob("artifacts/models/*/artifacts/artifacts/ngram.npz")
    stored.write_bytes(stored.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="ngram.npz: sha256"):
        load_registered(f"models:/{NAME}@{CHAMPION}")


def test_the_local_store_read_directly_finds_what_mlflow_finds(files: dict[str, Path], layout: Layout) -> None:
    """`char-rnn generate` reads a local store without importing MLflow: same version, tags and files
    as MLflow's client for every alias and number, the same refusals, and MLflow's way where it has
    rules of its own (`@latest`, another kind of store)."""
    from mlflow import MlflowClient

    from char_rnn.bundle import read_local_store
    from char_rnn.tracking import tracking_uri

    store = tracking_uri(layout.mlruns)
    first, second, third = publish(files), publish(files, seed=1), publish(files, seed=2)
    registry.crown(NAME, first)
    registry.crown(NAME, second)
    registry.make_challenger(NAME, third)
    client = MlflowClient()
    for uri in (f"models:/{NAME}@{CHAMPION}", f"models:/{NAME}@{PREVIOUS_CHAMPION}", f"models:/{NAME}/3"):
        found, expected = read_local_store(uri, store), registry.resolve_version(uri)
        assert found is not None and (found.version, found.tags) == (str(expected.version), expected.tags)
        stored = Path(client.get_model_version_download_uri(NAME, expected.version).removeprefix("file://"))
        assert found.folder == stored and (found.folder / "MLmodel").is_file()
    client.delete_model_version(NAME, third)  # its row stays, marked deleted; its alias goes
    for gone in (f"models:/{NAME}/3", f"models:/{NAME}@{CHALLENGER}", f"models:/{NAME}/9", "models:/other@champion"):
        with pytest.raises(registry.ModelNotFound):
            registry.resolve_version(gone)
        with pytest.raises(registry.ModelNotFound, match="not in the registry"):
            read_local_store(gone, store)
    with pytest.raises(registry.ModelNotFound):
        read_local_store(f"models:/{NAME}/99999999999999999999", store)
    assert read_local_store(f"models:/{NAME}@latest", store) is None  # MLflow's: the highest version
    assert read_local_store(f"models:/{NAME}@{CHAMPION}", "http://127.0.0.1:5000") is None
    assert read_local_store(f"models:/{NAME}@{CHAMPION}", f"{store}?timeout=30") is None  # SQLAlchemy's query
    relative = os.path.relpath(store.removeprefix("sqlite:///"))  # `sqlite:///mlruns/mlflow.db`, from the cwd
    assert read_local_store(f"models:/{NAME}/1", f"sqlite:///{relative}").version == "1"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_REGISTRY_URI", store)  # aliases may live in another registry: MLflow's client reads it
        assert read_local_store(f"models:/{NAME}/1", store) is None


def test_generating_from_a_local_store_imports_no_mlflow(files: dict[str, Path], layout: Layout) -> None:
    """The reason for the direct read: a cold `char-rnn generate` skips MLflow's ~3.5 s start."""
    import subprocess
    import sys

    from char_rnn.tracking import tracking_uri

    registry.crown(NAME, publish(files))
    code = (
        "import sys; from char_rnn.bundle import load_registered;"
        f"g = load_registered('models:/{NAME}@{CHAMPION}', {tracking_uri(layout.mlruns)!r});"
        "print(''.join(g.units.names), 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["가나다", "False"]


@pytest.mark.integration  # three short trainings, then two registering processes racing on one SQLite store
def test_two_runs_registering_at_once_end_with_the_better_one_champion(
    racers: list[Layout], migrated_store: Path, tmp_path: Path
) -> None:
    shutil.copy(migrated_store, tmp_path / "race.db")
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    assert_one_champion_the_better(register_at_once(racers, uri), racers, uri)
