"""Model and training: the blog's architecture, deterministic fits, and NaN that loses nothing."""

from __future__ import annotations

import numpy as np
import pytest

from char_rnn import stages
from char_rnn.params import with_overrides


@pytest.fixture
def windowed(layout, tiny_params):
    stages.ingest(tiny_params, layout)
    stages.window(tiny_params, layout)
    stages.validate(tiny_params, layout)
    stages.drift(tiny_params, layout)
    stages.baseline(tiny_params, layout)
    return layout


@pytest.mark.parametrize("cell", ["simple_rnn", "lstm", "gru"])
@pytest.mark.parametrize("encoding", ["one_hot", "embedding"])
def test_model_predicts_a_distribution_per_step_for_any_length(repo_params, cell, encoding):
    from char_rnn.model import build_model

    params = with_overrides(
        repo_params,
        {"model.cell": cell, "model.input": encoding, "model.layers": 2, "model.dropout": 0.2, "model.units": 8},
    )
    model = build_model(params.model, vocab_size=11)
    for length in (5, 20):
        probs = np.asarray(model(np.zeros((2, length), dtype=np.int32)))
        assert probs.shape == (2, length, 11)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    assert sum(1 for layer in model.layers if cell in layer.name) == 2


def test_initial_weights_ignore_other_threads_drawing_from_pythons_random(repo_params):
    """Keras seeds layers from Python's global `random`; a busy thread must not change the model."""
    import random
    import threading

    from char_rnn.model import build_model
    from char_rnn.training import seed_everything

    def weights(seed: int | None) -> list[np.ndarray]:
        seed_everything(42)
        return build_model(repo_params.model, vocab_size=48, seed=seed).get_weights()

    quiet, stop = weights(None), threading.Event()
    drawing = threading.Thread(target=lambda: [random.random() for _ in iter(stop.is_set, True)], daemon=True)
    drawing.start()
    try:
        for _ in range(3):
            assert all(np.array_equal(a, b) for a, b in zip(quiet, weights(42), strict=True))
    finally:
        stop.set()
        drawing.join()


def test_blog_model_has_the_blogs_weights(repo_params):
    from char_rnn.model import build_model

    model = build_model(repo_params.model, vocab_size=48)
    # SimpleRNN(100) on 48 one-hot inputs: 48*100 + 100*100 + 100; Dense: 100*48 + 48.
    assert model.count_params() == (48 * 100 + 100 * 100 + 100) + (100 * 48 + 48)


def test_training_is_deterministic_and_saved_model_loads_safely(windowed, tiny_params):
    from char_rnn.model import load_model

    first = stages.train(tiny_params, windowed)
    first_weights = load_model(str(windowed.fit_model)).get_weights()
    second = stages.train(tiny_params, windowed)
    assert first["run_id"] != second["run_id"]
    assert first["loss"] == second["loss"]
    second_weights = load_model(str(windowed.fit_model)).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first_weights, second_weights, strict=True))


def test_loss_goes_down_and_every_epoch_is_logged(windowed, tiny_params):
    import mlflow

    params = with_overrides(tiny_params, {"train.epochs": 8})
    run_id = stages.train(params, windowed)["run_id"]
    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 9))  # epochs, counted from 1
    assert history[-1].value < history[0].value - 0.1
    run = mlflow.get_run(run_id)
    assert run.data.params["model.cell"] == "simple_rnn" and run.data.params["data.train_windows"] == "51"
    assert run.data.tags["params_sha256"] == params.digest()


def test_an_ensemble_averages_members_trained_with_their_own_seeds(windowed, tiny_params):
    import keras
    import mlflow

    from char_rnn.model import load_model

    params = with_overrides(tiny_params, {"model.ensemble": 2, "train.epochs": 4})
    run_id = stages.train(params, windowed)["run_id"]
    model = load_model(str(windowed.fit_model))
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert [member.name for member in members] == ["member_1", "member_2"]
    ids = (np.arange(12, dtype=np.int32) % model.output_shape[-1])[None]
    np.testing.assert_allclose(
        np.asarray(model(ids)), np.mean([np.asarray(m(ids)) for m in members], axis=0), atol=1e-6
    )
    assert not np.array_equal(members[0].get_weights()[0], members[1].get_weights()[0])
    client = mlflow.MlflowClient()
    first, second = (
        [m.value for m in client.get_metric_history(run_id, key)] for key in ("train/loss", "train/member2/loss")
    )
    assert len(first) == len(second) == 4 and first != second
    for stage in ("tune", "refit"):
        stages.stage(stage).run(params, windowed)
    metrics = stages.evaluate(params, windowed)  # the blog's metrics, from the averaged model
    assert metrics["epochs"] == 4
    blog = blog_evaluate(load_model(str(windowed.model)), windowed)  # Keras itself, on the served ensemble
    assert (metrics["loss"], metrics["accuracy"]) == (pytest.approx(blog[0], rel=1e-4), pytest.approx(blog[1]))
    assert blog_evaluate(members[0], windowed)[0] != pytest.approx(blog[0], rel=1e-3)  # one member alone differs


def blog_evaluate(model, layout) -> tuple[float, float]:
    """The blog's `model.evaluate(xdata, ydata)`: Keras' loss and accuracy over the training windows."""
    from char_rnn.windows import load_spec, window_views

    spec = load_spec(layout.windows)
    inputs, targets = window_views(np.load(layout.windows / "train.npy"), spec.length, spec.stride)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    figures = model.evaluate(inputs, targets, verbose=0, return_dict=True)
    return figures["loss"], figures["accuracy"]


def test_nan_loss_fails_the_run_and_keeps_the_previous_model(windowed, tiny_params, monkeypatch):
    import keras
    import mlflow

    from char_rnn import training

    stages.train(tiny_params, windowed)
    before = {path: path.read_bytes() for path in (windowed.fit_model, windowed.fit_record, windowed.train_run)}

    class Poison(keras.callbacks.Callback):
        """A real NaN in the weights: the next batch's loss is NaN, as after an exploding gradient."""

        def on_epoch_end(self, epoch, logs=None):
            weights = self.model.get_weights()
            self.model.set_weights([np.full_like(w, np.nan) for w in weights])

    monkeypatch.setattr(training, "early_stopping", lambda _params: [Poison()])  # the only hook inside `fit`
    with pytest.raises(training.TrainingDiverged, match="training diverged at epoch 2"):
        stages.train(tiny_params, windowed)
    assert before == {path: path.read_bytes() for path in before}
    failed = mlflow.search_runs(experiment_names=["char-rnn"], filter_string="attributes.status = 'FAILED'")
    assert len(failed) == 1
