"""The generator as an MLflow pyfunc: a table of prompts in, generated text out, servable by MLflow.

What a registered version holds: the `.keras` file and the vocabulary as pyfunc artifacts (for the
hybrid also the n-gram and hybrid.json with the mixture's weights, so that it samples from the mixture), their
sha256 written into the logged code (and, by the register stage, as version tags), a signature, an input
example and pinned requirements. The model is logged *as code* (MLflow 3 refuses to unpickle models
by default): the stored code is a two-line shim that imports `CharRNNGenerator` from the installed
package, so nothing but this module's reviewed code runs at load time, and serving needs the
project's environment (`mlflow models serve ... --env-manager local`).

Request columns: `prompt` (required), `length`, `temperature`, `top_k`, `seed` (optional; missing
or null means the defaults of `generate.Sampling`). Response columns: `text` (the continuation,
without the prompt) and `dropped` (prompt characters outside the vocabulary, which were ignored).
A request beyond the version's limits (params `registry.max_length`, `max_prompt`, `max_rows`, written
into the logged code) or with a bad value gets HTTP 400 and a one-line reason, before any generation.
The limits also carry `context` (`evaluate.context`, the units of a prompt read; see `char_rnn.batcher`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from char_rnn.batcher import MAX_ROWS, Batcher
from char_rnn.bundle import bundle_files
from char_rnn.generate import GenerationError, Generator, Sampling, load_generator
from char_rnn.heldout import WARMUP
from char_rnn.lineage import SERVING_PACKAGES, pip_requirements

SHIM = "from mlflow.models import set_model\nfrom char_rnn.serving import CharRNNGenerator\n\nset_model({model})\n"


class CharRNNGenerator(PythonModel):
    """Loads the bundled files only if they hash to the sha256 written into the logged code itself
    (`CharRNNGenerator({...}, {...})`); generates the requests that arrive together as one batch."""

    generator: Generator
    batcher: Batcher

    def __init__(self, digests: dict[str, str], limits: dict[str, int] | None = None) -> None:
        self.digests = digests
        self.limits = limits or {}  # registry.max_length, max_prompt, max_rows, and evaluate.context

    def load_context(self, context: Any) -> None:
        self.use(load_generator(bundle_files(context.artifacts, Path(".")), self.digests))

    def use(self, generator: Generator) -> None:
        """Serve this generator; requests that arrive together are generated as one batch."""
        self.generator = generator
        self.batcher = Batcher(generator, batch_rows(self.limits.get("max_rows")), self.limits.get("context", WARMUP))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        rows = []
        try:
            within(len(model_input), self.limits.get("max_rows"), "prompts in one request")
            for row in model_input.to_dict(orient="records"):
                prompt, sampling = prompt_of(row), sampling_of(row)
                within(len(prompt), self.limits.get("max_prompt"), "prompt characters")
                within(sampling.length, self.limits.get("max_length"), "length")
                rows.append(self.batcher.prepare(prompt, sampling))  # reads the end the batcher reads
        except GenerationError as exc:  # the caller's mistake: HTTP 400, not 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        results = self.batcher.generate(rows)  # with the rows of the requests that arrived meanwhile
        return pd.DataFrame([[r.texts[0], r.dropped] for r in results], columns=["text", "dropped"])


def batch_rows(request_rows: int | None) -> int:
    """Rows generated at once: room for four requests at the row limit, so that one request at the limits
    never keeps the others waiting for a place in the batch (at least `batcher.MAX_ROWS`)."""
    return max(MAX_ROWS, 4 * (request_rows or 0))


def within(value: int, limit: int | None, what: str) -> None:
    if limit is not None and value > limit:
        raise GenerationError(f"{what}: at most {limit} (the registered version's limit), got {value}")


def prompt_of(row: dict[str, Any]) -> str:
    """The prompt as sent: a number or a list is refused, not turned into its digits, on every model."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise GenerationError(f"prompt must be text, got {prompt!r}")
    return prompt


def sampling_of(row: dict[str, Any]) -> Sampling:
    """A request row's optional columns; absent, None or NaN (pandas' missing) take the default.

    The signature types them `Any`: MLflow's `long` refuses a request whose rows do not all give the
    column (pandas turns the gaps into NaN) and its `double` refuses JSON integers; values are checked here.
    """
    given: dict[str, Any] = {}
    for field in fields(Sampling):
        raw = row.get(field.name)
        try:
            value = float(raw) if raw is not None else math.nan
        except (TypeError, ValueError):
            raise GenerationError(f"{field.name} must be a number, got {raw!r}") from None
        if math.isnan(value):
            continue
        if field.name != "temperature" and not value.is_integer():
            raise GenerationError(f"{field.name} must be a whole number, got {value}")
        given[field.name] = value if field.name == "temperature" else int(value)
    return Sampling(**given)


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", "prompt"),
                *(ColSpec(AnyType(), field.name, required=False) for field in fields(Sampling)),
            ]
        ),
        outputs=Schema([ColSpec("string", "text"), ColSpec("string", "dropped")]),
    )


def log_generator(
    files: dict[str, Path], digests: dict[str, str], example_prompt: str, limits: dict[str, int] | None = None
) -> Any:
    """Log the pyfunc into the active run as `generator`; returns its ModelInfo (URI, model id).
    `limits` bound what one request may ask for (see `CharRNNGenerator`).

    `step=-1`: MLflow copies the run's metrics of that step onto the logged model, and no metric is
    logged at -1, so the model carries only the figures the caller attaches to it.
    """
    example = pd.DataFrame(
        {"prompt": [example_prompt], "length": [20], "temperature": [0.0], "top_k": [0], "seed": [0]}
    )
    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "char_rnn_generator.py"
        model = f"CharRNNGenerator({dict(sorted(digests.items()))!r}, {dict(sorted((limits or {}).items()))!r})"
        shim.write_text(SHIM.format(model=model), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name="generator",
            python_model=str(shim),
            artifacts={name: str(path) for name, path in files.items()},
            signature=signature(),
            input_example=example,
            pip_requirements=pip_requirements(*SERVING_PACKAGES),
            step=-1,
        )
