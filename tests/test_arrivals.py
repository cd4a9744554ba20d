"""Text that arrives as documents, run by run against one store: the first run has no champion to
compare with; the next compares only the arrived document with the champion's training text and
warm-starts from the champion (its lineage says so); a garbage arrival stops at drift, before
training, naming its file."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from char_rnn import stages
from char_rnn.corpus import read_documents
from char_rnn.drift import DriftFailed
from char_rnn.hybrid import load_hybrid
from char_rnn.layout import Layout
from char_rnn.params import Params, with_overrides
from char_rnn.tracking import WARM_START
from char_rnn.warm_start import champion_rate
from conftest import REPO

KOREAN = read_documents("kolaw+kobill", REPO)
GARBAGE = "Press the start button, then wait for the washing machine to beep.\n" * 30
NOTE = "mlflow.note.content"
FOLDER_RUN = {"corpus.source": "data/raw/docs", "vocab.units": "open", "split.test_fraction": 0.2,
              "split.val_fraction": 0.1, "model.units": 16, "window.stride": 4, "train.epochs": 3,
              "train.learning_rate": 0.01,
              "evaluate.sample_length": 5, "evaluate.context": 100, "drift.max_divergence": 3.0,
              "drift.max_unseen_share": 0.5,
              "split.tune_fraction": 0.1, "refit.enabled": True, "tune.dynamic_rates": [0.05, 0.5]}  # fmt: skip
# A reference of ~2,000 training characters makes KL large (observed 1.64 nats for a bill against two
# constitution excerpts) and leaves a third of a bill's characters unseen (0.37); the defaults are for
# references the size of a real corpus (docs/pipeline.md).


def losses(run_id: str, group: str = "train") -> list[float]:
    history = MlflowClient().get_metric_history(run_id, f"{group}/loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def test_arrivals_are_compared_with_the_champion_and_continue_it(layout: Layout, repo_params: Params) -> None:
    docs = layout.root / "data" / "raw" / "docs"
    docs.mkdir(parents=True)
    for i, document in enumerate(KOREAN[:2]):
        (docs / f"{i:02d}.txt").write_text(document.text[:1500], encoding="utf-8")
    params = with_overrides(repo_params, {**FOLDER_RUN, "train.init": "champion"})
    first = stages.run_all(params, layout)
    assert first["drift"]["champion"] is None and first["register"]["alias"] == "champion"
    assert "no champion of char-rnn-docs to compare with" in first["drift"]["summary"]
    chosen = load_hybrid(layout.hybrid).dynamic
    assert set(chosen.tune_bits_per_char) == {"0.0", "0.05", "0.5"}  # from scratch: the whole grid
    scratch = MlflowClient().get_run(first["train"]["run_id"])
    assert scratch.data.tags[WARM_START] == "scratch: char-rnn-docs has no champion yet"

    (docs / "02.txt").write_text(KOREAN[3].text[:1500], encoding="utf-8")
    second = stages.run_all(params, layout)
    assert second["drift"]["new"] == ["02.txt"] and second["drift"]["champion"] == "1"
    assert second["drift"]["summary"] == "1 new document; like the text char-rnn-docs version 1 trained on"
    assert json.loads(layout.profile.read_text(encoding="utf-8"))["documents"][-1]["name"] == "02.txt"
    run = MlflowClient().get_run(second["train"]["run_id"])  # where a reviewer sees what was new and how it drifted
    assert [i.dataset.name for i in run.inputs.dataset_inputs if i.tags[0].value == "new document"] == [
        "data/raw/docs/02.txt"
    ]
    assert run.data.metrics["drift/new_documents"] == 1 and 0 < run.data.metrics["drift/divergence"] < 3
    assert "Drift: 1 new document; like the text char-rnn-docs version 1 trained on." in run.data.tags[NOTE]
    # warm: it went on from version 1's weights, and says so (first epochs measured: 4.42 warm, 5.39 fresh)
    assert run.data.tags[WARM_START] == "models:/char-rnn-docs/1"
    assert losses(run.info.run_id)[0] < losses(scratch.info.run_id)[0] - 0.5
    # the refit starts from the version train started from (models/fit.json), not from a fresh model
    assert json.loads(layout.fit_record.read_text(encoding="utf-8"))["warm_start"] == "models:/char-rnn-docs/1"
    assert losses(run.info.run_id, "refit")[0] < losses(scratch.info.run_id, "refit")[0] - 0.5
    # tune tries the rate version 1 chose (and static scoring), not the grid (tune.warm_rates: champion)
    assert set(load_hybrid(layout.hybrid).dynamic.tune_bits_per_char) == {"0.0", str(chosen.rate)}
    segment, context = params.tune.dynamic_segment, params.tune.dynamic_context
    assert champion_rate("models:/char-rnn-docs/1", segment, context) == chosen.rate
    assert champion_rate("models:/char-rnn-docs/1", segment + 1, context) is None  # chosen for other segments
    version = MlflowClient().get_model_version("char-rnn-docs", second["register"]["version"])
    assert version.tags[WARM_START] == "models:/char-rnn-docs/1"
    assert "test" in version.description  # compared on this run's test text: the newest document's tail

    (docs / "03.txt").write_text(GARBAGE, encoding="utf-8")
    for name in ("check", "ingest", "window", "validate"):
        stages.stage(name).run(params, layout)
    with pytest.raises(DriftFailed, match=r"hangul_share .* failed in 03\.txt") as failed:
        stages.drift(params, layout)  # dvc.yaml's train reads drift's outputs: DVC never reaches it
    assert "02.txt" not in str(failed.value)
    assert json.loads(layout.drift_report.read_text(encoding="utf-8"))["new"] == ["03.txt"]
