"""The sweep spec: which configs a sweep trains, every one validated before anything trains.

A spec is a grid of dotted overrides (the keys of params.yaml), optionally sampled:

    max_parallel: 2            # trials training at once
    grid:                      # cartesian product of these values
      model.units: [16, 32]
      model.cell: [gru]
    random: 3                  # optional: sample 3 configs of the grid (all of it when it is smaller)
    seed: 0                    # the sample's seed

Only `model.*` and `train.*` may vary: the data, the split, the evaluation and the registry metric
are shared, so that every trial is scored on the same text with the same metric.
The file may also be a params file: its `sweep:` section is read (the default is params.yaml's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from char_rnn.params import Params, ParamsError, SweepParams, read_yaml, with_overrides


class SweepSpecError(ParamsError):
    """A spec that cannot run; the message names every bad key (or config) and why."""


@dataclass(frozen=True)
class Trial:
    """One config of a sweep: its index (its DVC experiment is `<sweep-id>-<index>`), its name (the
    index and what it sets, for the trial table), the overrides that define it and the validated params."""

    index: int
    name: str
    overrides: dict[str, Any]
    params: Params


def parse_spec(raw: Any, origin: str = "sweep spec") -> SweepParams:
    """Validate a mapping (a bare spec, or a params file's `sweep:` section); errors name the key."""
    if isinstance(raw, dict) and "sweep" in raw:
        raw = raw["sweep"]
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{origin}: expected a mapping with a grid, got {type(raw).__name__}")
    try:
        return SweepParams.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'][:2]) or 'sweep'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise SweepSpecError(f"{origin} is invalid: " + "; ".join(problems)) from None  # one line, as params


def load_spec(path: Path | str) -> SweepParams:
    path = Path(path)
    return parse_spec(read_yaml(path, "sweep spec", SweepSpecError), origin=str(path))


def trial_name(index: int, overrides: dict[str, Any]) -> str:
    """`01-units=32-cell=gru`: readable, unique by its index, safe in a DVC experiment's name (a git ref)."""
    parts = [f"{key.rpartition('.')[2]}={value}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join([f"{index:02d}", *parts]))[:120]


def plan_trials(base: Params, spec: SweepParams) -> list[Trial]:
    """Every config applied to `base` and validated like params.yaml, all before any training starts."""
    trials, errors = [], []
    for index, overrides in enumerate(spec.configs()):
        try:
            trials.append(Trial(index, trial_name(index, overrides), overrides, with_overrides(base, overrides)))
        except ParamsError as exc:
            errors.append(f"config {index} {overrides}: {exc}")
    if errors:
        raise SweepSpecError("sweep configs are invalid:\n" + "\n".join(errors))
    return trials
