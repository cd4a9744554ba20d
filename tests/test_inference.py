"""The NumPy runtime against Keras: the same probabilities and greedy text, foreign files refused, no TensorFlow."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from char_rnn.inference import ModelFileError, NumpyModel, load, pick
from char_rnn.params import ModelParams
from conftest import SEED

CHARS = sorted(set(SEED))
IDS = np.array([CHARS.index(c) for c in SEED], dtype=np.int32)
PROMPT = "알엔엔 으로"
STACKED = {"units": 16, "layers": 2, "dropout": 0.2}  # two layers with Dropout after each

# name -> (model params, training epochs): random weights for the mechanics, trained ones because a
# trained model's sharper distributions and larger weights are less forgiving of any difference.
CASES: dict[str, tuple[dict[str, Any], int]] = {
    **{
        f"{cell}-{encoding}": ({"cell": cell, "input": encoding, **STACKED}, 0)
        for cell in ("simple_rnn", "lstm", "gru")
        for encoding in ("one_hot", "embedding")
    },
    "lstm-recurrent-dropout": ({"cell": "lstm", "units": 16, "recurrent_dropout": 0.2}, 0),  # Keras' split kernels
    "gru-embedding-ensemble-of-3": ({"cell": "gru", "input": "embedding", **STACKED, "ensemble": 3}, 0),
    "simple_rnn-one_hot-ensemble-of-3": ({"cell": "simple_rnn", **STACKED, "ensemble": 3}, 0),
    "trained-lstm": ({"cell": "lstm", "units": 32, "layers": 2, "dropout": 0.1}, 20),
    "trained-gru-ensemble-of-2": ({"cell": "gru", "input": "embedding", "units": 32, "ensemble": 2}, 20),
}


def model_params(overrides: dict[str, Any]) -> ModelParams:
    defaults = {
        "layers": 1,
        "dropout": 0.0,
        "recurrent_dropout": 0.0,
        "input": "one_hot",
        "embedding_dim": 8,
        "ensemble": 1,
    }
    return ModelParams(**{**defaults, **overrides})


def keras_model(params: ModelParams, epochs: int) -> Any:
    """`params.ensemble` members (seeded 0, 1, ...), each fitted `epochs` times on the blog's sentence, averaged."""
    import keras

    from char_rnn.model import average, build_model

    windows = np.lib.stride_tricks.sliding_window_view(IDS, 21)
    members = []
    for i in range(params.ensemble):
        member = build_model(params, len(CHARS), f"member_{i + 1}", seed=i)
        if epochs:
            member.compile(optimizer=keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
            member.fit(windows[:, :-1], windows[:, 1:], batch_size=16, epochs=epochs, shuffle=False, verbose=0)
        members.append(member)
    return average(members)


def saved(model: Any, path: Path) -> Path:
    from char_rnn.model import save_model

    save_model(model, path)
    return path


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, NumpyModel]:
    """(the Keras model, the same file loaded by the NumPy runtime)."""
    overrides, epochs = CASES[request.param]
    model = keras_model(model_params(overrides), epochs)
    if epochs:  # else the trained cases would only test random weights again
        predicted = np.asarray(model.predict_on_batch(IDS[None, :-1]))[0].argmax(axis=-1)
        assert (predicted == IDS[1:]).mean() > 0.9, "the trained case did not learn the sentence"
    return model, load(saved(model, tmp_path_factory.mktemp("models") / f"{request.param}.keras"))


@pytest.fixture(scope="module")
def blog_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The blog's shape, SimpleRNN(100) on one-hot input, untrained: the file the refusal tests edit."""
    return saved(
        keras_model(model_params({"cell": "simple_rnn", "units": 100}), 0), tmp_path_factory.mktemp("blog") / "m.keras"
    )


def test_probabilities_equal_keras(case: tuple[Any, NumpyModel]) -> None:
    """Random text, kept short: along random text a trained recurrence amplifies float32 rounding, Keras'
    and ours alike (the 100-epoch blog model drifts to ~6e-5 from float64 after 200 random ids; ~7e-7
    along its own text)."""
    model, runtime = case
    ids = np.random.default_rng(0).integers(0, len(CHARS), size=(4, 60)).astype(np.int32)
    probs = runtime.probabilities(ids)
    assert probs.dtype == np.float32 and probs.shape == (4, 60, len(CHARS))
    assert np.abs(probs - np.asarray(model.predict_on_batch(ids))).max() <= 1e-5


