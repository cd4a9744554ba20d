"""The Keras model built from params: the blog's SimpleRNN and its LSTM and GRU siblings.

Inputs are integer ids of any length (`shape=(None,)`), so the same model trains on windows and
scores or generates on text of any length. The blog's one-hot encoding happens inside the model
(`OneHot`), which is mathematically the blog's `to_categorical` input without the arrays.
"""

from __future__ import annotations

from typing import Any

import keras

from char_rnn.params import Cell, InputEncoding, ModelParams, Schedule, TrainParams

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


def build_model(params: ModelParams, vocab_size: int) -> keras.Model:
    """ids (batch, time) -> next-character probabilities (batch, time, vocab) at every step."""
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
    return keras.Model(ids, probs, name=f"char_{params.cell.value}")


def compile_model(model: keras.Model, params: TrainParams, steps_per_epoch: int) -> None:
    """Sparse targets with sparse cross-entropy: the blog's categorical cross-entropy without one-hot targets."""
    rate: float | keras.optimizers.schedules.LearningRateSchedule = params.learning_rate
    if params.lr_schedule is Schedule.cosine:
        rate = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=params.epochs * steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.Adam(rate, clipnorm=params.clipnorm or None),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def load_model(path: str) -> keras.Model:
    """Only `.keras` files, and only in safe mode: no arbitrary code is deserialised."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"{path}: only .keras model files are loaded")
    return keras.saving.load_model(path, safe_mode=True)
