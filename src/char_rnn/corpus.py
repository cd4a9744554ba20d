"""Corpus ingest: bytes from a source in, one normalised UTF-8 text out.

Normalisation is part of the data contract: a corpus written by `ingest` is strictly UTF-8, has no
BOM, uses LF line ends and is in Unicode NFC, so that the same Hangul syllable is always the same
character (NFD would split it into jamo and blow up the vocabulary).
"""

from __future__ import annotations

import unicodedata
from importlib import metadata, resources
from pathlib import Path

from char_rnn.errors import PipelineError
from char_rnn.params import BUILTIN_CORPORA, CorpusParams

KONLPY_FILES = {
    "kolaw": ("constitution.txt",),
    "kobill": tuple(f"{n}.txt" for n in range(1809890, 1809900)),
}


class CorpusError(PipelineError):
    """The corpus cannot be used; nothing was written."""


def normalise(text: str) -> str:
    text = text.removeprefix("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def decode(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{origin} is not valid UTF-8: byte {data[exc.start]:#04x} at offset {exc.start}"
            " (convert it first, for example with `iconv -f cp949 -t utf-8`)"
        ) from None


def _konlpy_file(folder: str, name: str) -> bytes:
    """Read a file from the installed konlpy distribution without importing konlpy (no JVM)."""
    try:
        dist = metadata.distribution("konlpy")
    except metadata.PackageNotFoundError:
        raise CorpusError("the konlpy package is not installed; it ships the kolaw and kobill texts") from None
    path = Path(str(dist.locate_file(f"konlpy/data/corpus/{folder}/{name}")))
    return path.read_bytes()


def read_source(source: str, root: Path) -> str:
    """The raw text of a source, decoded strictly; relative paths are relative to the project root."""
    if source == "seed":
        return decode(resources.files("char_rnn").joinpath("seed.txt").read_bytes(), "the seed sentence")
    if source in BUILTIN_CORPORA:
        parts = source.split("+")
        texts = [
            decode(_konlpy_file(part, name), f"konlpy {part}/{name}") for part in parts for name in KONLPY_FILES[part]
        ]
        return "".join(normalise(t) for t in texts)
    path = Path(source) if Path(source).is_absolute() else root / source
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):  # ValueError: a NUL in it
        raise CorpusError(
            f"corpus.source: {source!r} is neither one of {', '.join(BUILTIN_CORPORA)} nor a file ({str(path)!r})"
        ) from None
    except OSError as exc:  # a name too long, no permission: the OS's reason, not a traceback
        raise CorpusError(f"corpus.source: cannot read {source!r}: {exc.strerror}") from None
    return decode(data, str(path))


def load_corpus(params: CorpusParams, root: Path) -> str:
    """The source's text, normalised: what the ingest stage writes. Refused when it is empty."""
    text = normalise(read_source(params.source, root))
    if not text.strip():
        raise CorpusError(f"corpus {params.source!r} is empty (or only whitespace)")
    return text


def read_corpus(path: Path) -> str:
    return decode(path.read_bytes(), str(path))
