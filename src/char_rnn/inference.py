"""This project's `.keras` models run in NumPy: generation and scoring without TensorFlow or Keras.

`import tensorflow` alone costs ~10 s, so every command that loads a model through Keras starts in
~15 s. The models are small stacks of standard layers, so their forward pass is a few matrix
products per character: here the file is read with the standard library, NumPy and h5py only
(`config.json` for the architecture, `model.weights.h5` for the weights; no pickle, no Keras
deserialisation) and run with the same float32 arithmetic as Keras 3's cells. The tests compare
every cell type, both encodings and ensembles with Keras to 1e-5.

Only what `model.build_model` and `model.average` write is accepted: ids -> OneHot or Embedding ->
SimpleRNN, LSTM or GRU layers (each optionally followed by Dropout, the identity at inference) ->
Dense softmax, or the mean of several such members. Anything else is refused with a message
naming what is unsupported, never run approximately.

The members of an ensemble have one shape, so their weights are stacked on a leading axis and every
operation runs for all of them at once: an ensemble costs about one Python round trip per layer
and character, not one per member. The first layer's input projection is precomputed for every id
(a row lookup: one-hot times a kernel is that kernel's row, and an embedding's row times the
kernel is the same row for the same id every time).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from threadpoolctl import OpenBLASController, ThreadpoolController

from char_rnn.errors import PipelineError

State = tuple[np.ndarray, ...]  # one recurrent layer's state for every member: (h,) or, for LSTM, (h, c)

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}  # blocks of `units` columns in each kernel
_RECURRENT = {"return_sequences": True, "return_state": False, "go_backwards": False, "stateful": False}
# The config values whose arithmetic is implemented here: any other value is refused, not approximated.
REQUIRED: dict[str, dict[str, Any]] = {
    "SimpleRNN": {**_RECURRENT, "activation": "tanh", "use_bias": True},
    "LSTM": {**_RECURRENT, "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True},
    "GRU": {
        **_RECURRENT,
        "activation": "tanh",
        "recurrent_activation": "sigmoid",
        "use_bias": True,
        "reset_after": True,
    },
    "Embedding": {"mask_zero": False, "quantization_config": None},
    "Dense": {"activation": "softmax", "use_bias": True, "quantization_config": None},
    "OneHot": {},
    "Dropout": {},
}
ONE_HOT = "char_rnn>OneHot"  # the registered name of `model.OneHot`; another package's OneHot is not ours


class ModelFileError(PipelineError):
    """The file is not a model this runtime can run: unreadable, foreign, or a shape this project does not build."""


class OneBlasThread:
    """`with ONE_BLAS_THREAD:` runs BLAS on one thread, then gives back the count there was before.

    Why one: a step's products are small, and on a busy two-core machine more threads only fight each
    other (generation ran 35x slower with the default). Why only while the runtime computes: the count
    is the whole process's, and the rest of a stage, a test or a notebook may want every core.

    OpenBLAS has one count for all threads, so entries are counted across threads, nested ones
    included: the first sets one thread, the last gives the old count back. A loop holds the scope
    around its steps, which then only count (~1 us); a step outside any scope sets and restores the
    count itself (~12 us). threadpoolctl lets only the thread that last changed the count change it
    again, so each change hands that control back at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[int] = []
        self._controller: ThreadpoolController | None = None  # made at first use: it scans the loaded libraries

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                libraries = self._libraries()
                self._saved = [library.get_num_threads() for library in libraries]
                self._set(libraries, [1] * len(libraries))
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._set(self._libraries(), self._saved)

    def _libraries(self) -> list[Any]:
        if self._controller is None:
            self._controller = ThreadpoolController().select(user_api="blas")
        return self._controller.lib_controllers

    @staticmethod
    def _set(libraries: list[Any], counts: list[int]) -> None:
        OpenBLASController.clear_controlling_thread(force=True)  # this thread may set it now, whoever did last
        for library, count in zip(libraries, counts):
            library.set_num_threads(count)
        OpenBLASController.clear_controlling_thread()


ONE_BLAS_THREAD = OneBlasThread()


