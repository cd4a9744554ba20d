"""Drift: new documents are checked against the champion's training text with real GX suites, before
training, and a failure names the documents (the pipeline over arriving documents: test_arrivals)."""

from __future__ import annotations

from char_rnn.corpus import Document, manifest, read_documents
from char_rnn.drift import check_drift, failures, training_profile
from char_rnn.params import DriftParams
from conftest import REPO

KOREAN = read_documents("kolaw+kobill", REPO)  # the constitution, then ten bills
ENGLISH = Document("zz-manual.txt", "Press the start button, then wait for the washing machine to beep.\n" * 30)


def checked(reference: list[Document], documents: list[Document]) -> dict:
    known = "".join(d.text for d in reference)
    profile = training_profile("kolaw+kobill", known, manifest(reference), len(known))
    return check_drift("".join(d.text for d in documents), manifest(documents), profile, DriftParams())


def test_korean_bills_after_the_constitution_pass_and_are_the_new_documents() -> None:
    """The defaults let every kolaw+kobill bill arrive after the constitution (docs/pipeline.md)."""
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
    assert [row["document"] for row in report["documents"]] == [edited.name]


def test_a_copy_is_a_duplicate_whatever_its_name_sorts_before_and_however_short() -> None:
    """Of a new copy and a known document, the copy is the duplicate even when its name sorts first;
    two identical short documents (no 8-gram to share) are found by their hash."""
    early = Document("000-again.txt", KOREAN[2].text)
    short = [Document("kobill/x1.txt", "제1조\n"), Document("kobill/x2.txt", "제1조\n")]
    report = checked(KOREAN[:3], [early, *KOREAN[:3], *short])
    assert [line for line in failures(report) if "similarity" in line] == [
        "drift.documents: similarity <= 0.98 failed in 000-again.txt, kobill/x2.txt (observed [1.0, 1.0])"
    ]


def test_a_distribution_unlike_the_champions_fails_on_divergence_alone() -> None:
    """Hangul it has seen, in a mix of scripts like the champion's, but a handful of syllables over and
    over: only the character distribution tells it apart."""
    chanted = Document("kobill/chant.txt", "대한 민국 헌법 국민 대한 민국 헌법 국민\n" * 60)
    report = checked(KOREAN[:1], [KOREAN[0], chanted])
    assert failures(report) == [
        f"drift.text: char <= 1.5 failed (observed {report['suites'][1]['expectations'][0]['observed']!r})"
    ]
    assert report["suites"][1]["expectations"][0]["observed"] > 1.5


def test_without_a_champion_only_empty_and_duplicate_documents_are_checked() -> None:
    """No reference: an English document is not drift (nothing to drift from), an empty one still fails."""
    documents = [*KOREAN[:2], ENGLISH, Document("empty.txt", "\n")]
    report = check_drift("".join(d.text for d in documents), manifest(documents), None, DriftParams())
    assert failures(report) == ["drift.documents: chars >= 1 failed in empty.txt (observed [0])"]
    assert [e["kwargs"]["column"] for e in report["suites"][0]["expectations"]] == ["chars", "similarity"]