def test_stepping_equals_the_whole_sequence(case: tuple[Any, NumpyModel]) -> None:
    _, runtime = case
    ids = np.random.default_rng(1).integers(0, len(CHARS), size=(3, 40)).astype(np.int32)
    states, stepped = runtime.initial_state(3), []
    for t in range(ids.shape[1]):
        probs, states = runtime.step(ids[:, t], states)
        stepped.append(probs)
    assert np.abs(np.stack(stepped, axis=1) - runtime.probabilities(ids)).max() <= 1e-6


def test_greedy_text_equals_keras_rerun_over_the_growing_text(case: tuple[Any, NumpyModel]) -> None:
    """Greedy generation the blog's way, with Keras: the whole text through the model for every character."""
    model, runtime = case
    text = [CHARS.index(c) for c in PROMPT]
    for _ in range(30):
        text.append(int(np.argmax(np.asarray(model.predict_on_batch(np.array([text], dtype=np.int32)))[0, -1])))
    out = runtime.run(text[: len(PROMPT)], batch=2, length=30)
    assert out.tolist() == [text[len(PROMPT) :]] * 2


def test_held_out_scoring_runs_on_the_runtime(case: tuple[Any, NumpyModel]) -> None:
    from char_rnn.heldout import rnn_char_probabilities

    model, runtime = case
    ids = np.tile(IDS, 3)
    ours = rnn_char_probabilities(runtime, ids, 1, warmup=20, chunk=30)
    np.testing.assert_allclose(ours, rnn_char_probabilities(model, ids, 1, warmup=20, chunk=30), rtol=0, atol=1e-5)


