"""The MLflow store: one location for the pipeline, the UI and the tests.

`sqlite:///<root>/mlruns/mlflow.db` with artifacts under `<root>/mlruns/artifacts`, as absolute
paths, so every stage finds the same store whatever its working directory. `MLFLOW_TRACKING_URI`
overrides it (a remote `mlflow server`, for instance). MLflow 3 refuses a bare `./mlruns` file store.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXPERIMENT = "char-rnn"


def tracking_uri(mlruns: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns.resolve() / 'mlflow.db'}"


def artifact_root(mlruns: Path) -> str:
    return (mlruns.resolve() / "artifacts").as_uri()


def connect(mlruns: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    mlruns.mkdir(parents=True, exist_ok=True)
    users_choice = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(mlruns))
    # MLflow also exports the URI to the environment, which would pin every later project in this
    # process to this store: keep the variable meaning only what the user set.
    if users_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = users_choice
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    # Over HTTP the server decides where artifacts go; a local store keeps them under mlruns/.
    location = None if tracking_uri(mlruns).startswith("http") else artifact_root(mlruns)
    return mlflow.create_experiment(EXPERIMENT, artifact_location=location)


@contextmanager
def resumed_run(mlruns: Path, run_id: str) -> Iterator[Any]:
    """Log into the train stage's run from a later stage (evaluate), so one run holds everything."""
    import mlflow

    connect(mlruns)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def save_run_link(path: Path, run_id: str, model_uri: str) -> None:
    path.write_text(json.dumps({"run_id": run_id, "model_uri": model_uri}, indent=1) + "\n", encoding="utf-8")


def load_run_link(path: Path) -> dict[str, str]:
    return json.loads(path.read_text(encoding="utf-8"))


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow rejects NaN in some stores and charts it badly in all: keep only finite values."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
