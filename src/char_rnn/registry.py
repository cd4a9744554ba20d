"""Model registry: every finished run becomes a version; aliases, not copies, mark the champion.

A version becomes `champion` when there is none yet or when it beats the champion on the chosen
metric; otherwise it becomes `challenger`. A run that failed or has no finite metric is refused
before anything is logged or registered, so a failed run never moves an alias.

What a version holds is the generator pyfunc (`char_rnn.serving`: the `.keras` file and the
vocabulary, and for the hybrid also the n-gram and hybrid.json), which the register stage logs into
the pipeline's run before it calls `register`. The sha256 of every bundled file is tagged on the
version (`model_sha256`, `vocab_sha256`, ...) and checked before any of them is loaded again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from char_rnn.errors import PipelineError
from char_rnn.params import Metric

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistrationRefused(PipelineError):
    """The run is not fit to register; no version was created and no alias moved."""


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
    already_registered: bool = False  # these exact files were a version already: it is reported, not added


def is_better(metric: Metric, value: float, than: float) -> bool:
    return value > than if metric.higher_is_better else value < than


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def check_registrable(run_id: str, metric: Metric, metrics: dict[str, Any]) -> float:
    """The run's metric, or `RegistrationRefused` when the run did not finish or the metric is not finite.

    Called before anything is logged, so a refused run leaves no model behind.
    """
    from mlflow import MlflowClient

    status = MlflowClient().get_run(run_id).info.status
    value = metrics.get(metric.value)
    if status != "FINISHED" or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegistrationRefused(f"run {run_id} is {status} with {metric.value}={value!r}; nothing registered")
    return float(value)


def registered_version(model_name: str, digest_tags: dict[str, str], metric: Metric) -> Registration | None:
    """The version that holds exactly these files (the same `<file>_sha256` tags, no more), if any.

    Going back to params that were already run restores the same bytes (DVC's cache; the model is
    saved byte for byte the same from the same weights): they are that version, not a new one.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    query = " and ".join([f"name = '{model_name}'", *(f"tags.{k} = '{v}'" for k, v in sorted(digest_tags.items()))])
    same = [
        version
        for version in client.search_model_versions(query)
        if {k for k in version.tags if k.endswith("_sha256")} == set(digest_tags)
    ]
    if not same:
        return None
    version = min(same, key=lambda v: int(v.version))
    aliases = client.get_model_version(model_name, version.version).aliases
    return Registration(
        model_name=model_name,
        version=str(version.version),
        alias=", ".join(sorted(aliases)) or "none",
        metric=metric.value,
        value=float(version.tags.get(metric.value, "nan")),
        previous_champion=None,
        previous_value=None,
        already_registered=True,
    )


def register(model_uri: str, model_name: str, metric: Metric, value: float, tags: dict[str, str]) -> Registration:
    """Register the logged model as a new version and set its alias; call with MLflow pointed at the store."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    champion = _champion(client, model_name)
    previous = float(champion.tags[metric.value]) if champion and metric.value in champion.tags else None
    version = mlflow.register_model(model_uri, model_name, tags={**tags, metric.value: repr(value)})
    wins = champion is None or previous is None or is_better(metric, value, previous)
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(model_name, alias, version.version)
    return Registration(
        model_name=model_name,
        version=str(version.version),
        alias=alias,
        metric=metric.value,
        value=value,
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
