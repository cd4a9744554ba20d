"""Corpus ingest: documents from a source in, one normalised UTF-8 text out.

Normalisation is part of the data contract: a corpus written by `ingest` is strictly UTF-8, has no
BOM, uses LF line ends and is in Unicode NFC, so that the same Hangul syllable is always the same
character (NFD would split it into jamo and blow up the vocabulary).

A source is a list of documents, the corpus their concatenation in order. A folder's documents are
its `*.txt` files in name order, so text that keeps arriving is a folder that gains files named to
sort after the earlier ones (a date first): its newest text is the corpus's tail, where the test
split is. Each ends with a newline (one is added where it is missing), the separator any units can
spell. The documents' names, hashes and places are recorded (`manifest`), so that a later run can
tell which text is new, and which earlier text changed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Document:
    name: str  # the file's path inside the folder, or the source's name
    text: str  # normalised


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest(documents: list[Document]) -> list[dict[str, object]]:
    """Each document's name, sha256, first character in the corpus and length."""
    rows, start = [], 0
    for document in documents:
        rows.append(
            {"name": document.name, "sha256": digest(document.text), "start": start, "chars": len(document.text)}
        )
        start += len(document.text)
    return rows


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


def read_documents(source: str, root: Path) -> list[Document]:
    """The source's documents, decoded strictly and normalised; relative paths are relative to the
    project root. A built-in corpus keeps its files as they are (their figures stay comparable)."""
    if source == "seed":
        data = resources.files("char_rnn").joinpath("seed.txt").read_bytes()
        return [Document("seed", normalise(decode(data, "the seed sentence")))]
    if source in BUILTIN_CORPORA:
        return [
            Document(f"{part}/{name}", normalise(decode(_konlpy_file(part, name), f"konlpy {part}/{name}")))
            for part in source.split("+")
            for name in KONLPY_FILES[part]
        ]
    path = Path(source) if Path(source).is_absolute() else root / source
    if _is_folder(path):
        return _folder(path, source)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):  # ValueError: a NUL in it
        raise CorpusError(
            f"corpus.source: {source!r} is neither one of {', '.join(BUILTIN_CORPORA)} nor a file or folder"
            f" ({str(path)!r})"
        ) from None
    except OSError as exc:  # a name too long, no permission: the OS's reason, not a traceback
        raise CorpusError(f"corpus.source: cannot read {source!r}: {exc.strerror}") from None
    return [Document(source, normalise(decode(data, str(path))))]


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long or with a NUL: said by the read that follows
        return False


def _folder(path: Path, source: str) -> list[Document]:
    """Every `*.txt` under the folder (hidden ones aside), in name order, each ending with a newline."""
    files = sorted(
        (
            f
            for f in path.rglob("*.txt")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
        ),
        key=lambda f: f.relative_to(path).as_posix(),
    )
    if not files:
        raise CorpusError(f"corpus.source: folder {source!r} has no *.txt documents")
    documents = []
    for file in files:
        try:
            text = normalise(decode(file.read_bytes(), str(file)))
        except OSError as exc:
            raise CorpusError(f"corpus.source: cannot read {str(file)!r}: {exc.strerror}") from None
        documents.append(Document(file.relative_to(path).as_posix(), text if text.endswith("\n") else text + "\n"))
    return documents


def joined(documents: list[Document]) -> str:
    """The corpus: its documents' texts in order."""
    return "".join(document.text for document in documents)


def read_source(source: str, root: Path) -> str:
    return joined(read_documents(source, root))


def load_documents(params: CorpusParams, root: Path) -> list[Document]:
    """The source's documents, normalised: what the ingest stage writes. Refused when all are empty."""
    documents = read_documents(params.source, root)
    if not joined(documents).strip():
        raise CorpusError(f"corpus {params.source!r} is empty (or only whitespace)")
    return documents


def load_corpus(params: CorpusParams, root: Path) -> str:
    return joined(load_documents(params, root))


def read_corpus(path: Path) -> str:
    return decode(path.read_bytes(), str(path))
