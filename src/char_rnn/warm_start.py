"""Warm start: this run's RNNs begin from the champion's weights instead of a fresh initialisation.

Text that keeps arriving grows the open unit inventory (a character that became frequent enough gets
a unit of its own), so the champion's weights cannot be loaded as they are. They are carried over by
unit name: the rows of the input (the first recurrent kernel under one-hot input, or the embedding)
and the columns of the output layer of every unit both inventories have are the champion's; a unit
the champion lacked keeps this run's seeded initialisation, and the recurrent weights are copied
whole. The model's shape (`model.*`) must be the champion's; each ensemble member starts from the
champion's member of the same place. The shape is checked before the first epoch. Which version a
run started from is a tag of the run and of the version it registers (`tracking.WARM_START`), and is
kept in `models/fit.json`, so the refit starts from the same version even if the champion changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from char_rnn.errors import PipelineError
from char_rnn.params import InputEncoding, ModelParams
from char_rnn.units import Units


class WarmStartError(PipelineError):
    """The champion cannot be continued by this run's model (another shape); nothing was trained."""


@dataclass(frozen=True)
class Start:
    """The champion's weights per member, by layer name, and the units they are indexed by."""

    version_uri: str
    members: list[dict[str, list[np.ndarray]]]
    units: Units


def champion_uri(model_name: str) -> str | None:
    """`models:/name/<version>` of the champion now, or None when there is none; a registry that cannot
    answer raises (an outage must not read as "no champion": the run would train from scratch)."""
    from char_rnn.registry import current_champion

    champion = current_champion(model_name)
    return None if champion is None else f"models:/{model_name}/{champion.version}"


def load_start(version_uri: str, store: str | None, params: ModelParams, units: Units) -> Start:
    """That version's weights, checked against this run's shape before any training starts."""
    from char_rnn.bundle import registered_files
    from char_rnn.lineage import verify_sha256
    from char_rnn.model import load_model, members
    from char_rnn.units import load_units

    with registered_files(version_uri, store) as (_, files, digests):
        for name in ("model", "vocab"):
            verify_sha256(files[name], digests[name])
        model, old_units = load_model(str(files["model"])), load_units(files["vocab"])
    start = Start(
        version_uri,
        [{layer.name: layer.get_weights() for layer in member.layers} for member in members(model)],
        old_units,
    )
    check_shape(start, params, units)
    return start


def champion_rate(version_uri: str, segment: int, context: int) -> float | None:
    """Dynamic evaluation's rate the champion's run chose (its `dynamic/rate`), when it chose it for these
    segments and contexts; None when it did not, or scored without dynamic evaluation. A run that
    continues the champion's weights continues its optimisation too, so the tune stage tries that rate
    instead of the whole grid (`tune.warm_rates`)."""
    from mlflow import MlflowClient

    from char_rnn.registry import resolve_version

    run = MlflowClient().get_run(resolve_version(version_uri).run_id).data
    rate = run.metrics.get("dynamic/rate")
    chosen_for = (run.params.get("tune.dynamic_segment"), run.params.get("tune.dynamic_context"))
    return rate if rate is not None and chosen_for == (str(segment), str(context)) else None


def check_shape(start: Start, params: ModelParams, units: Units) -> None:
    """Refuse a champion this run's model cannot continue: another ensemble size, other layers (cell,
    depth, input encoding) or other sizes, naming what differs."""
    from char_rnn.model import build_model

    if len(start.members) != params.ensemble:
        raise WarmStartError(
            f"train.init: champion: {start.version_uri} is an ensemble of {len(start.members)}, model.ensemble"
            f" is {params.ensemble}; set train.init: scratch to train this shape"
        )
    fresh = build_model(params, units.size, seed=0)
    weighted = {layer.name for layer in fresh.layers if layer.get_weights()}
    for member in start.members:
        theirs = {name for name, weights in member.items() if weights}
        if theirs != weighted:
            raise _mismatch(start, ", ".join(sorted(theirs ^ weighted)))
    initialiser(start, units, params)(0, fresh)  # sizes: refused naming the layer


def initialiser(start: Start, units: Units, params: ModelParams) -> Callable[[int, Any], None]:
    """`init(member, model)`: set a freshly built member's weights from the champion's member."""
    take = np.array([start.units.index.get(name, -1) for name in units.names])
    vocab_first = {"embedding"} if params.input is InputEncoding.embedding else {f"{params.cell.value}_1"}

    def init(member: int, model: Any) -> None:
        for layer in model.layers:
            old, new = start.members[member].get(layer.name), layer.get_weights()
            if not new:
                continue
            if old is None or len(old) != len(new):
                raise _mismatch(start, layer.name)
            if layer.name == "next_char":  # kernel (units, vocab), bias (vocab): columns by unit
                carried = [_by_unit(old[0], new[0], take, axis=1), _by_unit(old[1], new[1], take, axis=0)]
            elif layer.name in vocab_first:  # the first kernel's rows (or the embedding's) by unit
                carried = [_by_unit(old[0], new[0], take, axis=0), *old[1:]]
            else:
                carried = old
            if [w.shape for w in carried] != [w.shape for w in new]:
                raise _mismatch(start, layer.name)
            layer.set_weights(carried)

    return init


def _by_unit(old: np.ndarray, fresh: np.ndarray, take: np.ndarray, axis: int) -> np.ndarray:
    """`fresh` with the champion's slices of every unit it had (`take[i]`: its id there, -1: none)."""
    if np.delete(np.array(old.shape), axis).tolist() != np.delete(np.array(fresh.shape), axis).tolist():
        return old  # another shape: the caller's check names the layer
    carried, known = fresh.copy(), take >= 0
    index = [slice(None)] * fresh.ndim
    index[axis] = np.flatnonzero(known)
    source = [slice(None)] * fresh.ndim
    source[axis] = take[known]
    carried[tuple(index)] = old[tuple(source)]
    return carried


def _mismatch(start: Start, layers: str) -> WarmStartError:
    return WarmStartError(
        f"train.init: champion: {start.version_uri} has another shape than model.* asks for (layer {layers});"
        " set the champion's model.* or train.init: scratch"
    )