@dataclass(frozen=True)
class Cell:
    """One recurrent layer's recurrence for every member, weights stacked on a leading member axis."""

    kind: str  # "SimpleRNN", "LSTM" or "GRU"
    recurrent_kernel: np.ndarray  # (members, units, gates * units)
    recurrent_bias: np.ndarray | None  # GRU only (reset_after): (members, 1, 3 * units)

    @property
    def units(self) -> int:
        return self.recurrent_kernel.shape[1]

    def zeros(self, members: int, batch: int) -> State:
        """Keras starts every sequence from zeros."""
        zero = np.zeros((members, batch, self.units), np.float32)
        return (zero, zero) if self.kind == "LSTM" else (zero,)

    def advance(self, x: np.ndarray, state: State) -> State:
        """x: the input's projection (members, batch, gates * units), its bias included -> the next state."""
        return ADVANCE[self.kind](self, x, state)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras 3's plain sigmoid, written with tanh: equal in exact arithmetic, and no overflow warning from exp."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


def _simple_rnn(cell: Cell, x: np.ndarray, state: State) -> State:
    return (np.tanh(x + state[0] @ cell.recurrent_kernel),)


def _lstm(cell: Cell, x: np.ndarray, state: State) -> State:
    """Keras' gate order: input, forget, candidate, output."""
    h, c = state
    u = cell.units
    z = x + h @ cell.recurrent_kernel
    c = _sigmoid(z[..., u : 2 * u]) * c + _sigmoid(z[..., :u]) * np.tanh(z[..., 2 * u : 3 * u])
    return _sigmoid(z[..., 3 * u :]) * np.tanh(c), c


def _gru(cell: Cell, x: np.ndarray, state: State) -> State:
    """Keras' gate order (update, reset, candidate) with `reset_after`: the reset gate scales the
    candidate's recurrent projection, its own bias row included."""
    (h,) = state
    u = cell.units
    inner = h @ cell.recurrent_kernel + cell.recurrent_bias
    gates = _sigmoid(x[..., : 2 * u] + inner[..., : 2 * u])
    update = gates[..., :u]
    candidate = np.tanh(x[..., 2 * u :] + gates[..., u:] * inner[..., 2 * u :])
    return (update * h + (1 - update) * candidate,)


ADVANCE = {"SimpleRNN": _simple_rnn, "LSTM": _lstm, "GRU": _gru}


