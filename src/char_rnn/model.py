"""The Keras model built from params: the blog's SimpleRNN and its LSTM and GRU siblings.

Inputs are integer ids of any length (`shape=(None,)`), so the same model trains on windows and
scores or generates on text of any length. The blog's one-hot encoding happens inside the model
(`OneHot`), which is mathematically the blog's `to_categorical` input without the arrays.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import random
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from char_rnn.layout import write_atomically
from char_rnn.params import Cell, InputEncoding, ModelParams, Schedule, TrainParams

# Batches per call into TensorFlow: for a model as small as the blog's, a Python round trip per step
# costs a large share of training (benchmarks/RESULTS.md). Same batches in the same order.
STEPS_PER_EXECUTION = 32
LOSS = keras.losses.SparseCategoricalCrossentropy
ACCURACY = functools.partial(keras.metrics.SparseCategoricalAccuracy, name="accuracy")
CELLS = {Cell.simple_rnn: keras.layers.SimpleRNN, Cell.lstm: keras.layers.LSTM, Cell.gru: keras.layers.GRU}


@keras.saving.register_keras_serializable(package="char_rnn")
class OneHot(keras.layers.Layer):
    """Ids to one-hot vectors; a registered layer, so `.keras` files load in safe mode (a Lambda would not)."""

    def __init__(self, depth: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids: Any) -> Any:
        return keras.ops.one_hot(ids, self.depth)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape, self.depth)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "depth": self.depth}


def build_model(params: ModelParams, vocab_size: int, name: str | None = None, seed: int | None = None) -> keras.Model:
    """ids (batch, time) -> next-character probabilities (batch, time, vocab) at every step (one member).

    With `seed`, the layers' initial weights and dropout seeds depend on it alone (see `layer_seeds`).
    """
    with layer_seeds(seed) if seed is not None else contextlib.nullcontext():
        return _build(params, vocab_size, name)


@contextlib.contextmanager
def layer_seeds(seed: int) -> Iterator[None]:
    """Keras draws each layer's initializer and dropout seed from Python's global `random`, which any
    other thread in the process (a library's background thread, say) may draw from at the same
    moment: the initial weights then change from run to run. Here they come from a private
    generator seeded like `random.seed(seed)`, so they are the draws a quiet process makes after
    `keras.utils.set_random_seed(seed)`.
    """
    from keras.src.random import seed_generator

    shared, seed_generator.python_random = seed_generator.python_random, random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def _build(params: ModelParams, vocab_size: int, name: str | None) -> keras.Model:
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    if params.input is InputEncoding.one_hot:
        x = OneHot(vocab_size, name="one_hot")(ids)
    else:
        x = keras.layers.Embedding(vocab_size, params.embedding_dim, name="embedding")(ids)
    for i in range(params.layers):
        x = CELLS[params.cell](
            params.units,
            return_sequences=True,
            recurrent_dropout=params.recurrent_dropout,
            name=f"{params.cell.value}_{i + 1}",
        )(x)
        if params.dropout:
            x = keras.layers.Dropout(params.dropout, name=f"dropout_{i + 1}")(x)
    # Dense on a 3-D tensor applies to every time step: the blog's TimeDistributed(Dense) in one layer.
    probs = keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(x)
    return keras.Model(ids, probs, name=name or f"char_{params.cell.value}")


def average(members: list[keras.Model]) -> keras.Model:
    """Several trained RNNs as one model whose output is the mean of their probabilities.

    One `.keras` file holds them all (each member a nested model), so scoring, generation and the
    registry handle an ensemble exactly like a single RNN.
    """
    if len(members) == 1:
        return members[0]
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    probs = keras.layers.Average(name="mean_probs")([member(ids) for member in members])
    # Not compiled: it is never trained as a whole, and scoring runs on the NumPy runtime. (An optimizer
    # compiled here and never built was saved without its variables, so every load warned of a mismatch.)
    return keras.Model(ids, probs, name=f"ensemble_of_{len(members)}")


def compile_model(model: keras.Model, params: TrainParams, steps_per_epoch: int) -> None:
    """Sparse targets with sparse cross-entropy: the blog's categorical cross-entropy without one-hot targets."""
    rate: float | keras.optimizers.schedules.LearningRateSchedule = params.learning_rate
    if params.lr_schedule is Schedule.cosine:
        rate = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=params.epochs * steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.Adam(rate, clipnorm=params.clipnorm or None, name="adam"),
        loss=LOSS(),
        metrics=[ACCURACY()],
        steps_per_execution=STEPS_PER_EXECUTION,
    )


def members(model: keras.Model) -> list[keras.Model]:
    """The RNNs an `average`d model holds (the model itself when it is a single RNN)."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model)] or [model]


def save_model(model: keras.Model, path: Path) -> None:
    """Write the model whole, and as the same bytes whenever the weights are the same.

    Keras stamps a `.keras` file with the time and with Python object ids, so two saves of one model
    differ; here they do not, so DVC's and the registry's hashes follow the weights alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.keras")
    try:
        model.save(partial)
        write_atomically(path, canonical_keras(partial.read_bytes()))
    finally:
        partial.unlink(missing_ok=True)


def canonical_keras(data: bytes) -> bytes:
    """The archive with fixed entry times, no save date, and object ids numbered in order of appearance."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for entry in source.infolist():
            content = source.read(entry.filename)
            if entry.filename == "config.json":
                content = _renumber_shared_objects(content.decode("utf-8")).encode("utf-8")
            elif entry.filename == "metadata.json":
                content = json.dumps({**json.loads(content), "date_saved": UNDATED}).encode("utf-8")
            fixed = zipfile.ZipInfo(entry.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = entry.compress_type
            target.writestr(fixed, content)
    return out.getvalue()


UNDATED = "1980-01-01@00:00:00"


def _renumber_shared_objects(config: str) -> str:
    numbers: dict[str, int] = {}
    return re.sub(
        r'"shared_object_id": (\d+)',
        lambda match: f'"shared_object_id": {numbers.setdefault(match.group(1), len(numbers) + 1)}',
        config,
    )


def load_model(path: str) -> keras.Model:
    """Only `.keras` files, and only in safe mode: no arbitrary code is deserialised.

    For scoring and dynamic evaluation (which brings its own optimizer), never to train on: the saved
    optimizer and loss are not restored (`compile=False`), so nothing is built or matched for them.
    """
    if not str(path).endswith(".keras"):
        raise ValueError(f"{path}: only .keras model files are loaded")
    return keras.saving.load_model(path, safe_mode=True, compile=False)
