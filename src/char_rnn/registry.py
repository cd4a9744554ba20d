"""Model registry: every finished run becomes a version; aliases, not copies, mark the champion.

A version becomes `champion` when there is none yet or when it beats the champion on the chosen
metric; otherwise it becomes `challenger`. A run that failed or has no finite metric is refused
before anything is logged or registered, so a failed run never moves an alias.

What a version holds is the generator pyfunc (`char_rnn.serving`: the `.keras` file and the
vocabulary, and for the hybrid also the n-gram and hybrid.json), logged into the train run next to
the plain Keras model. The sha256 of every bundled file is tagged on the version (`model_sha256`,
`vocab_sha256`, ...) and checked before any of them is loaded again.
"""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from char_rnn.errors import PipelineError
from char_rnn.params import Metric

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistrationRefused(PipelineError):
    """The run is not fit to register; no version was created and no alias moved."""


class ModelIntegrityError(PipelineError):
    """A model file differs from the sha256 recorded for it, or none was recorded: it is not loaded."""


class ModelNotFound(PipelineError):
    """The registry has no version behind this URI."""


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    alias: str
    metric: str
    value: float
    previous_champion: str | None
    previous_value: float | None


def file_md5(path: Path) -> str:
    """DVC 3 records a file by the md5 of its bytes: this is the hash `dvc.lock` shows for it."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Refuse a file whose bytes are not the ones registered: checked before Keras reads a byte of it."""
    if not expected:
        raise ModelIntegrityError(f"{path.name}: no sha256 was recorded for it; register the model again")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{path.name}: sha256 {actual} does not match the registered {expected}; the file was changed"
            " after registration and is not loaded"
        )


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "none"


def is_better(metric: Metric, value: float, than: float) -> bool:
    return value > than if metric.higher_is_better else value < than


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register(
    run_id: str,
    files: dict[str, Path],
    example_prompt: str,
    model_name: str,
    metric: Metric,
    metrics: dict[str, Any],
    tags: dict[str, str],
) -> Registration:
    """Log the generator pyfunc of `files` into the run, register it and set its alias.

    `files` maps the bundle's names (`model`, `vocab`) to paths; call with MLflow pointed at the store.
    """
    import mlflow
    from mlflow import MlflowClient

    from char_rnn.serving import log_generator

    client = MlflowClient()
    status = client.get_run(run_id).info.status
    value = metrics.get(metric.value)
    if status != "FINISHED" or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegistrationRefused(f"run {run_id} is {status} with {metric.value}={value!r}; nothing registered")
    digests = {name: file_sha256(path) for name, path in files.items()}
    with mlflow.start_run(run_id=run_id):
        model_uri = log_generator(files, digests, example_prompt)
    champion = _champion(client, model_name)
    previous = float(champion.tags[metric.value]) if champion and metric.value in champion.tags else None
    digest_tags = {f"{name}_sha256": digest for name, digest in digests.items()}
    version = mlflow.register_model(
        model_uri, model_name, tags={**tags, **digest_tags, metric.value: repr(float(value))}
    )
    wins = champion is None or previous is None or is_better(metric, float(value), previous)
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(model_name, alias, version.version)
    return Registration(
        model_name=model_name,
        version=str(version.version),
        alias=alias,
        metric=metric.value,
        value=float(value),
        previous_champion=str(champion.version) if champion else None,
        previous_value=previous,
    )


def resolve_version(uri: str) -> Any:
    """`models:/name@alias` or `models:/name/version` -> that ModelVersion (tags included)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/(\d+))", uri)
    if match is None:
        raise ModelNotFound(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, number = match.groups()
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as exc:
        raise ModelNotFound(f"{uri}: not in the registry at {client.tracking_uri} ({exc.message})") from None
