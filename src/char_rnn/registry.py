"""Model registry: every finished run becomes a version; aliases, not copies, mark the champion.

A version becomes `champion` when there is none yet or when it beats the champion on the chosen
metric; otherwise it becomes `challenger`. A run that failed or has no finite metric is refused
before anything is registered, so a failed run never moves an alias.
"""

from __future__ import annotations

import hashlib
import math
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
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(root: Path) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
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
    run_id: str, model_uri: str, model_name: str, metric: Metric, metrics: dict[str, Any], tags: dict[str, str]
) -> Registration:
    """Register the run's model and set its alias; call with MLflow already pointed at the store."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    status = client.get_run(run_id).info.status
    value = metrics.get(metric.value)
    if status != "FINISHED" or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegistrationRefused(f"run {run_id} is {status} with {metric.value}={value!r}; nothing registered")
    champion = _champion(client, model_name)
    previous = float(champion.tags[metric.value]) if champion and metric.value in champion.tags else None
    version = mlflow.register_model(model_uri, model_name, tags={**tags, metric.value: repr(float(value))})
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
