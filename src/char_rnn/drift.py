"""Drift: the new text against the text the champion trained on, checked before any training.

A corpus that keeps arriving meets new syllables, new spellings and now and then something that is
not the corpus at all (an English manual, a file of junk dropped into the folder). Which text is new
is decided by the documents' hashes: a document the champion's training profile does not list with
the same sha256 is new (an edited one is new and also said to have changed). As TFX's
ExampleValidator does, the new text is compared with the champion's training statistics, here with
Great Expectations, on two tables:

- one row per new document: its length (an empty one is refused), the share of its characters the
  champion's training text never had, the share of each script (Hangul, Latin, digits, punctuation,
  other) against the champion's, and how much of it an earlier document already has (a
  near-duplicate: the same text delivered twice). A failed row names its document.
- one row per character of the new text: the Kullback-Leibler divergence (nats) of its character
  distribution from the champion's, characters the champion never saw sharing `max_unseen_share` of
  the reference's weight (GX's tail holdout).

Without a champion (the first run), or one registered before profiles were kept, only what needs no
reference is checked (empty and duplicated documents). The thresholds are `params.yaml`'s `drift:`.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from typing import Any

import pandas as pd

from char_rnn.errors import PipelineError
from char_rnn.params import DriftParams


class DriftFailed(PipelineError):
    """The new text failed a drift expectation; the message names each, with the documents."""


SCRIPTS = ("hangul", "latin", "digit", "punctuation", "other")
SHINGLE = 8  # characters per shingle in the duplicate check: a shared 8-gram is rarely chance in Korean


def script(char: str) -> str:
    """The script of a non-space character, as the drift check counts them."""
    if "\uac00" <= char <= "\ud7a3" or "\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f":
        return "hangul"
    if char.isdigit():
        return "digit"
    if char.isalpha() and unicodedata.name(char, "").startswith("LATIN"):
        return "latin"
    return "punctuation" if unicodedata.category(char)[0] in "PS" else "other"


def script_shares(counts: Counter[str]) -> dict[str, float]:
    """Each script's share of the non-space characters counted."""
    by_script: Counter[str] = Counter()
    for char, n in counts.items():
        if not char.isspace():
            by_script[script(char)] += n
    total = sum(by_script.values()) or 1
    return {name: by_script[name] / total for name in SCRIPTS}


def training_profile(source: str, text: str, documents: list[dict[str, Any]], train_chars: int) -> dict[str, Any]:
    """What a model trains on, kept with its run: the corpus source, its documents (names, hashes) and
    the training text's character counts. The next run's drift check compares its new text with the
    champion's when both read the same source (another corpus is not drift, as the gate does not
    compare across corpora either)."""
    counts = Counter(text[:train_chars])
    return {"source": source, "documents": documents, "train_chars": train_chars} | {
        "char_counts": dict(sorted(counts.items()))
    }


def same_corpus(reference: dict[str, Any], source: str, documents: list[dict[str, Any]]) -> bool:
    """Whether the champion learnt this corpus: the same source, or (a folder moved or renamed) a
    document of the same text. Another corpus is not drift (the gate does not compare across corpora
    either); a profile from before sources were kept counts as this corpus."""
    hashes = {d["sha256"] for d in documents}
    return reference.get("source", source) == source or any(d["sha256"] in hashes for d in reference["documents"])


