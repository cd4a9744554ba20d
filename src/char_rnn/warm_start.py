"""Warm start: this run's RNNs begin from the champion's weights instead of a fresh initialisation.

Text that keeps arriving grows the open unit inventory (a character that became frequent enough gets
a unit of its own), so the champion's weights cannot be loaded as they are. They are carried over by
unit name: the rows of the input (the first recurrent kernel under one-hot input, or the embedding)
and the columns of the output layer of every unit both inventories have are the champion's; a unit
the champion lacked keeps this run's seeded initialisation, and the recurrent weights are copied
whole. The model's shape (`model.*`) must be the champion's; each ensemble member starts from the
champion's member of the same place. Which version a run started from is a tag of the run and of
the version it registers (`tracking.WARM_START`).
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


def champion_start(model_name: str, store: str | None, params: ModelParams) -> Start | None:
    """The champion's weights (None: no champion yet), refused when its shape is not `params`'."""
    from char_rnn.bundle import registered_files
    from char_rnn.lineage import verify_sha256
    from char_rnn.model import load_model, members
    from char_rnn.registry import ModelNotFound
    from char_rnn.units import load_units

    try:
        with registered_files(f"models:/{model_name}@champion", store) as (version, files, digests):
            for name in ("model", "vocab"):
                verify_sha256(files[name], digests[name])
            model, units = load_model(str(files["model"])), load_units(files["vocab"])
    except ModelNotFound:
        return None
    start = Start(
        f"models:/{model_name}/{version}",
        [{layer.name: layer.get_weights() for layer in member.layers} for member in members(model)],
        units,
    )
    if len(start.members) != params.ensemble:
        raise WarmStartError(
            f"train.init: champion: {start.version_uri} is an ensemble of {len(start.members)}, model.ensemble"
            f" is {params.ensemble}; set train.init: scratch to train this shape"
        )
    return start


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


def _mismatch(start: Start, layer: str) -> WarmStartError:
    return WarmStartError(
        f"train.init: champion: {start.version_uri} has another shape than model.* asks for (layer {layer});"
        " set the champion's model.* or train.init: scratch"
    )
