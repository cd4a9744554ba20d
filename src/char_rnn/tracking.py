"""The MLflow store and the pipeline's run: one location for the pipeline, the UI and the tests.

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
CONTINUES = "char_rnn.continues"  # tag of a run that continues a pulled run of another store


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
def new_run(mlruns: Path, tags: dict[str, str]) -> Iterator[Any]:
    """The pipeline's run, opened by the train stage; FAILED if the block raises, FINISHED otherwise."""
    import mlflow

    experiment_id = connect(mlruns)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        yield run


@contextmanager
def resumed_run(mlruns: Path, run_id: str) -> Iterator[Any]:
    """Log into the train stage's run from a later stage, so one run holds everything."""
    import mlflow

    connect(mlruns)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def logged_model_uri(run_id: str, name: str) -> str | None:
    """The newest model logged as `name` in the run, or None."""
    import mlflow

    experiment_id = mlflow.get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    return found[0].model_uri if found else None


def run_link(run_id: str) -> str:
    """`models/run.json`: which run the later stages log into."""
    return json.dumps({"run_id": run_id}, indent=1) + "\n"


def pipeline_run(mlruns: Path, link: Path) -> str:
    """The run the stages after train log into: the one `link` (models/run.json) names.

    A run id belongs to one MLflow store, and run.json travels with the outputs (`dvc pull`). When
    this store has no such run, the stages log into this store's continuation of it instead: a run
    tagged `char_rnn.continues` with the id, created by the first stage that needs it and found by
    that tag afterwards, so evaluate and register still share one run and nothing fails.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    experiment_id = connect(mlruns)
    run_id = json.loads(link.read_text(encoding="utf-8"))["run_id"]
    client = MlflowClient()
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        pass
    query = f"tags.`{CONTINUES}` = '{run_id}'"
    for found in client.search_runs([experiment_id], filter_string=query, max_results=1):
        return found.info.run_id
    note = (
        f"Continues run `{run_id}` of another MLflow store, whose outputs arrived here with `dvc pull`;"
        " its training and epochs are logged there."
    )
    run = client.create_run(
        experiment_id, run_name=f"continues-{run_id[:8]}", tags={CONTINUES: run_id, "mlflow.note.content": note}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def epoch_logger(prefix: str = "") -> Any:
    """A Keras callback that logs every epoch as it ends, so a long run can be watched in the UI."""
    import keras
    import mlflow

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            finite = {prefix + k: float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
            mlflow.log_metrics(finite, step=epoch)

    return EpochLogger()


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow rejects NaN in some stores and charts it badly in all: keep only finite values."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
