"""Warm start carries the champion's weights over by unit name into a model whose inventory grew."""

from __future__ import annotations

import numpy as np
import pytest

from char_rnn.model import build_model
from char_rnn.params import ModelParams, Params, with_overrides
from char_rnn.units import Units
from char_rnn.warm_start import Start, WarmStartError, initialiser


def shape(repo_params: Params, **changes: object) -> ModelParams:
    return with_overrides(repo_params, {"model.units": 8, **{f"model.{k}": v for k, v in changes.items()}}).model


def champion(params: ModelParams, units: Units, seed: int = 1) -> Start:
    model = build_model(params, units.size, seed=seed)
    return Start("models:/m/3", [{layer.name: layer.get_weights() for layer in model.layers}], units)


@pytest.mark.parametrize("encoding", ["one_hot", "embedding"])
def test_shared_units_keep_the_champions_weights_and_new_ones_start_fresh(repo_params: Params, encoding: str) -> None:
    params = shape(repo_params, input=encoding)
    old, new = Units.closed("abc"), Units.closed("acd")  # b left, d arrived
    start = champion(params, old)
    model = build_model(params, new.size, seed=2)
    fresh = {layer.name: layer.get_weights() for layer in model.layers}
    initialiser(start, new, params)(0, model)
    was, now = start.members[0], {layer.name: layer.get_weights() for layer in model.layers}
    first = "embedding" if encoding == "embedding" else "simple_rnn_1"
    for old_id, new_id in ((0, 0), (2, 1)):  # a and c, at their new places
        np.testing.assert_array_equal(now["next_char"][0][:, new_id], was["next_char"][0][:, old_id])
        np.testing.assert_array_equal(now["next_char"][1][new_id], was["next_char"][1][old_id])
        np.testing.assert_array_equal(now[first][0][new_id], was[first][0][old_id])
    np.testing.assert_array_equal(now["next_char"][0][:, 2], fresh["next_char"][0][:, 2])  # d: this run's own
    np.testing.assert_array_equal(now[first][0][2], fresh[first][0][2])
    np.testing.assert_array_equal(now["simple_rnn_1"][1], was["simple_rnn_1"][1])  # recurrent kernel: whole


def test_another_shape_or_ensemble_size_is_refused_naming_the_layer(repo_params: Params) -> None:
    units = Units.closed("abc")
    start = champion(shape(repo_params), units)
    wider = shape(repo_params, units=12)
    with pytest.raises(WarmStartError, match=r"models:/m/3 has another shape .* \(layer simple_rnn_1\)"):
        initialiser(start, units, wider)(0, build_model(wider, units.size, seed=2))
    gru = shape(repo_params, cell="gru")
    with pytest.raises(WarmStartError, match=r"\(layer gru_1\)"):
        initialiser(start, units, gru)(0, build_model(gru, units.size, seed=2))


def test_each_ensemble_member_starts_from_the_champions_member_at_its_place(repo_params: Params) -> None:
    params, units = shape(repo_params, ensemble=2), Units.closed("abc")
    members = [build_model(params, units.size, name=f"member_{i + 1}", seed=i) for i in range(2)]
    start = Start("models:/m/3", [{layer.name: layer.get_weights() for layer in m.layers} for m in members], units)
    init = initialiser(start, units, params)
    for i in (1, 0):
        model = build_model(params, units.size, name=f"member_{i + 1}", seed=7)
        init(i, model)
        np.testing.assert_array_equal(model.get_layer("next_char").get_weights()[0], start.members[i]["next_char"][0])
