"""Ingest reads strictly, normalises once, and never destroys the previous corpus on bad input."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from char_rnn.corpus import CorpusError, ingest, read_source
from char_rnn.params import CorpusParams

SEED = (
    "알엔엔 으로 자연어 처리하기 어렵지 않아요 기본은 전부 같기때문이죠 "
    "그래서 제가 쉽게 설명드리려고 하는겁니다 왜냐하면 쉬우니까요"
)


def test_seed_is_the_blog_sentence(tmp_path: Path):
    out = tmp_path / "corpus.txt"
    assert ingest(CorpusParams(source="seed"), tmp_path, out) == 71
    assert out.read_text(encoding="utf-8") == SEED


@pytest.mark.parametrize(("source", "characters", "distinct"), [("kolaw", 18_884, 380), ("kobill", 46_315, 513)])
def test_konlpy_texts_are_read_from_the_installed_package(tmp_path: Path, source, characters, distinct):
    text = read_source(source, tmp_path)
    assert (len(text), len(set(text))) == (characters, distinct)
    assert "\r" not in text


def test_bom_crlf_and_nfd_are_normalised(tmp_path: Path):
    decomposed = unicodedata.normalize("NFD", "한국어")
    (tmp_path / "in.txt").write_bytes(("\ufeff" + decomposed + "\r\n둘째 줄\r\n").encode("utf-8"))
    out = tmp_path / "corpus.txt"
    ingest(CorpusParams(source="in.txt"), tmp_path, out)
    assert out.read_text(encoding="utf-8") == "한국어\n둘째 줄\n"


def test_non_utf8_corpus_is_refused_and_previous_corpus_kept(tmp_path: Path):
    out = tmp_path / "corpus.txt"
    ingest(CorpusParams(source="seed"), tmp_path, out)
    (tmp_path / "cp949.txt").write_bytes("한국어".encode("cp949"))
    with pytest.raises(CorpusError, match=r"not valid UTF-8: byte 0xc7 at offset 0"):
        ingest(CorpusParams(source="cp949.txt"), tmp_path, out)
    assert out.read_text(encoding="utf-8") == SEED


def test_empty_corpus_is_refused(tmp_path: Path):
    (tmp_path / "empty.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="is empty"):
        ingest(CorpusParams(source="empty.txt"), tmp_path, tmp_path / "corpus.txt")
    assert not (tmp_path / "corpus.txt").exists()


def test_unknown_source_names_the_choices(tmp_path: Path):
    with pytest.raises(CorpusError, match="neither one of seed, kolaw, kobill, kolaw\\+kobill nor a file"):
        read_source("missing.txt", tmp_path)
