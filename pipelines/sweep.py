"""The sweep flow `char-rnn-sweep`: train several configs side by side, register the best one.

ingest → window → validate → baseline run once, in this process; then every config of the sweep
spec (`pipelines.sweep_spec`) is trained, tuned, refitted and evaluated as one mapped task, at most `max_parallel` at
once through the flow's task runner (`ThreadPoolTaskRunner(max_workers=max_parallel)`; `run_sweep`
sets it). Each trial runs its TensorFlow work in its own worker process, because Keras' seeding and
op determinism are process-global, and writes into its own `sweeps/<sweep-id>/<trial>/` folder
(`Layout.for_run`), while data, baseline and the MLflow store stay shared under the project root.

MLflow: the flow opens one parent run; each trial's training run is nested under it (tag
`mlflow.parentRunId`), and the parent gets the trial table, the per-trial metric and the best trial.
The best trial by `registry.metric` on the validation text (lower wins, except accuracy; the test text
chooses nothing, and without held-out text the memorised figure) is then registered, alone: it
becomes challenger, or champion when it beats the current champion (`char_rnn.registry`). A failed
trial (NaN loss, time budget) is reported and skipped; the sweep fails only when every trial fails.

On a Dask cluster (`python -m pipelines sweep --dask tcp://scheduler:8786`: prefect-dask's
`DaskTaskRunner`), the trials run on the Dask workers, each still in its own worker process there.
They read the data stages' files and write their folders under the project root, which every Dask
worker must see at the same path (a shared file system), and they log to the MLflow store this flow
logs to (its URI is handed to each trial, whatever the Dask worker's own environment says). The
scheduler and the workers import this package from a checkout of the same commit (docs/team.md).

No `from __future__ import annotations` here: Prefect reads the flow's annotations at run time.
"""

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from char_rnn.errors import PipelineError
from char_rnn.evaluation import chosen_on
from char_rnn.layout import Layout
from char_rnn.params import Metric, Params, SweepParams
from char_rnn.tracking import tracking_uri
from pipelines.failures import StageFailed, retry_if_transient
from pipelines.flow import (
    IN_FLOW_PROCESS,
    IN_WORKER,
    STAGE_TIMEOUT_S,
    TRAINING,
    _stage,
    lineage_tags,
    resolve_params,
    run_stage,
)
from pipelines.sweep_spec import Trial, plan_trials
from pipelines.worker import ModelWorker

SUMMARY_ARTIFACT = "sweep/trials.json"
# Each trial: train, then these in its own folder (register runs for the best trial only).
TRIAL_STAGES = tuple(name for name in IN_WORKER if name not in ("train", "register"))


class AllTrialsFailed(PipelineError):
    """No trial produced a finite metric: there is nothing to register."""


# ---- tasks ---------------------------------------------------------------------------------------


