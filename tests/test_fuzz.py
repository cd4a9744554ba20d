"""Fuzzed params files and corpora: a run either goes on or stops with one line naming the key or byte.

Each params file is the repository's params.yaml mutated (keys added, removed or renamed, values of any
type, huge numbers, broken YAML, bytes that are not UTF-8) and read by the real loader; each corpus is
random bytes or Unicode (lone surrogates, control characters, NFC and NFD mixed) read by the real ingest,
check and window functions. A traceback or a message over several lines fails the test.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from char_rnn.corpus import load_corpus, read_corpus
from char_rnn.errors import PipelineError
from char_rnn.params import CorpusParams, Params, ParamsError, SplitParams, VocabParams, WindowParams, load_params
from char_rnn.windows import cut_windows, split_sizes
from conftest import BIN, REPO

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BASE = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))

# Printable keys, so that the key a message names is the key as written (others are quoted: tested below).
keys = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=12)
huge = st.sampled_from([2**31, 2**63, 10**30, -(10**30), 1e308, float("inf"), float("nan")])
scalars = st.none() | st.booleans() | st.integers() | huge | st.floats() | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3))


def _paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of the nested mapping, as a path from the top."""
    found = []
    for key, value in tree.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(_paths(value, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """params.yaml with one to three keys removed, renamed, added or given a random value; the keys touched."""
    tree = yaml.safe_load(yaml.safe_dump(BASE))
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(tree)))
        *parents, key = path
        parent = tree
        for part in parents:
            parent = parent[part]
        action = draw(st.sampled_from(["remove", "rename", "add", "value"]))
        if action == "remove":
            del parent[key]
        elif action == "rename":
            new = draw(keys)
            parent[new] = parent.pop(key)
            touched.append(".".join([*parents, new]))
        elif action == "add":
            new = draw(keys)
            parent[new] = draw(values)
            touched.append(".".join([*parents, new]))
        else:
            parent[key] = draw(values)
        touched.append(".".join(path))
    return tree, touched


ERROR_FORMS = (
    r" is invalid: .+",
    r": not valid YAML at line \d+, column \d+: .+",
    r": not valid YAML: nested too deeply",
    r": not UTF-8: byte 0x[0-9a-f]{2} at offset \d+",
    r": expected a mapping of sections, got \w+",
)


def _load(path: Path) -> Params | str:
    """The params, or the one-line message of the ParamsError; anything else propagates and fails the test."""
    try:
        return load_params(path)
    except ParamsError as exc:
        message = str(exc)
        assert message.isprintable(), f"not one printable line: {message!r}"
        assert any(re.fullmatch(re.escape(str(path)) + form, message) for form in ERROR_FORMS), message
        return message


@FUZZ
@given(change=mutated())
def test_a_mutated_params_file_loads_or_names_a_key_it_touched(tmp_path: Path, change: tuple[dict, list[str]]):
    tree, touched = change
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    result = _load(path)
    if isinstance(result, Params):
        assert result.digest() and result.flat()  # what tracking and DVC read from a loaded file
        return
    named = [
        key for key in touched if re.search(rf"(^|[ :;]){re.escape(key)}[:. ]", result.partition(" is invalid: ")[2])
    ]
    # a removed or renamed section leaves its keys' parent "Field required": a prefix of a touched key
    parents = [key for key in touched if any(f" {p}: Field required" in result for p in _prefixes(key))]
    assert named or parents, f"{result!r} names none of {touched}"


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


@FUZZ
@given(
    data=st.data(),
    junk=st.one_of(
        st.text(alphabet=":{}[]&*!|>'\"%@`\t\n-?#,\\ \x00\x07\ufeff", min_size=1, max_size=6).map(str.encode),
        st.binary(min_size=1, max_size=6),
    ),
)
def test_broken_yaml_or_bytes_name_the_line_or_the_byte_offset(tmp_path: Path, data: st.DataObject, junk: bytes):
    original = (REPO / "params.yaml").read_bytes()
    at = data.draw(st.integers(0, len(original)))
    broken = original[:at] + junk + original[at:]
    path = tmp_path / "params.yaml"
    path.write_bytes(broken)
    result = _load(path)
    if isinstance(result, str) and ": not UTF-8: " in result:
        offset = int(result.rsplit(" ", 1)[1])
        broken[:offset].decode("utf-8")  # everything before the named offset decodes
        assert f"byte {broken[offset]:#04x}" in result


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("window: {length: 1" + "0" * 5000 + "}", "line 1, column 18: cannot read this value: Exceeds the limit"),
        ("train: {seed: 2024-13-45}", "line 1, column 15: cannot read this value: month must be in 1..12"),
        ("sweep: " + "[" * 5000, "not valid YAML: nested too deeply"),
        ("a:\n  b: \x00", "line 2, column 6: character U+0000 is not allowed"),
        ('"a\\nb": 1', "'a\\nb': Extra inputs are not permitted"),
        ("- 1", "expected a mapping of sections, got list"),
    ],
)
def test_values_pyyaml_cannot_build_are_located(tmp_path: Path, text: str, message: str):
    """Found by the fuzzer: PyYAML's ValueError and RecursionError, and a key with a line break in it."""
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert message in _load(path)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("train.seed", 2**40, "less than or equal to"),  # NumPy refuses seeds >= 2**32: mid-training, before
        ("window.stride", 10**30, "less than or equal to"),
        ("train.clipnorm", float("inf"), "finite number"),
        ("evaluate.temperature", float("nan"), "finite number"),
    ],
)
def test_huge_and_non_finite_numbers_are_refused_at_load(tmp_path: Path, key: str, value: Any, allowed: str):
    tree = yaml.safe_load(yaml.safe_dump(BASE))
    section, name = key.split(".")
    tree[section][name] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    message = _load(path)
    assert f"{key}: Input should be" in message and allowed in message


