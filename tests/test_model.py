"""The model file as the later stages load it: an ensemble, saved and loaded for scoring."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def test_a_saved_ensemble_loads_for_scoring_without_a_warning(tmp_path: Path) -> None:
    """tune and evaluate load `model.keras` on every run: Keras' "Skipping variable loading for optimizer
    'unused'" came from an optimizer the ensemble was compiled with and never built."""
    import keras

    from char_rnn.model import average, build_model, load_model, save_model
    from char_rnn.params import ModelParams

    params = ModelParams(cell="gru", units=8, layers=1, dropout=0.0, recurrent_dropout=0.0, input="one_hot",
                         embedding_dim=8, ensemble=2)  # fmt: skip
    keras.utils.set_random_seed(5)
    ensemble = average([build_model(params, 12, f"member_{i}") for i in (1, 2)])
    save_model(ensemble, tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(str(tmp_path / "model.keras"))
    ids = (np.arange(10, dtype=np.int32) % 12)[None]
    np.testing.assert_allclose(np.asarray(loaded(ids)), np.asarray(ensemble(ids)), atol=1e-6)
