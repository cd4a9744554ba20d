"""Great Expectations suites on the corpus and on the windows; training never starts on bad data.

GX validates tables, so each suite runs on a small frame derived from the data: one profile row for
the corpus, one row per window for the windows. The report is plain JSON, not GX's Data Docs HTML,
which loads its scripts and styles from CDNs and renders blank offline.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np
import pandas as pd

from char_rnn.errors import PipelineError
from char_rnn.params import ValidationParams
from char_rnn.windows import WindowSpec, encode, window_views

ALLOWED_CONTROLS = frozenset("\n\t")


class ValidationFailed(PipelineError):
    """One or more expectations failed; the message names each with its observed values."""


def corpus_profile(text: str) -> pd.DataFrame:
    controls = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in ALLOWED_CONTROLS)
    return pd.DataFrame(
        {
            "characters": [len(text)],
            "non_whitespace": [len(text) - sum(c.isspace() for c in text)],
            "control_share": [controls / max(1, len(text))],
            "is_nfc": [unicodedata.is_normalized("NFC", text)],
            "has_cr_or_bom": ["\r" in text or "\ufeff" in text],
        }
    )


def window_table(text: str, chars: list[str], spec: WindowSpec, train: np.ndarray, val: np.ndarray) -> pd.DataFrame:
    """One row per window of each split, checked against the corpus text itself (not only the ids)."""
    corpus_ids = encode(text, chars) if set(text) <= set(chars) else None
    frames = []
    for name, ids, offset in (("train", train, 0), ("val", val, spec.train_chars + spec.tune_chars)):
        inputs, targets = window_views(ids, spec.length, spec.stride)
        starts = np.arange(len(inputs)) * spec.stride
        matches = np.zeros(len(inputs), dtype=bool)
        if corpus_ids is not None and len(inputs):
            source, _ = window_views(corpus_ids[offset : offset + len(ids)], spec.length, spec.stride)
            matches = (inputs == source).all(axis=1)
        frames.append(
            pd.DataFrame(
                {
                    "split": name,
                    "start": starts + offset,
                    "input_length": inputs.shape[1],
                    "target_length": targets.shape[1],
                    "min_id": np.minimum(inputs.min(axis=1, initial=0), targets.min(axis=1, initial=0)),
                    "max_id": np.maximum(inputs.max(axis=1, initial=0), targets.max(axis=1, initial=0)),
                    "target_is_shifted_input": (targets[:, :-1] == inputs[:, 1:]).all(axis=1),
                    "input_matches_corpus": matches,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def corpus_expectations(params: ValidationParams, length: int) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="non_whitespace", min_value=1, meta={"why": "corpus not empty"}),
        gxe.ExpectColumnValuesToBeBetween(
            column="characters", min_value=length + 1, meta={"why": "longer than one window plus its target"}
        ),
        gxe.ExpectColumnValuesToBeBetween(column="control_share", max_value=params.max_control_share),
        gxe.ExpectColumnValuesToBeInSet(column="is_nfc", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="has_cr_or_bom", value_set=[False]),
    ]


def window_expectations(spec: WindowSpec) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToEqual(value=spec.train_windows + spec.val_windows),
        gxe.ExpectColumnValuesToBeInSet(column="input_length", value_set=[spec.length]),
        gxe.ExpectColumnValuesToBeInSet(column="target_length", value_set=[spec.length]),
        gxe.ExpectColumnValuesToBeBetween(column="min_id", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="max_id", max_value=spec.vocab_size - 1),
        gxe.ExpectColumnValuesToBeInSet(column="target_is_shifted_input", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="input_matches_corpus", value_set=[True]),
    ]


def run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> dict[str, Any]:
    """Run one suite in an ephemeral GX context; returns a JSON-ready summary of every expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    result = gx.ValidationDefinition(data=batch, suite=suite, name=name).run(batch_parameters={"dataframe": frame})
    return {"suite": name, "success": bool(result.success), "expectations": [_summarise(r) for r in result.results]}


def _summarise(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    observed = result.result.get("observed_value", result.result.get("partial_unexpected_list"))
    return {
        "expectation": config.type,
        "kwargs": kwargs,
        "success": bool(result.success),
        "observed": observed,
        "unexpected_count": result.result.get("unexpected_count"),
    }


def failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{suite['suite']}: {e['expectation']}({_args(e['kwargs'])}) failed; observed {e['observed']!r}"
        + (f", {e['unexpected_count']} unexpected rows" if e["unexpected_count"] else "")
        for suite in report["suites"]
        for e in suite["expectations"]
        if not e["success"]
    ]


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def validate(
    text: str, chars: list[str], spec: WindowSpec, train: np.ndarray, val: np.ndarray, params: ValidationParams
) -> dict[str, Any]:
    """Both suites' report, passed or not: the stage writes it before `require_success` stops the run."""
    suites = [run_suite("corpus", corpus_profile(text), corpus_expectations(params, spec.length))]
    suites.append(run_suite("windows", window_table(text, chars, spec, train, val), window_expectations(spec)))
    return {"success": all(s["success"] for s in suites), "suites": suites}


def counts(report: dict[str, Any]) -> tuple[int, int]:
    """(passed, failed) expectations of a report, both suites together."""
    results = [e["success"] for suite in report["suites"] for e in suite["expectations"]]
    return sum(results), len(results) - sum(results)


def require_success(report: dict[str, Any]) -> None:
    """Raise `ValidationFailed` naming every failed expectation with its observed values."""
    if not report["success"]:
        raise ValidationFailed("validation failed:\n  " + "\n  ".join(failures(report)))