@pytest.mark.parametrize(
    ("content", "stderr"),
    [
        (b"\xc7\xd1\xb1\xdb: 1\n", "not UTF-8: byte 0xc7 at offset 0"),  # cp949 Korean, the likeliest mistake
        (b"window: {length: [\n", "not valid YAML at line 2, column 1"),
    ],
)
def test_the_cli_says_one_line_without_a_traceback(tmp_path: Path, content: bytes, stderr: str):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    result = subprocess.run(
        [BIN / "char-rnn", "check-params", "--params", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert stderr in result.stderr


# ---- corpora ----------------------------------------------------------------------------------------

unicode_text = st.text(
    st.characters(codec=None, categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Cs", "Co")), max_size=200
)


def _written(text: str) -> bytes:
    """UTF-8, NFC and NFD mixed, lone surrogates as the bytes a careless encoder writes for them."""
    half = len(text) // 2
    mixed = unicodedata.normalize("NFC", text[:half]) + unicodedata.normalize("NFD", text[half:])
    return mixed.encode("utf-8", errors="surrogatepass")


def _ingest(tmp_path: Path, data: bytes) -> str | None:
    """check + ingest + window on a file with these bytes: None when they pass, else the one-line message."""
    source = tmp_path / "corpus.txt"
    source.write_bytes(data)
    window, split = WindowParams(length=3, stride=1), SplitParams(val_fraction=0.2, tune_fraction=0.1)
    try:
        text = load_corpus(CorpusParams(source="corpus.txt"), tmp_path)
        split_sizes(len(text), split, window.length)
        written = tmp_path / "data.txt"
        written.write_text(text, encoding="utf-8", newline="")
        windows = cut_windows(read_corpus(written), window, split, VocabParams(units="open"))
    except PipelineError as exc:
        message = str(exc)
        assert message.isprintable(), f"not one printable line: {message!r}"
        return message
    assert text == unicodedata.normalize("NFC", text) and "\r" not in text and not text.startswith("\ufeff")
    spelled = [getattr(windows, split) for split in ("train", "tune", "val", "test")]
    assert windows.units.decode(np.concatenate(spelled)) == text  # every character, the held-out ones too
    return None


@FUZZ
@given(text=unicode_text)
def test_random_unicode_is_ingested_or_refused_at_the_first_surrogate(tmp_path: Path, text: str):
    data = _written(text)
    message = _ingest(tmp_path, data)
    first_bad = next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cs"), None)
    if first_bad is not None:
        assert message is not None and "not valid UTF-8" in message
        offset = int(re.search(r"at offset (\d+)", message).group(1))
        data[:offset].decode("utf-8")
        assert data[offset] == 0xED  # the lead byte of an encoded surrogate
    elif message is not None:
        assert re.search(r"is empty|window\.length|split\.", message), message


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_are_ingested_or_refused_naming_the_byte_offset(tmp_path: Path, data: bytes):
    message = _ingest(tmp_path, data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        assert message is not None and f"byte {data[exc.start]:#04x} at offset {exc.start}" in message
        return
    assert message is None or re.search(r"is empty|window\.length|split\.", message), message


@pytest.mark.parametrize("source", ["x" * 5000, "a\x00b", "\ud800.txt", "."])
def test_any_corpus_source_string_is_refused_in_one_line(tmp_path: Path, source: str):
    """Found by the fuzzer: a too-long name was an OSError traceback; a NUL was printed raw."""
    with pytest.raises(PipelineError, match=r"^corpus\.source: ") as caught:
        load_corpus(CorpusParams(source=source), tmp_path)
    assert str(caught.value).isprintable()
