"""Drift: new documents are checked against the champion's training text with real GX suites, before
training, and a failure names the documents; on a folder corpus, a second run compares with the first
run's champion through its logged profile."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from char_rnn import stages
from char_rnn.corpus import Document, manifest, read_documents
from char_rnn.drift import DriftFailed, check_drift, failures, training_profile
from char_rnn.layout import Layout
from char_rnn.params import DriftParams, Params, with_overrides
from conftest import REPO

NOTE = "mlflow.note.content"

KOREAN = read_documents("kolaw+kobill", REPO)  # the constitution, then ten bills
ENGLISH = Document("zz-manual.txt", "Press the start button, then wait for the washing machine to beep.\n" * 30)


def checked(reference: list[Document], documents: list[Document]) -> dict:
    known = "".join(d.text for d in reference)
    profile = training_profile(known, manifest(reference), len(known))
    return check_drift("".join(d.text for d in documents), manifest(documents), profile, DriftParams())


def test_korean_bills_after_the_constitution_pass_and_are_the_new_documents() -> None:
    """The defaults let every kolaw+kobill bill arrive after the constitution (docs/evaluation.md)."""
    report = checked(KOREAN[:1], KOREAN)
    assert report["success"], failures(report)
    assert report["new"] == [d.name for d in KOREAN[1:]] and report["changed"] == report["removed"] == []
    divergence = report["suites"][1]["expectations"][0]["observed"]
    assert 0.2 < divergence < DriftParams().max_divergence


def test_an_english_document_fails_naming_it_and_only_it() -> None:
    report = checked(KOREAN[:1], [*KOREAN[:3], ENGLISH])
    assert not report["success"]
    said = failures(report)
    assert any(
        line.startswith("drift.documents: hangul_share >= ") and line.endswith("(observed [0.0])") for line in said
    )
    assert all(" in zz-manual.txt " in line for line in said if "documents" in line), said
    assert any("unseen_share <= 0.3 failed in zz-manual.txt" in line for line in said), said


def test_a_document_delivered_twice_is_the_later_ones_duplicate_and_an_empty_one_fails() -> None:
    again = Document("kobill/again.txt", KOREAN[2].text)
    report = checked(KOREAN[:1], [*KOREAN[:3], again, Document("kobill/empty.txt", " \n")])
    assert failures(report) == [
        "drift.documents: chars >= 1 failed in kobill/empty.txt (observed [0])",
        "drift.documents: similarity <= 0.98 failed in kobill/again.txt (observed [1.0])",
    ]


def test_edited_and_removed_documents_are_said_and_the_edited_one_checked_again() -> None:
    edited = Document(KOREAN[1].name, KOREAN[1].text + "개정안 추가 조항\n")
    report = checked(KOREAN[:3], [KOREAN[0], edited])
    assert (report["new"], report["changed"], report["removed"]) == ([edited.name], [edited.name], [KOREAN[2].name])


def test_without_a_champion_only_empty_and_duplicate_documents_are_checked() -> None:
    """No reference: an English document is not drift (nothing to drift from), an empty one still fails."""
    documents = [*KOREAN[:2], ENGLISH, Document("empty.txt", "\n")]
    report = check_drift("".join(d.text for d in documents), manifest(documents), None, DriftParams())
    assert failures(report) == ["drift.documents: chars >= 1 failed in empty.txt (observed [0])"]
    assert [e["kwargs"]["column"] for e in report["suites"][0]["expectations"]] == ["chars", "similarity"]


FOLDER_RUN = {"corpus.source": "data/raw/docs", "vocab.units": "open", "split.test_fraction": 0.2,
              "split.val_fraction": 0.1, "model.units": 16, "window.stride": 4, "train.epochs": 2,
              "evaluate.sample_length": 5, "evaluate.context": 100, "drift.max_divergence": 3.0}  # fmt: skip
# A reference of ~2,000 training characters makes KL large (observed 1.64 nats for a bill against two
# constitution excerpts); the default 1.5 is for references the size of a real corpus (docs/evaluation.md).


def test_a_folder_run_compares_its_new_documents_with_the_champions_training_text(
    layout: Layout, repo_params: Params
) -> None:
    """First run: no champion, its profile logged with its run. Second: only the arrived document is new,
    compared with version 1's text. Third: an English document stops the run at drift, before training,
    naming the file (dvc.yaml's train reads drift's outputs, so DVC never reaches it)."""
    docs = layout.root / "data" / "raw" / "docs"
    docs.mkdir(parents=True)
    for i, document in enumerate(KOREAN[:2]):
        (docs / f"{i:02d}.txt").write_text(document.text[:1500], encoding="utf-8")
    params = with_overrides(repo_params, FOLDER_RUN)
    first = stages.run_all(params, layout)
    assert first["drift"]["champion"] is None and first["register"]["alias"] == "champion"
    assert "no champion of char-rnn-docs to compare with" in first["drift"]["summary"]

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

    (docs / "03.txt").write_text(ENGLISH.text, encoding="utf-8")
    for name in ("check", "ingest", "window", "validate"):
        stages.stage(name).run(params, layout)
    with pytest.raises(DriftFailed, match=r"hangul_share .* failed in 03\.txt") as failed:
        stages.drift(params, layout)
    assert "02.txt" not in str(failed.value)
    assert json.loads(layout.drift_report.read_text(encoding="utf-8"))["new"] == ["03.txt"]
