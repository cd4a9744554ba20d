"""The sweep spec: which configs a sweep trains, every one validated before anything trains.

A spec is a grid of dotted overrides (the keys of params.yaml), optionally sampled:

    max_parallel: 2            # trials training at once
    grid:                      # cartesian product of these values
      model.units: [16, 32]
      model.cell: [gru]
    random: 3                  # optional: sample 3 configs of the grid (all of it when it is smaller)
    seed: 0                    # the sample's seed

Only `model.*` and `train.*` may vary: the data, the split, the evaluation and the registry metric
are computed once and shared, so that every trial is scored on the same text with the same metric.
The file may also be a params file with a top-level `sweep:` section (what params.yaml will hold).
"""

from __future__ import annotations

import itertools
import random as _random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from char_rnn.params import Params, ParamsError, with_overrides

SWEEPABLE = ("model", "train")


class SweepSpecError(ParamsError):
    """A spec that cannot run; the message names every bad key (or config) and why."""


class SweepSpec(BaseModel):
    """A grid (or a random sample of it) of dotted overrides, and how many trials train at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_parallel: int = Field(default=2, ge=1, le=64, description="trials training at once")
    grid: dict[str, list[Any]] = Field(min_length=1, description="dotted key -> values; cartesian product")
    random: int | None = Field(default=None, ge=1, description="sample this many configs of the grid")
    seed: int = Field(default=0, ge=0, description="seed of the random sample")

    @field_validator("grid")
    @classmethod
    def _only_sweepable_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if key.partition(".")[0] not in SWEEPABLE or not key.partition(".")[2]:
                raise ValueError(
                    f"{key}: only model.* and train.* keys can vary; data, evaluation and registry are shared"
                )
            if not values:
                raise ValueError(f"{key}: needs at least one value")
        return grid

    def configs(self) -> list[dict[str, Any]]:
        """The grid's combinations in the spec's key order, or a seeded sample of them (order kept)."""
        keys = list(self.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]
        if self.random is None or self.random >= len(combos):
            return combos
        picked = sorted(_random.Random(self.seed).sample(range(len(combos)), self.random))
        return [combos[i] for i in picked]


@dataclass(frozen=True)
class Trial:
    """One config of a sweep: its folder name, the overrides that define it and the validated params."""

    name: str
    overrides: dict[str, Any]
    params: Params


def parse_spec(raw: Any, origin: str = "sweep spec") -> SweepSpec:
    """Validate a mapping (a bare spec, or a params file's `sweep:` section); errors name the key."""
    if isinstance(raw, dict) and "sweep" in raw:
        raw = raw["sweep"]
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{origin}: expected a mapping with a grid, got {type(raw).__name__}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in err['loc'][:2]) or 'sweep'}: {err['msg'].removeprefix('Value error, ')}"
                 for err in exc.errors()]
        raise SweepSpecError(f"{origin} is invalid:\n" + "\n".join(lines)) from None


def load_spec(path: Path | str) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepSpecError(f"{path}: no such sweep spec") from None
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(raw, origin=str(path))


def trial_name(index: int, overrides: dict[str, Any]) -> str:
    """`01-units=32-cell=gru`: readable, unique by its index, safe as a folder name."""
    parts = [f"{key.rpartition('.')[2]}={value}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join([f"{index:02d}", *parts]))[:120]


def plan_trials(base: Params, spec: SweepSpec) -> list[Trial]:
    """Every config applied to `base` and validated like params.yaml, all before any training starts."""
    trials, errors = [], []
    for index, overrides in enumerate(spec.configs()):
        try:
            trials.append(Trial(trial_name(index, overrides), overrides, with_overrides(base, overrides)))
        except ParamsError as exc:
            errors.append(f"config {index} {overrides}: {exc}")
    if errors:
        raise SweepSpecError("sweep configs are invalid:\n" + "\n".join(errors))
    return trials
