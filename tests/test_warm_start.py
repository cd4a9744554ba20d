"""Warm start carries the champion's weights over by unit name into a model whose inventory grew."""

from __future__ import annotations

import numpy as np
import pytest

from char_rnn.model import build_model
from char_rnn.params import ModelParams, Params, with_overrides
from char_rnn.units import Units
from char_rnn.warm_start import Start, WarmStartError, check_shape, initialiser


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
    if encoding == "embedding":  # the first kernel reads embedding features, not units: copied whole
        np.testing.assert_array_equal(now["simple_rnn_1"][0], was["simple_rnn_1"][0])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"units": 12}, r"\(layer simple_rnn_1\)"),
        ({"cell": "gru"}, r"\(layer gru_1, simple_rnn_1\)"),
        ({"layers": 2}, r"\(layer simple_rnn_2\)"),
        ({"input": "embedding"}, r"\(layer embedding\)"),
        ({"ensemble": 2}, r"models:/m/3 is an ensemble of 1, model.ensemble is 2"),
    ],
)
def test_another_shape_is_refused_before_training_naming_what_differs(
    repo_params: Params, change: dict, named: str
) -> None:
    units = Units.closed("abc")
    start = champion(shape(repo_params), units)
    with pytest.raises(WarmStartError, match=named):
        check_shape(start, shape(repo_params, **change), units)
    check_shape(start, shape(repo_params), units)  # its own shape passes


def test_each_ensemble_member_starts_from_the_champions_member_at_its_place(repo_params: Params) -> None:
    params, units = shape(repo_params, ensemble=2), Units.closed("abc")
    members = [build_model(params, units.size, name=f"member_{i + 1}", seed=i) for i in range(2)]
    start = Start("models:/m/3", [{layer.name: layer.get_weights() for layer in m.layers} for m in members], units)
    init = initialiser(start, units, params)
    for i in (1, 0):
        model = build_model(params, units.size, name=f"member_{i + 1}", seed=7)
        init(i, model)
        np.testing.assert_array_equal(model.get_layer("next_char").get_weights()[0], start.members[i]["next_char"][0])
