"""Ingest reads strictly, normalises once, and never destroys the previous corpus on bad input."""

from __future__ import annotations

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