def new_documents(documents: list[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, list[str]]:
    """The documents that are new (or changed) since the reference, and earlier ones changed or removed."""
    known = {d["name"]: d["sha256"] for d in reference["documents"]} if reference else {}
    names = {d["name"] for d in documents}
    return {
        "new": [d["name"] for d in documents if known.get(d["name"]) != d["sha256"]],
        "changed": [d["name"] for d in documents if d["name"] in known and known[d["name"]] != d["sha256"]],
        "removed": [name for name in known if name not in names],
    }


def document_texts(text: str, documents: list[dict[str, Any]]) -> dict[str, str]:
    """Each document's text, by name, in the corpus's order (the manifest places it)."""
    return {d["name"]: text[d["start"] : d["start"] + d["chars"]] for d in documents}


def document_table(text: str, documents: list[dict[str, Any]], new: list[str], seen: set[str]) -> pd.DataFrame:
    """One row per new document: its figures against the reference's characters `seen` (empty: none)."""
    texts = document_texts(text, documents)
    hashes = {d["name"]: d["sha256"] for d in documents}
    shingles = {name: _shingles(body) for name, body in texts.items()}
    place, fresh = {name: i for i, name in enumerate(texts)}, set(new)
    rows = []
    for name in new:
        counts = Counter(c for c in texts[name] if not c.isspace())
        chars = sum(counts.values())
        # every known document, and the new ones before it: of two new copies, the later is the duplicate
        others = [o for o in texts if o != name and (o not in fresh or place[o] < place[name])]
        similarity, similar_to = max(
            ((1.0 if hashes[o] == hashes[name] else _contained(shingles[name], shingles[o]), o) for o in others),
            default=(0.0, ""),
        )
        unseen = sum(n for c, n in counts.items() if c not in seen) / chars if seen and chars else None
        shares = {f"{s}_share": v if chars else None for s, v in script_shares(counts).items()}  # empty: no mix
        rows.append(
            {"document": name, "chars": chars, "unseen_share": unseen, **shares}
            | {"similarity": similarity, "similar_to": similar_to}
        )
    return pd.DataFrame(rows)


def _shingles(text: str) -> set[int]:
    """The text's 8-grams, hashed (this process's hashes: compared within it only), to keep memory down."""
    return {hash(text[i : i + SHINGLE]) for i in range(len(text) - SHINGLE + 1)}


def _contained(part: set[int], whole: set[int]) -> float:
    """The share of `part`'s shingles that `whole` has: 1.0 for a document delivered again."""
    return len(part & whole) / len(part) if part else 0.0


def document_expectations(params: DriftParams, reference_shares: dict[str, float] | None) -> list[Any]:
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectColumnValuesToBeBetween(column="chars", min_value=params.min_document_chars, meta={"why": "empty"}),
        gxe.ExpectColumnValuesToBeBetween(
            column="similarity", max_value=params.max_similarity, meta={"why": "a near-duplicate of another document"}
        ),
    ]
    if reference_shares is None:
        return expectations
    expectations.append(gxe.ExpectColumnValuesToBeBetween(column="unseen_share", max_value=params.max_unseen_share))
    for name, share in reference_shares.items():
        low, high = max(0.0, share - params.max_script_shift), min(1.0, share + params.max_script_shift)
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=f"{name}_share", min_value=round(low, 4), max_value=round(high, 4), meta={"why": "script mix"}
            )
        )
    return expectations


def text_expectation(params: DriftParams, char_counts: dict[str, int]) -> Any:
    """The character distribution of the new text against the reference's, unseen characters sharing
    `max_unseen_share` of the reference's weight."""
    import great_expectations.expectations as gxe

    counted = {c: n for c, n in char_counts.items() if not c.isspace()}
    total = sum(counted.values())
    return gxe.ExpectColumnKLDivergenceToBeLessThan(
        column="char",
        partition_object={"values": list(counted), "weights": [n / total for n in counted.values()]},
        threshold=params.max_divergence,
        tail_weight_holdout=params.max_unseen_share,
    )


def check_drift(
    text: str, documents: list[dict[str, Any]], reference: dict[str, Any] | None, params: DriftParams
) -> dict[str, Any]:
    """The drift report of the corpus against the champion's training profile (None: no champion's)."""
    from char_rnn.validation import run_suite

    found = new_documents(documents, reference)
    counts = reference["char_counts"] if reference else {}
    shares = script_shares(Counter(counts)) if reference else None
    suites, table = [], pd.DataFrame()
    if found["new"]:
        table = document_table(text, documents, found["new"], set(counts))
        suites.append(run_suite("drift.documents", table, document_expectations(params, shares), index="document"))
        if reference and any(row["chars"] for row in table.to_dict("records")):  # characters to compare
            texts = document_texts(text, documents)
            chars = pd.DataFrame({"char": [c for name in found["new"] for c in texts[name] if not c.isspace()]})
            suites.append(run_suite("drift.text", chars, [text_expectation(params, counts)]))
    rows = json.loads(table.to_json(orient="records"))  # NaN (an empty document's shares) as null
    return {"success": all(s["success"] for s in suites), **found, "reference_shares": shares, "documents": rows} | {
        "suites": suites
    }


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The report's headline figures: new documents, and where compared, the largest unseen share and the
    new text's divergence."""
    found = {"new_documents": float(len(report["new"]))}
    for suite in report["suites"]:
        for e in suite["expectations"]:
            if suite["suite"] == "drift.text" and isinstance(e["observed"], float):
                found["divergence"] = e["observed"]
    unseen = [row["unseen_share"] for row in report["documents"] if row.get("unseen_share") is not None]
    if unseen:
        found["max_unseen_share"] = max(unseen)
    return found


def failures(report: dict[str, Any]) -> list[str]:
    """One line per failed expectation: what was observed, and in which documents."""
    lines = []
    for suite in report["suites"]:
        for e in suite["expectations"]:
            if e["success"]:
                continue
            bounds = {
                k: e["kwargs"][k] for k in ("min_value", "max_value", "threshold") if e["kwargs"].get(k) is not None
            }
            where = f" in {', '.join(e['rows'])}" if e.get("rows") else ""
            column = e["kwargs"].get("column", "")
            lines.append(f"{suite['suite']}: {column} {_bounds(bounds)} failed{where} (observed {e['observed']!r})")
    return lines


def _bounds(bounds: dict[str, float]) -> str:
    said = {"min_value": ">=", "max_value": "<=", "threshold": "<="}
    return " and ".join(f"{said[k]} {v:g}" for k, v in bounds.items())