@task(name="trial", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def run_trial(
    trial: Trial, root: str, sweep_dir: str, tags: dict[str, str], timeout_s: float, tracking_uri: str
) -> dict[str, Any]:
    """Train and evaluate one config in its own process and folder; returns its run id, metrics, times."""
    run_dir = Path(sweep_dir) / trial.name
    started = time.time()
    with ModelWorker(Path(root), run_dir, {"MLFLOW_TRACKING_URI": tracking_uri}) as trial_worker:
        trained = trial_worker.call("train", trial.params, timeout_s, {**tags, "sweep.trial": trial.name})
        results = {
            stage: trial_worker.call(stage, trial.params, timeout_s if stage in TRAINING else STAGE_TIMEOUT_S)
            for stage in TRIAL_STAGES
        }
    metrics = results["evaluate"]
    return {
        "run_id": trained["run_id"],
        "run_dir": str(run_dir),
        "metrics": metrics,
        "started": started,
        "finished": time.time(),
    }


@task(
    name="register-best", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient
)
def register_best(trial: Trial, root: str, run_dir: str, tracking_uri: str) -> dict[str, Any]:
    """The `register` stage for the winning trial only: champion if it beats the champion, else challenger."""
    with ModelWorker(Path(root), Path(run_dir), {"MLFLOW_TRACKING_URI": tracking_uri}) as trial_worker:
        return trial_worker.call("register", trial.params, STAGE_TIMEOUT_S)


# ---- MLflow parent run ---------------------------------------------------------------------------


def open_parent_run(layout: Layout, sweep_id: str, spec: SweepParams, trials: list[Trial]) -> str:
    """The parent run that every trial's training run nests under; returns its id."""
    from mlflow import MlflowClient

    from char_rnn.tracking import connect

    experiment_id = connect(layout.mlruns)  # first: a client reads the store's URI when it is made
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=f"sweep-{sweep_id}", tags={"sweep.id": sweep_id, **lineage_tags()})
    params = {
        "sweep.max_parallel": spec.max_parallel,
        "sweep.trials": len(trials),
        "sweep.random": spec.random,
        "sweep.seed": spec.seed,
        **{f"sweep.grid.{key}": json.dumps(values) for key, values in spec.grid.items()},
    }
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), "sweep/spec.json")
    return run.info.run_id


def log_summary(parent_id: str, rows: list[dict[str, Any]], metric: Metric, best: dict[str, Any] | None) -> None:
    """The trial table as an artifact, each trial's metric as a step of one chart, the winner as tags."""
    from mlflow import MlflowClient

    client = MlflowClient()
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "trial", k))
    client.log_table(parent_id, {col: [row.get(col) for row in rows] for col in columns}, SUMMARY_ARTIFACT)
    for step, row in enumerate(rows, start=1):
        if _finite(row.get(metric.value)):
            client.log_metric(parent_id, f"sweep/{metric.value}", row[metric.value], step=step)
    client.set_tag(parent_id, "sweep.failed_trials", str(sum(row["status"] != "ok" for row in rows)))
    if best is not None:
        client.log_metric(parent_id, f"sweep/best_{metric.value}", best[metric.value])
        client.set_tag(parent_id, "sweep.best_trial", best["trial"])
        client.set_tag(parent_id, "sweep.best_run_id", best["run_id"])


def close_parent_run(parent_id: str, status: str, registration: dict[str, Any] | None = None) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in (registration or {}).items():
        client.set_tag(parent_id, f"sweep.registered.{key}", str(value))
    client.set_terminated(parent_id, status=status)


# ---- picking the best ----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def trial_row(trial: Trial, future: PrefectFuture, metric: Metric) -> dict[str, Any]:
    """One line of the summary: the overrides, status, metric and times; a failure keeps its reason."""
    row: dict[str, Any] = {"trial": trial.name, **trial.overrides}
    future.wait()
    if not future.state.is_completed():
        return {**row, "status": "failed", "error": str(future.state.message or future.state.name)[:500]}
    result = future.result()
    value = chosen_on(result["metrics"]).get(metric.value)
    row.update(
        run_id=result["run_id"],
        run_dir=result["run_dir"],
        started=result["started"],
        finished=result["finished"],
        seconds=round(result["finished"] - result["started"], 1),
    )
    if not _finite(value):
        return {**row, "status": "failed", "error": f"{metric.value} is {value!r}"}
    return {**row, "status": "ok", metric.value: float(value)}


def pick_best(rows: list[dict[str, Any]], metric: Metric) -> dict[str, Any] | None:
    """The successful row with the best metric (lower wins, except accuracy); None when none succeeded."""
    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        return None
    sign = -1.0 if metric.higher_is_better else 1.0
    return min(ok, key=lambda row: sign * row[metric.value])


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


# ---- the flow ------------------------------------------------------------------------------------