def reference_pick(
    probs: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Sampling as its definition reads, one row at a time in float64 probability space: a unit not
    `allowed` has probability zero, each probability is raised to 1/T, all but the k most probable
    (by rank) are set to zero, one `rng.choice` per row. `pick` works in float32 log space with a
    `partition` threshold and compares one uniform per row with a cumulative sum: they draw alike only
    if both the distribution and the use of `rng` agree."""
    probs = probs.astype(np.float64) if allowed is None else np.where(allowed, probs, 0.0)
    if temperature == 0:
        return probs.argmax(axis=-1)
    draws = []
    for row in probs:
        weights = row ** (1 / temperature)
        if 0 < top_k < len(row):
            weights[np.argsort(row)[:-top_k]] = 0.0
        draws.append(rng.choice(len(row), p=weights / weights.sum()))
    return np.array(draws)


CASES_PICKED = [(0.0, 0), (1.0, 0), (0.7, 3), (2.5, 1), (4.0, 0), (1.5, 29)]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("temperature, top_k", CASES_PICKED)
def test_pick_draws_what_the_obvious_sampler_draws(temperature: float, top_k: int, masked: bool) -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(20, 5, 30))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)).astype(np.float32)
    allowed = (rng.random(probs.shape) < 0.5) | (np.arange(30) == 7) if masked else [None] * len(probs)
    ours, theirs = np.random.default_rng(9), np.random.default_rng(9)
    for row, mask in zip(probs, allowed):
        np.testing.assert_array_equal(
            pick(row, temperature, top_k, ours, mask), reference_pick(row, temperature, top_k, theirs, mask)
        )


# Each share worked out by hand from p = (0.6, 0.3, 0.099999, 1e-6): p ** (1 / T) over its sum, the
# characters outside the top k at zero. The rare character's share is what a careless guard against
# log(0) (a floor on the probabilities) would change at a high temperature.
SHARES = {
    (1.0, 0): [0.6, 0.3, 0.099999, 0.000001],
    (0.5, 0): [0.36 / 0.4599998, 0.09 / 0.4599998, 0.0099998 / 0.4599998, 1e-12 / 0.4599998],  # p ** 2
    (4.0, 0): [0.880112 / 2.214158, 0.740083 / 2.214158, 0.562340 / 2.214158, 0.031623 / 2.214158],
    (1.0, 2): [0.6 / 0.9, 0.3 / 0.9, 0.0, 0.0],
    (2.0, 3): [0.774597 / 1.638546, 0.547723 / 1.638546, 0.316226 / 1.638546, 0.0],
}


@pytest.mark.parametrize("temperature, top_k", list(SHARES))
def test_pick_draws_each_character_as_often_as_its_tempered_share(temperature: float, top_k: int) -> None:
    """200,000 draws from one distribution: every character's frequency within 5 standard errors of the
    share computed by hand (not by another implementation), and a share of zero is never drawn."""
    n, expected = 200_000, np.array(SHARES[temperature, top_k])
    probs = np.tile(np.array([0.6, 0.3, 0.099999, 0.000001], np.float32), (n, 1))
    counts = np.bincount(pick(probs, temperature, top_k, np.random.default_rng(4)), minlength=4)
    assert np.all(np.abs(counts / n - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-5), counts / n
    assert np.all(counts[expected == 0] == 0)


def test_sampling_is_seeded_and_top_1_is_greedy(blog_file: Path) -> None:
    runtime = load(blog_file)
    prompt = [CHARS.index(c) for c in PROMPT]
    sampled = runtime.run(prompt, 3, 50, temperature=1.0, seed=5)
    np.testing.assert_array_equal(sampled, runtime.run(prompt, 3, 50, temperature=1.0, seed=5))
    assert not np.array_equal(sampled, runtime.run(prompt, 3, 50, temperature=1.0, seed=6))
    np.testing.assert_array_equal(runtime.run(prompt, 2, 50, temperature=1.0, top_k=1), runtime.run(prompt, 2, 50))


def blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return min(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def test_blas_runs_on_one_thread_only_while_the_runtime_computes(blog_file: Path) -> None:
    """A step's products are small, so the runtime holds BLAS to one thread; but the count belongs to the
    whole process, whose other work may want every core: loading a model leaves it as it is, and a
    generation in another thread sets it to one while it runs and gives the count back when it ends."""
    import threading

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        runtime = load(blog_file)
        assert blas_threads() == 2
        seen = set()
        worker = threading.Thread(target=runtime.run, args=([0, 1], 1, 10_000))
        worker.start()
        while worker.is_alive():
            seen.add(blas_threads())
        worker.join()
        assert 1 in seen and blas_threads() == 2


def test_ids_outside_the_vocabulary_are_refused(blog_file: Path) -> None:
    runtime = load(blog_file)
    with pytest.raises(ValueError, match=rf"ids must be in \[0, {len(CHARS)}\)"):
        runtime.probabilities(np.array([[0, len(CHARS)]]))
    with pytest.raises(ValueError, match="ids must be in"):
        runtime.run([-1], 1, 5)
    with pytest.raises(ValueError, match="non-empty"):
        runtime.run([], 1, 5)


# ---- refusals ------------------------------------------------------------------------------------------


def rewritten(
    source: Path,
    target: Path,
    config: Callable[[dict[str, Any]], None] | None = None,
    weights: Callable[[h5py.File], None] | None = None,
) -> Path:
    """A copy of a .keras file with its config.json and/or model.weights.h5 edited in place by the callbacks."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if config:
        parsed = json.loads(entries["config.json"])
        config(parsed)
        entries["config.json"] = json.dumps(parsed).encode()
    if weights:
        buffer = io.BytesIO(entries["model.weights.h5"])
        with h5py.File(buffer, "r+") as store:
            weights(store)
        entries["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return target


def layer(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(entry["config"] for entry in config["config"]["layers"] if entry["name"] == name)


def test_a_dense_only_model_is_refused(tmp_path: Path) -> None:
    import keras

    features = keras.Input(shape=(None, 8), name="features")
    model = keras.Model(features, keras.layers.Dense(len(CHARS), activation="softmax")(features))
    with pytest.raises(ModelFileError, match="unsupported layers InputLayer -> Dense"):
        load(saved(model, tmp_path / "dense.keras"))


def test_a_sequential_model_is_refused(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(10, 4)])
    with pytest.raises(ModelFileError, match="a Sequential model"):
        load(saved(model, tmp_path / "sequential.keras"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: layer(c, "simple_rnn_1").update(activation="relu"),
            r"simple_rnn_1 \(SimpleRNN\).*activation='relu'",
        ),
        (lambda c: layer(c, "simple_rnn_1").update(go_backwards=True), "go_backwards=True"),
        (lambda c: layer(c, "next_char").update(activation="linear"), "activation='linear' \\(needs 'softmax'\\)"),
        (lambda c: layer(c, "next_char").update(units=7), f"next_char has 7 units for {len(CHARS)} ids"),
        (lambda c: c["config"]["layers"][2].update(class_name="Bidirectional"), "Bidirectional"),
        (lambda c: c["config"]["layers"][1].update(registered_name="other>OneHot"), "not this project's"),
        (lambda c: layer(c, "one_hot")["dtype"]["config"].update(name="mixed_float16"), "mixed_float16"),
    ],
    ids=["relu", "backwards", "no-softmax", "wrong-vocab", "foreign-layer", "foreign-one-hot", "float16"],
)
def test_configs_this_runtime_cannot_run_are_refused(blog_file: Path, tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        load(rewritten(blog_file, tmp_path / "edited.keras", config=edit))


def test_an_ensemble_of_members_of_different_shapes_is_refused(tmp_path: Path) -> None:
    """`model.average` only ever averages members of one shape: the runtime stacks their weights."""
    from char_rnn.model import average, build_model

    members = [build_model(model_params({"cell": "gru", "units": units}), len(CHARS), f"m{units}") for units in (4, 8)]
    with pytest.raises(ModelFileError, match="the ensemble's members differ in shape"):
        load(saved(average(members), tmp_path / "mixed.keras"))


def test_a_gru_without_reset_after_is_refused(tmp_path: Path) -> None:
    """Keras' other GRU convention: its weights load, but its arithmetic is not the one implemented here."""
    source = saved(keras_model(model_params({"cell": "gru", "units": 4}), 0), tmp_path / "gru.keras")
    with pytest.raises(ModelFileError, match="reset_after=False"):
        load(rewritten(source, tmp_path / "edited.keras", config=lambda c: layer(c, "gru_1").update(reset_after=False)))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda store: store["layers/simple_rnn/cell/vars"].pop("1"), "simple_rnn_1: expected 3 weight arrays"),
        (lambda store: store["layers"].pop("dense"), "no weights for layer next_char"),
        (lambda store: store["layers/simple_rnn"].pop("cell"), "simple_rnn_1 has no cell weights"),
    ],
    ids=["missing-array", "missing-layer", "missing-cell"],
)
def test_missing_weights_are_refused(blog_file: Path, tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        load(rewritten(blog_file, tmp_path / "edited.keras", weights=edit))


def test_a_weight_of_the_wrong_shape_is_refused(blog_file: Path, tmp_path: Path) -> None:
    def shrink(store: h5py.File) -> None:
        stored = store["layers/dense/vars"]
        kernel = stored["0"][()]
        del stored["0"]
        stored["0"] = kernel[:50]

    vocab = len(CHARS)
    with pytest.raises(
        ModelFileError, match=rf"next_char: weight 0 is float32 \(50, {vocab}\), expected float32 \(100, {vocab}\)"
    ):
        load(rewritten(blog_file, tmp_path / "edited.keras", weights=shrink))


def test_files_that_are_no_keras_archive_are_refused(blog_file: Path, tmp_path: Path) -> None:
    (tmp_path / "text.keras").write_text("not a zip")
    with pytest.raises(ModelFileError, match="not a readable .keras file"):
        load(tmp_path / "text.keras")
    with zipfile.ZipFile(blog_file) as archive, zipfile.ZipFile(tmp_path / "half.keras", "w") as half:
        half.writestr("config.json", archive.read("config.json"))
    with pytest.raises(ModelFileError, match="no item named 'model.weights.h5'"):
        load(tmp_path / "half.keras")


# ---- no TensorFlow ------------------------------------------------------------------------------------


def test_loading_and_generating_never_imports_tensorflow_or_keras(blog_file: Path) -> None:
    script = f"""
import sys
from char_rnn.inference import load

model = load({str(blog_file)!r})
assert model.run([1, 2, 3], 2, 100, temperature=0.8, top_k=5, seed=1).shape == (2, 100)
model.probabilities([[1, 2, 3]])
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras"))
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
