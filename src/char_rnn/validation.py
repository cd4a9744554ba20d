"""Great Expectations suites on the corpus, the splits and the windows; training never starts on bad data.

GX validates tables, so each suite runs on a small frame derived from the data: one profile row for
the corpus, one row per split (train, tune, validation, test: each split's ids are the corpus's text
spelled again, and the units are the ones the training text alone gives), one row per window for the
windows training reads. The report is plain JSON, not GX's Data Docs HTML,
which loads its scripts and styles from CDNs and renders blank offline.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from char_rnn.errors import PipelineError
from char_rnn.params import ValidationParams
from char_rnn.units import OPEN, Units, UnitsError
from char_rnn.windows import SPLITS, WindowSpec, load_split, window_views

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


def split_table(text: str, units: Units, spec: WindowSpec, ids: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per split: its ids against the corpus text spelled again, and the units against the
    ones the training text alone gives (nothing of the held-out text may reach them)."""
    rebuilt = Units.closed(text[: spec.train_chars])
    if units.kind == OPEN:
        rebuilt = Units.open(text[: spec.train_chars], units.min_count)
    rows, start = [], 0
    for name in SPLITS:
        chars, split_ids = getattr(spec, f"{name}_chars"), ids[name]
        try:
            expected = units.encode(text[start : start + chars])
            matches = bool(np.array_equal(expected, split_ids))
        except UnitsError:
            matches = False
        rows.append(
            {
                "split": name,
                "chars": chars,
                "units": len(split_ids),
                "declared_units": getattr(spec, f"{name}_units"),
                "min_id": int(split_ids.min(initial=0)),
                "max_id": int(split_ids.max(initial=0)),
                "ids_match_corpus": matches,
                "units_from_training_text": rebuilt.names == units.names,
            }
        )
        start += chars
    frame = pd.DataFrame(rows)
    frame["covers_corpus"] = int(frame["chars"].sum()) == len(text)
    return frame


def window_table(spec: WindowSpec, ids: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per window of the training and validation splits (the windows that fit reads)."""
    frames = []
    for name in ("train", "val"):
        inputs, targets = window_views(ids[name], spec.length, spec.stride)
        frames.append(
            pd.DataFrame(
                {
                    "split": name,
                    "start": np.arange(len(inputs)) * spec.stride + spec.start(name),
                    "input_length": inputs.shape[1],
                    "target_length": targets.shape[1],
                    "target_is_shifted_input": (targets[:, :-1] == inputs[:, 1:]).all(axis=1),
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


def split_expectations(spec: WindowSpec) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToEqual(value=len(SPLITS)),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="units", column_B="declared_units"),
        gxe.ExpectColumnValuesToBeBetween(column="min_id", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="max_id", max_value=spec.vocab_size - 1),
        gxe.ExpectColumnValuesToBeInSet(column="ids_match_corpus", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(
            column="units_from_training_text", value_set=[True], meta={"why": "nothing learnt from held-out text"}
        ),
        gxe.ExpectColumnValuesToBeInSet(column="covers_corpus", value_set=[True]),
    ]


def window_expectations(spec: WindowSpec) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToEqual(value=spec.train_windows + spec.val_windows),
        gxe.ExpectColumnValuesToBeInSet(column="input_length", value_set=[spec.length]),
        gxe.ExpectColumnValuesToBeInSet(column="target_length", value_set=[spec.length]),
        gxe.ExpectColumnValuesToBeInSet(column="target_is_shifted_input", value_set=[True]),
    ]


def run_suite(name: str, frame: pd.DataFrame, expectations: list[Any], index: str | None = None) -> dict[str, Any]:
    """Run one suite in an ephemeral GX context; returns a JSON-ready summary of every expectation.
    `index`: a column naming the rows, listed for each expectation's unexpected rows (`rows`)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    shape = {"result_format": "COMPLETE", "unexpected_index_column_names": [index]} if index else "SUMMARY"
    result = gx.ValidationDefinition(data=batch, suite=suite, name=name).run(
        batch_parameters={"dataframe": frame}, result_format=shape
    )
    return {
        "suite": name,
        "success": bool(result.success),
        "expectations": [_summarise(r, index) for r in result.results],
    }


def _summarise(result: Any, index: str | None) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    observed = result.result.get("observed_value", result.result.get("partial_unexpected_list"))
    observed = observed.item() if isinstance(observed, np.generic) else observed  # JSON: a number, not a string
    rows = result.result.get("unexpected_index_list") if index else None
    return {
        "expectation": config.type,
        "kwargs": kwargs,
        "success": bool(result.success),
        "observed": observed,
        "unexpected_count": result.result.get("unexpected_count"),
    } | ({"rows": [row[index] for row in rows]} if rows else {})


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


def validate(text: str, units: Units, spec: WindowSpec, windows: Path, params: ValidationParams) -> dict[str, Any]:
    """Every suite's report, passed or not: the stage writes it before `require_success` stops the run."""
    ids = {name: load_split(windows, name) for name in SPLITS}
    suites = [
        run_suite("corpus", corpus_profile(text), corpus_expectations(params, spec.length)),
        run_suite("splits", split_table(text, units, spec, ids), split_expectations(spec)),
        run_suite("windows", window_table(spec, ids), window_expectations(spec)),
    ]
    return {"success": all(s["success"] for s in suites), "suites": suites}


def counts(report: dict[str, Any]) -> tuple[int, int]:
    """(passed, failed) expectations of a report, both suites together."""
    results = [e["success"] for suite in report["suites"] for e in suite["expectations"]]
    return sum(results), len(results) - sum(results)


def require_success(report: dict[str, Any]) -> None:
    """Raise `ValidationFailed` naming every failed expectation with its observed values."""
    if not report["success"]:
        raise ValidationFailed("validation failed:\n  " + "\n  ".join(failures(report)))