@flow(
    name="char-rnn-sweep",
    description="ingest → window → validate → baseline once, then train → tune → refit → evaluate per config"
    " in parallel; register the best",
    task_runner=ThreadPoolTaskRunner(max_workers=2),
)
def char_rnn_sweep(
    spec: SweepParams,
    params: Params | None = None,
    overrides: dict[str, Any] | None = None,
    root: str | None = None,
    sweep_id: str | None = None,
    train_timeout_s: float = 3600.0,
) -> dict[str, Any] | State:
    """Run the sweep `spec` on the project at `root` (default: the one around the working directory).

    Call it through `run_sweep`, which sizes the task runner to `spec.max_parallel` (the decorator's
    runner runs two at once). params/overrides: the base config, as in the `char-rnn` flow; every
    trial's overrides go on top and are all validated before the first stage runs.
    """
    layout = Layout(Path(root).resolve()) if root else Layout.discover()
    try:
        return _sweep(spec, layout, params, overrides, sweep_id, train_timeout_s)
    except StageFailed as exc:
        return Failed(message=str(exc))


def _sweep(
    spec: SweepParams,
    layout: Layout,
    params: Params | None,
    overrides: dict[str, Any] | None,
    sweep_id: str | None,
    train_timeout_s: float,
) -> dict[str, Any]:
    logger = get_run_logger()
    base = _stage("params", resolve_params, layout, params, overrides)
    trials = _stage("sweep spec", plan_trials, base, spec)
    where = str(layout.root)
    results: dict[str, Any] = {
        stage: _stage(stage, run_stage.with_options(name=stage), stage, where, base) for stage in IN_FLOW_PROCESS
    }
    sweep_id = sweep_id or new_sweep_id()
    sweep_dir = layout.root / "sweeps" / sweep_id
    parent_id = _stage("mlflow", open_parent_run, layout, sweep_id, spec, trials)
    store = tracking_uri(layout.mlruns)  # the trials log where the parent run is, on whichever machine
    status = "FAILED"
    try:
        tags = {"mlflow.parentRunId": parent_id, "sweep.id": sweep_id, **lineage_tags()}
        futures = run_trial.map(
            trials,
            root=unmapped(where),
            sweep_dir=unmapped(str(sweep_dir)),
            tags=unmapped(tags),
            timeout_s=unmapped(train_timeout_s),
            tracking_uri=unmapped(store),
        )
        metric = base.registry.metric
        rows = [trial_row(trial, future, metric) for trial, future in zip(trials, futures)]
        for row in rows:
            if row["status"] != "ok":
                logger.warning("trial %s failed and is skipped: %s", row["trial"], row["error"])
        best = pick_best(rows, metric)
        log_summary(parent_id, rows, metric, best)
        if best is None:
            raise StageFailed("sweep", f"AllTrialsFailed: all {len(rows)} trials failed; nothing registered")
        winner = next(trial for trial in trials if trial.name == best["trial"])
        registration = _stage("register", register_best, winner, where, best["run_dir"], store)
        close_parent_run(parent_id, "FINISHED", registration)
        status = "FINISHED"
    finally:
        if status != "FINISHED":
            close_parent_run(parent_id, "FAILED")
    logger.info(
        "best trial %s (%s=%s), registered as %s",
        best["trial"],
        metric.value,
        best[metric.value],
        registration.get("alias"),
    )
    return {
        **results,
        "sweep_id": sweep_id,
        "sweep_dir": str(sweep_dir),
        "parent_run_id": parent_id,
        "trials": rows,
        "best": best,
        "register": registration,
    }


def run_sweep(spec: SweepParams, task_runner: TaskRunner | None = None, **kwargs: Any) -> Any:
    """Run `char_rnn_sweep` with at most `spec.max_parallel` trials at once (or on `task_runner`).

    kwargs go to the flow (params, overrides, root, sweep_id, train_timeout_s, return_state).
    """
    runner = task_runner or ThreadPoolTaskRunner(max_workers=spec.max_parallel)
    return char_rnn_sweep.with_options(task_runner=runner)(spec=spec, **kwargs)
