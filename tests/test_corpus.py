"""Ingest reads strictly, normalises once, and never destroys the previous corpus on bad input."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest

from char_rnn import stages
from char_rnn.corpus import CorpusError, load_corpus, read_source
from char_rnn.layout import Layout
from char_rnn.params import CorpusParams, Params, with_overrides
from conftest import SEED


def test_seed_is_the_blog_sentence(layout: Layout, repo_params: Params):
    assert stages.ingest(repo_params, layout)["characters"] == 71
    assert layout.corpus.read_text(encoding="utf-8") == SEED


@pytest.mark.parametrize(("source", "characters", "distinct"), [("kolaw", 18_884, 380), ("kobill", 46_315, 513)])
def test_konlpy_texts_are_read_from_the_installed_package(tmp_path: Path, source, characters, distinct):
    text = read_source(source, tmp_path)
    assert (len(text), len(set(text))) == (characters, distinct)
    assert "\r" not in text


def test_bom_crlf_and_nfd_are_normalised(tmp_path: Path):
    decomposed = unicodedata.normalize("NFD", "한국어")
    (tmp_path / "in.txt").write_bytes(("\ufeff" + decomposed + "\r\n둘째 줄\r\n").encode("utf-8"))
    assert load_corpus(CorpusParams(source="in.txt"), tmp_path) == "한국어\n둘째 줄\n"


def test_non_utf8_corpus_is_refused_and_previous_corpus_kept(layout: Layout, repo_params: Params):
    stages.ingest(repo_params, layout)
    (layout.root / "cp949.txt").write_bytes("한국어".encode("cp949"))
    with pytest.raises(CorpusError, match=r"not valid UTF-8: byte 0xc7 at offset 0"):
        stages.ingest(with_overrides(repo_params, {"corpus.source": "cp949.txt"}), layout)
    assert layout.corpus.read_text(encoding="utf-8") == SEED


def test_empty_corpus_is_refused(layout: Layout, repo_params: Params):
    (layout.root / "empty.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="is empty"):
        stages.ingest(with_overrides(repo_params, {"corpus.source": "empty.txt"}), layout)
    assert not layout.corpus.exists()


def test_unknown_source_names_the_choices(tmp_path: Path):
    with pytest.raises(CorpusError, match="neither one of seed, kolaw, kobill, kolaw\\+kobill nor a file"):
        read_source("missing.txt", tmp_path)


def test_a_folder_is_its_txt_documents_in_name_order_each_ending_a_line(layout: Layout, repo_params: Params):
    """Text that keeps arriving: files named to sort by date, the newest last (where the test split is);
    hidden files and other suffixes are not documents; the manifest places each in the corpus."""
    folder = layout.root / "data" / "raw" / "docs"
    (folder / "2026" / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "2026-12-02.txt").write_text("둘째 날", encoding="utf-8")
    (folder / "2026-12-01.txt").write_text("첫날\r\n", encoding="utf-8")
    (folder / "2026" / "12-03.txt").write_text("셋째", encoding="utf-8")  # sorts after 2026-12-02.txt
    (folder / "2026" / ".ipynb_checkpoints" / "x.txt").write_text("hidden", encoding="utf-8")
    (folder / "notes.md").write_text("not a document", encoding="utf-8")
    (folder / ".2026-12-04.txt").write_text("half-copied", encoding="utf-8")  # hidden: still being copied
    summary = stages.ingest(with_overrides(repo_params, {"corpus.source": "data/raw/docs"}), layout)
    assert layout.corpus.read_text(encoding="utf-8") == "첫날\n둘째 날\n셋째\n"
    assert "(3 documents)" in summary["summary"]
    rows = json.loads(layout.documents.read_text(encoding="utf-8"))
    assert [(r["name"], r["start"], r["chars"]) for r in rows] == [
        ("2026-12-01.txt", 0, 3), ("2026-12-02.txt", 3, 5), ("2026/12-03.txt", 8, 3)
    ]  # fmt: skip
    assert rows[0]["sha256"] == hashlib.sha256("첫날\n".encode()).hexdigest()


def test_a_folder_with_a_bad_document_is_refused_naming_it(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    with pytest.raises(CorpusError, match=r"folder 'docs' has no \*\.txt documents"):
        read_source("docs", tmp_path)
    (tmp_path / "docs" / "a.txt").write_text("좋은 글\n", encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(CorpusError, match=r"docs/b\.txt is not valid UTF-8: byte 0xff at offset 1"):
        read_source("docs", tmp_path)