class NumpyModel:
    """A loaded model: next-character probabilities one step at a time, or over whole sequences.

    `table`: the first layer's input projection of every id, bias included (members, vocab, gates * units);
    `projections`: (kernel, bias) feeding each later layer; `head`: the Dense layer's (kernel, bias).
    """

    def __init__(
        self,
        table: np.ndarray,
        cells: list[Cell],
        projections: list[tuple[np.ndarray, np.ndarray]],
        head: tuple[np.ndarray, np.ndarray],
    ) -> None:
        self._table = table
        self._cells = cells
        self._projections = projections
        self._head = head
        self.members = table.shape[0]
        self.vocab_size = table.shape[1]

    def initial_state(self, batch: int) -> list[State]:
        return [cell.zeros(self.members, batch) for cell in self._cells]

    def step(self, ids: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
        """ids (batch,) and the states -> probabilities (batch, vocab) float32, new states.

        The ids are not checked here, in the per-character loop: they must be in [0, vocab_size).
        """
        with ONE_BLAS_THREAD:
            state = self._cells[0].advance(self._table[:, ids], states[0])
            new_states = [state]
            for cell, (kernel, bias), old in zip(self._cells[1:], self._projections, states[1:]):
                state = cell.advance(state[0] @ kernel + bias, old)
                new_states.append(state)
            return self._probabilities(state[0]), new_states

    def probabilities(self, ids: np.ndarray) -> np.ndarray:
        """ids (batch, time) -> probabilities (batch, time, vocab) float32 at every position, as Keras'
        `predict_on_batch`: each layer's input projection computed for the whole sequence at once."""
        ids = self._checked(ids, 2)
        batch, time = ids.shape
        with ONE_BLAS_THREAD:
            h = self._run(self._cells[0], self._table[:, ids.reshape(-1)], batch)
            for cell, (kernel, bias) in zip(self._cells[1:], self._projections):
                h = self._run(cell, h @ kernel + bias, batch)
            return self._probabilities(h).reshape(batch, time, self.vocab_size)

    predict_on_batch = probabilities  # Keras' name, which held-out scoring (`heldout.rnn_char_probabilities`) calls

    def run(
        self,
        prompt_ids: Sequence[int],
        batch: int,
        length: int,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> np.ndarray:
        """(batch, length) ids continuing `prompt_ids`, as `generate.StepModel.run`: the prompt fed one
        id per step, then each id chosen by `pick`; the same seed gives the same ids (None: fresh)."""
        prompt = self._checked(np.asarray(prompt_ids), 1)
        states = self.initial_state(batch)
        rng = np.random.default_rng(seed)
        out = np.empty((length, batch), np.int32)
        with ONE_BLAS_THREAD:  # once for the whole loop: its steps' own entries then only count
            for i in prompt:
                probs, states = self.step(np.full(batch, i), states)
            for t in range(length):
                out[t] = pick(probs, temperature, top_k, rng)
                probs, states = self.step(out[t], states)
        return out.T

    def _run(self, cell: Cell, x: np.ndarray, batch: int) -> np.ndarray:
        """x: projections (members, batch * time, gates * units) -> outputs (members, batch * time, units)."""
        x = x.reshape(self.members, batch, -1, x.shape[-1])
        state = cell.zeros(self.members, batch)
        outputs = []
        for t in range(x.shape[2]):
            state = cell.advance(x[:, :, t], state)
            outputs.append(state[0])
        return np.stack(outputs, axis=2).reshape(self.members, -1, cell.units)

    def _probabilities(self, h: np.ndarray) -> np.ndarray:
        """Dense + softmax per member, then their mean as Keras' Average takes it (the sum divided by the
        count). In place, and a single member's are its own: at the blog's size this is half a step."""
        kernel, bias = self._head
        probs = h @ kernel + bias
        probs -= probs.max(axis=-1, keepdims=True)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=-1, keepdims=True)
        return probs[0] if self.members == 1 else probs.sum(axis=0) / self.members

    def _checked(self, ids: np.ndarray, ndim: int) -> np.ndarray:
        """Ids outside the vocabulary would index the wrong row (negative ones silently): refused."""
        ids = np.asarray(ids)
        if ids.ndim != ndim or not np.issubdtype(ids.dtype, np.integer) or 0 in ids.shape:
            raise ValueError(f"expected a non-empty {ndim}-d array of integer ids, got {ids.dtype} {ids.shape}")
        if not 0 <= ids.min() <= ids.max() < self.vocab_size:
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got {ids.min()} .. {ids.max()}")
        return ids


def pick(
    probs: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator, allowed: np.ndarray | None = None
) -> np.ndarray:
    """One id per row: greedy at temperature 0, else a draw among the top k, only among `allowed` ids
    when given (a mask of the same shape; open units allow what continues a spelling).

    One uniform per row, against the float64 cumulative sum that `numpy.random.Generator.choice`
    compares it with, without a Python call per row.
    """
    if temperature == 0:
        return (probs if allowed is None else np.where(allowed, probs, -1.0)).argmax(axis=-1).astype(np.int32)
    logits = np.log(np.maximum(probs, 1e-30))
    if allowed is not None:
        logits = np.where(allowed, logits, -np.inf)
    scaled = (logits - logits.max(axis=-1, keepdims=True)) / temperature
    if 0 < top_k < probs.shape[-1]:
        kth = np.partition(scaled, -top_k, axis=-1)[:, -top_k, None]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    weights = np.exp(scaled)
    weights /= weights.sum(axis=-1, keepdims=True)
    cumulative = np.cumsum(weights.astype(np.float64), axis=-1)
    cumulative /= cumulative[:, -1:]
    return (cumulative <= rng.random(len(probs))[:, None]).sum(axis=-1).astype(np.int32)


# ---- reading a .keras file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One member's weights as Keras stores them."""

    embedding: np.ndarray | None  # (vocab, dim), or None for one-hot input
    recurrent: list[tuple[str, list[np.ndarray]]]  # (cell kind, [kernel, recurrent kernel, bias]) per layer
    head: tuple[np.ndarray, np.ndarray]


def load(path: str | Path) -> NumpyModel:
    """The model in a `.keras` file, refused with `ModelFileError` unless it is this project's shape.
    Its computations hold BLAS to one thread while they run (`ONE_BLAS_THREAD`); loading changes nothing."""
    config, weights = _read_archive(Path(path))
    try:
        with h5py.File(io.BytesIO(weights), "r") as store:
            members = [_member(member, layers) for member, layers in _members(config, store)]
        return _stack(members)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (KeyError, TypeError, IndexError, ValueError, OSError) as exc:  # a config or weights file of another shape
        raise ModelFileError(
            f"{path}: not a model file this runtime understands ({type(exc).__name__}: {exc})"
        ) from None


def _read_archive(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")), archive.read("model.weights.h5")
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable .keras file ({exc})") from None


def _members(config: dict[str, Any], store: h5py.File) -> list[tuple[dict[str, Any], h5py.Group]]:
    """(member config, its layers' weights group) for the model itself, or for each member of an `average`."""
    if config["class_name"] != "Functional":
        raise ModelFileError(f"a {config['class_name']} model; this runtime runs build_model's functional models")
    layers = config["config"]["layers"]
    if not any(layer["class_name"] == "Functional" for layer in layers):
        return [(config, store["layers"])]
    ids, *nested, average = layers
    kinds = [layer["class_name"] for layer in layers]
    if kinds != ["InputLayer", *["Functional"] * len(nested), "Average"]:
        raise ModelFileError(f"an ensemble is ids -> member models -> Average, not {' -> '.join(kinds)}")
    names = [member["name"] for member in nested]
    if any(_sources(member) != [ids["name"]] for member in nested) or _sources(average) != names:
        raise ModelFileError("an ensemble's members must each read the ids, and its Average all of them")
    _expect_output(config["config"])
    groups = _groups(store["layers"])
    return [(member, _group(groups, member["name"])["layers"]) for member in nested]


def _expect_output(model: dict[str, Any]) -> None:
    """Keras writes one output as [name, node, tensor] and several as a list of those."""
    outputs = model["output_layers"]
    if outputs != [model["layers"][-1]["name"], 0, 0]:
        raise ModelFileError(f"the output must be the last layer alone, not {outputs}")


def _sources(layer: dict[str, Any]) -> list[str]:
    """The layers whose outputs this layer is called on, from its inbound nodes."""
    args = [arg for node in layer["inbound_nodes"] for arg in node["args"]]
    tensors = [tensor for arg in args for tensor in (arg if isinstance(arg, list) else [arg])]
    return [tensor["config"]["keras_history"][0] for tensor in tensors]


def _groups(layers: h5py.Group) -> dict[str, h5py.Group]:
    """Weight groups by layer name: Keras names each group after the layer's class and records the layer's name."""
    return {group["vars"].attrs.get("name"): group for group in layers.values() if "vars" in group}


def _group(groups: dict[str, h5py.Group], name: str) -> h5py.Group:
    if name not in groups:
        raise ModelFileError(f"model.weights.h5 has no weights for layer {name}")
    return groups[name]


def _member(config: dict[str, Any], weights: h5py.Group) -> _Member:
    """One member: ids -> encoder -> recurrent layers (Dropout between them) -> Dense softmax."""
    layers = config["config"]["layers"]
    _expect_stack(config["config"])
    for layer in layers[1:]:
        _expect_supported(layer)
    _, encoder, *body, head = layers
    groups = _groups(weights)
    vocab = encoder["config"]["depth" if encoder["class_name"] == "OneHot" else "input_dim"]
    embedding = None
    if encoder["class_name"] == "Embedding":
        shape = (vocab, encoder["config"]["output_dim"])
        (embedding,) = _variables(_group(groups, encoder["name"]), encoder, [shape])
    width = vocab if embedding is None else embedding.shape[1]
    recurrent = []
    for layer in body:
        if layer["class_name"] in GATES:
            recurrent.append((layer["class_name"], _recurrent_variables(groups, layer, width)))
            width = layer["config"]["units"]
    if head["config"]["units"] != vocab:
        raise ModelFileError(f"the output layer {head['name']} has {head['config']['units']} units for {vocab} ids")
    kernel, bias = _variables(_group(groups, head["name"]), head, [(width, vocab), (vocab,)])
    return _Member(embedding, recurrent, (kernel, bias))


def _expect_stack(model: dict[str, Any]) -> None:
    """InputLayer -> OneHot or Embedding -> SimpleRNN, LSTM or GRU layers (Dropout between them) -> Dense,
    each layer reading the one before it."""
    layers = model["layers"]
    kinds = [layer["class_name"] for layer in layers]
    if not (
        len(kinds) >= 4
        and kinds[0] == "InputLayer"
        and kinds[1] in ("OneHot", "Embedding")
        and all(kind in GATES or kind == "Dropout" for kind in kinds[2:-1])
        and any(kind in GATES for kind in kinds[2:-1])
        and kinds[-1] == "Dense"
    ):
        raise ModelFileError(
            f"unsupported layers {' -> '.join(kinds)}; this runtime runs InputLayer -> OneHot or Embedding"
            " -> SimpleRNN, LSTM or GRU (each optionally followed by Dropout) -> Dense"
        )
    for before, layer in itertools.pairwise(layers):
        if _sources(layer) != [before["name"]]:
            raise ModelFileError(f"layer {layer['name']} reads {_sources(layer)}, not only {before['name']}")
    _expect_output(model)


def _expect_supported(layer: dict[str, Any]) -> None:
    """A layer class and config values whose arithmetic this module implements, in float32."""
    kind, config = layer["class_name"], layer["config"]
    if kind not in REQUIRED:
        raise ModelFileError(f"layer {layer['name']}: {kind} is not supported (only {', '.join(REQUIRED)})")
    if kind == "OneHot" and layer.get("registered_name") != ONE_HOT:
        raise ModelFileError(f"layer {layer['name']}: {layer.get('registered_name')} is not this project's {ONE_HOT}")
    wrong = [
        f"{key}={config.get(key)!r} (needs {value!r})"
        for key, value in REQUIRED[kind].items()
        if config.get(key) != value
    ]
    policy = config.get("dtype")
    dtype = policy["config"]["name"] if isinstance(policy, dict) else policy
    if dtype not in (None, "float32"):
        wrong.append(f"dtype policy {dtype!r} (needs 'float32')")
    if wrong:
        raise ModelFileError(f"layer {layer['name']} ({kind}): unsupported {', '.join(wrong)}")


def _recurrent_variables(groups: dict[str, h5py.Group], layer: dict[str, Any], inputs: int) -> list[np.ndarray]:
    """kernel, recurrent kernel and bias, stored under the layer's cell; GRU's bias has an input and a recurrent row."""
    units = layer["config"]["units"]
    columns = GATES[layer["class_name"]] * units
    bias = (2, columns) if layer["class_name"] == "GRU" else (columns,)
    group = _group(groups, layer["name"])
    if "cell" not in group:
        raise ModelFileError(f"layer {layer['name']} has no cell weights in model.weights.h5")
    return _variables(group["cell"], layer, [(inputs, columns), (units, columns), bias])


def _variables(group: h5py.Group, layer: dict[str, Any], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The layer's variables vars/0, vars/1, ... in Keras' order, each checked for its shape and float32."""
    stored = group["vars"]
    if sorted(stored) != sorted(str(i) for i in range(len(shapes))):
        raise ModelFileError(
            f"layer {layer['name']}: expected {len(shapes)} weight arrays, model.weights.h5 has {len(stored)}"
        )
    arrays = [stored[str(i)][()] for i in range(len(shapes))]
    for i, (array, shape) in enumerate(zip(arrays, shapes)):
        if array.shape != shape or array.dtype != np.float32:
            raise ModelFileError(
                f"layer {layer['name']}: weight {i} is {array.dtype} {array.shape}, expected float32 {shape}"
            )
    return arrays


def _stack(members: list[_Member]) -> NumpyModel:
    """The members' weights stacked on a leading axis: every operation then runs for all of them at once."""
    shapes = {_shape(member) for member in members}
    if len(shapes) > 1:
        raise ModelFileError(f"the ensemble's members differ in shape: {' vs '.join(map(str, shapes))}")
    embedding = None if members[0].embedding is None else np.stack([member.embedding for member in members])
    cells, projections = [], []
    for index, (kind, _) in enumerate(members[0].recurrent):
        kernel, recurrent_kernel, bias = (
            np.stack(arrays) for arrays in zip(*(member.recurrent[index][1] for member in members))
        )
        input_bias, recurrent_bias = (bias[:, :1], bias[:, 1:]) if kind == "GRU" else (bias[:, None], None)
        cells.append(Cell(kind, recurrent_kernel, recurrent_bias))
        if index == 0:  # one-hot times the kernel is the kernel's row: the table is the kernel itself
            table = (kernel if embedding is None else embedding @ kernel) + input_bias
        else:
            projections.append((kernel, input_bias))
    head = (np.stack([member.head[0] for member in members]), np.stack([member.head[1] for member in members])[:, None])
    return NumpyModel(table, cells, projections, head)


def _shape(member: _Member) -> tuple[Any, ...]:
    return (
        None if member.embedding is None else member.embedding.shape,
        tuple((kind, tuple(array.shape for array in arrays)) for kind, arrays in member.recurrent),
        member.head[0].shape,
    )
