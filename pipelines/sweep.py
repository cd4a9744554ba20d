"""The sweep flow `char-rnn-sweep`: every config of a sweep spec is a DVC experiment; the best is registered.

A trial is `dvc exp run --temp -n <sweep-id>-<trial> -S <key>=<value>... evaluate`: DVC copies the
project into a temporary folder, runs the pipeline there up to `evaluate` (never `register`: only the
best is registered), keeps the result as one of the project's experiments (`dvc exp show` lists it; its
outputs are in DVC's cache and run-cache) and deletes the copy. Training never writes the workspace,
but DVC stashes it for a moment as each `dvc exp run` starts (the trial's params are written into it,
copied, and the workspace put back): not to be started beside a `dvc repro` or a flow run, which
refuses to start beside it (`pipelines.versioning`). The train stage logs each trial
to the project's MLflow store, tagged with the experiment's name (`char_rnn.layout.store_home`).

The trials are Prefect tasks, at most `max_parallel` at once: here through a thread pool, each thread
waiting on its `dvc exp run`; on a Dask cluster (`--dask`, prefect-dask's `DaskTaskRunner`) on the Dask
workers, which must see the project at the same path. Not DVC's own queue (`--queue` + `dvc queue
start`): that queue is the project's, shared with experiments a person queued, which `dvc queue start`
would run too and `dvc queue stop --kill` would kill; a task keeps its trial's exit status and output,
and the same task runs on Dask.

The trials are ranked by `registry.metric` on the validation text (`chosen_on`: the test text chooses
nothing). The best one's overrides then run once more as an experiment of the whole pipeline: every
stage comes back from DVC's run-cache (the same files, the same MLflow run) except `register`, which
dvc.yaml keeps out of the run-cache and which asks the store through the same gate as `dvc repro`. That
experiment takes the winning trial's name (`dvc exp rename -f`): one experiment per config, the winner's
with its registration. The sweep's own MLflow run holds the trial table; the trials' runs nest under it.

No `from __future__ import annotations` here: Prefect reads the flow's annotations at run time.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from char_rnn.errors import PipelineError
from char_rnn.evaluation import chosen_on
from char_rnn.heldout import by_text
from char_rnn.layout import Layout
from char_rnn.params import Metric, Params, ParamsError, SweepParams, load_params, with_overrides
from pipelines.failures import retry_if_transient
from pipelines.sweep_spec import Trial, plan_trials

SUMMARY_ARTIFACT = "sweep/trials.json"
# `stop` ends a trial with Ctrl-C, but a sweep started with `&` from a script inherits SIGINT ignored, and
# so would DVC (a Python that starts with SIGINT ignored leaves it so): DVC starts with its default back.
WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)
TRIAL_TARGET = "evaluate"  # a trial's last stage: what ranking and registering need, no registration
OUTPUT_TAIL = 12  # lines of a failed `dvc exp run`'s output that its error keeps


class ExperimentFailed(Exception):
    """A `dvc exp run` that failed; the message ends with its output's last lines. Not a PipelineError:
    retried when that output says the failure was transient (a busy lock or database)."""


class SweepFailed(PipelineError):
    """No trial produced a finite metric, or the best one could not be registered."""


# ---- DVC ------------------------------------------------------------------------------------------


def dvc(root: str, *args: str, store: str | None = None, timeout_s: float | None = None) -> str:
    """Run this environment's `dvc` in `root`, its bin folder first on PATH (DVC runs `char-rnn <stage>`
    from PATH); `store`: the MLflow tracking URI the stages log to. The whole process group is stopped
    (`stop`) when time runs out or this call is interrupted, so no stage outlives its trial."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # a Dask worker's own: the trials log where the sweep reads
    if store:
        env["MLFLOW_TRACKING_URI"] = store
    command = [sys.executable, "-c", WITH_CTRL_C, str(bin_dir / "dvc"), *args]
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except BaseException as exc:
        stop(process)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise ExperimentFailed(f"dvc {' '.join(args[:2])} ran past {timeout_s:.0f} s and was stopped") from None
        raise
    if process.returncode != 0:
        tail = [line for line in output.splitlines() if line.strip()][-OUTPUT_TAIL:]
        raise ExperimentFailed(f"dvc {' '.join(args[:2])} exited with {process.returncode}: " + " | ".join(tail))
    return output


def stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Ctrl-C to the whole group, as in a terminal: DVC stops its stages, deletes its temporary copy and
    records no experiment (measured: 2-3 s; a SIGKILL leaves the copy and a 'Running' row in `dvc exp
    show`); whatever of the group is left after `grace_s` is killed."""
    with suppress(ProcessLookupError):  # gone already
        os.killpg(process.pid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def set_params(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` for each override, the value as JSON: Hydra's override grammar reads it back as
    the same number, bool, null, list or (quoted) string."""
    return [arg for key, value in overrides.items() for arg in ("-S", f"{key}={json.dumps(value, ensure_ascii=False)}")]


def read_json(root: str, experiment: str, path: str) -> Any:
    """A file as the experiment left it (from git, or DVC's cache for a cached output)."""
    import dvc.api

    return json.loads(dvc.api.read(path, repo=root, rev=experiment))


# ---- tasks ----------------------------------------------------------------------------------------


@task(name="trial", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def run_trial(
    experiment: str, overrides: dict[str, Any], root: str, store: str | None, timeout_s: float
) -> dict[str, Any]:
    """One config as the experiment `experiment`, up to evaluate; returns its held-out figures and times."""
    started = time.time()
    run = ("exp", "run", "--temp", "-n", experiment, *set_params(overrides), TRIAL_TARGET)
    dvc(root, *run, store=store, timeout_s=timeout_s)
    metrics = by_text(read_json(root, experiment, "reports/metrics.json"))
    return {"metrics": metrics, "started": started, "finished": time.time()}


@task(
    name="register-best", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient
)
def register_best(
    experiment: str, overrides: dict[str, Any], root: str, store: str | None, timeout_s: float
) -> dict[str, Any]:
    """The whole pipeline once more with the winner's overrides, as an experiment that replaces the
    winner's: all but `register` from the run-cache. Checked first, up to evaluate and registering
    nothing: when that evaluated other files than the winner did (the workspace changed during the
    sweep, so stages ran anew), registering would register what was never ranked: the winner is left as
    it was and the sweep fails saying so."""
    checked, staged = f"{experiment}-checking", f"{experiment}-registering"
    dvc(
        root,
        "exp",
        "run",
        "--temp",
        "-n",
        checked,
        *set_params(overrides),
        TRIAL_TARGET,
        store=store,
        timeout_s=timeout_s,
    )
    same = evaluated(root, checked) == evaluated(root, experiment)
    dvc(root, "exp", "remove", checked)
    if not same:
        raise SweepFailed(
            f"experiment {checked} did not evaluate what {experiment} did (the workspace changed during the"
            " sweep?): nothing registered; compare them with `dvc exp diff`"
        )
    output = dvc(root, "exp", "run", "--temp", "-n", staged, *set_params(overrides), store=store, timeout_s=timeout_s)
    dvc(root, "exp", "rename", "-f", staged, experiment)
    registration = read_json(root, experiment, "reports/registration.json")
    if "Running stage 'register'" not in output:  # unchanged since the commit it started from: its record
        registration["already_registered"] = True
    return registration


def evaluated(root: str, experiment: str) -> Any:
    """The evaluate stage's record in the experiment's dvc.lock: its code, params, inputs and outputs."""
    import dvc.api
    import yaml

    return yaml.safe_load(dvc.api.read("dvc.lock", repo=root, rev=experiment))["stages"]["evaluate"]


# ---- MLflow summary -------------------------------------------------------------------------------


def log_summary(
    layout: Layout, sweep_id: str, spec: SweepParams, rows: list[dict[str, Any]], best: dict[str, Any] | None
) -> str:
    """The sweep's run: its spec, the trial table and the winner; each trial's run (found by its
    experiment's name) nests under it and is tagged with the sweep. Fills in each row's run_id."""
    from mlflow import MlflowClient

    from char_rnn.tracking import connect

    experiment_id = connect(layout.mlruns)  # first: a client reads the store's URI when it is made
    client = MlflowClient()
    parent = client.create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={"sweep.id": sweep_id}).info.run_id
    for row in rows:
        found = client.search_runs([experiment_id], f"tags.`dvc.exp_name` = '{row['experiment']}'", max_results=1)
        if found:
            row["run_id"] = found[0].info.run_id
            for key, value in {"mlflow.parentRunId": parent, "sweep.id": sweep_id, "sweep.trial": row["trial"]}.items():
                client.set_tag(row["run_id"], key, value)
        elif row["status"] == "ok":  # DVC restored it from its run-cache: the run that trained those files
            row["run_id"] = read_json(str(layout.root), row["experiment"], "models/run.json")["run_id"]
            row["from_run_cache"] = True
    client.log_dict(parent, spec.model_dump(mode="json"), "sweep/spec.json")
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "trial", k))
    client.log_table(parent, {col: [row.get(col) for row in rows] for col in columns}, SUMMARY_ARTIFACT)
    client.set_tag(parent, "sweep.failed_trials", str(sum(row["status"] != "ok" for row in rows)))
    if best is not None:
        client.set_tag(parent, "sweep.best_experiment", best["experiment"])
        client.set_tag(parent, "sweep.best_run_id", str(best["run_id"]))
    return parent


def close_summary(parent_id: str, registration: dict[str, Any] | None) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in (registration or {}).items():
        if key != "gate":
            client.set_tag(parent_id, f"sweep.registered.{key}", str(value))
    client.set_terminated(parent_id, status="FINISHED" if registration else "FAILED")


# ---- picking the best -----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def trial_row(trial: Trial, experiment: str, state: State, metric: Metric) -> dict[str, Any]:
    """One line of the summary: the experiment, overrides, status, metric (on the text configs are chosen
    on) and times; a failure says why."""
    row: dict[str, Any] = {"trial": trial.name, "experiment": experiment, **trial.overrides}
    if not state.is_completed():
        return {**row, "status": "failed", "error": str(state.message or state.name)[:500]}
    result = state.result()
    value = chosen_on(result["metrics"]).get(metric.value)
    row.update(
        started=result["started"],
        finished=result["finished"],
        seconds=round(result["finished"] - result["started"], 1),
    )
    if not _finite(value):
        return {**row, "status": "failed", "error": f"{metric.value} is {value!r}"}
    return {**row, "status": "ok", metric.value: float(value)}


def finished(future: PrefectFuture) -> State:
    """The task's final state: a failed trial is a row that says why, not an exception."""
    future.wait()
    return future.state


def pick_best(rows: list[dict[str, Any]], metric: Metric) -> dict[str, Any] | None:
    """The successful row with the best metric (lower wins, except accuracy); None when none succeeded."""
    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        return None
    sign = -1.0 if metric.higher_is_better else 1.0
    return min(ok, key=lambda row: sign * row[metric.value])


def new_sweep_id() -> str:
    """`1207-0620-a3f1`: when (UTC), and unique; short, as it starts every trial's experiment name."""
    return time.strftime("%m%d-%H%M", time.gmtime()) + "-" + uuid.uuid4().hex[:4]


def plan(layout: Layout, spec: SweepParams, overrides: dict[str, Any] | None) -> tuple[Params, list[Trial]]:
    """params.yaml with the base overrides, then every trial's config, all validated before any trial runs."""
    base = with_overrides(load_params(layout.params), overrides or {})
    return base, plan_trials(base, spec)


# ---- the flow -------------------------------------------------------------------------------------


@flow(
    name="char-rnn-sweep",
    description="every config of the sweep spec as a DVC experiment (dvc exp run --temp) up to evaluate,"
    " in parallel; the best by the validation text registered",
    task_runner=ThreadPoolTaskRunner(max_workers=2),
)
def char_rnn_sweep(
    spec: SweepParams,
    overrides: dict[str, Any] | None = None,
    root: str | None = None,
    sweep_id: str | None = None,
    train_timeout_s: float = 3600.0,
) -> dict[str, Any] | State:
    """Run the sweep `spec` on the project at `root` (default: the one around the working directory).

    Call it through `run_sweep`, which sizes the task runner to `spec.max_parallel`. overrides: dotted
    keys set for every trial on top of params.yaml (as `-S`); train_timeout_s: each trial's time budget.
    """
    layout = Layout(Path(root).resolve()) if root else Layout.discover()
    try:
        base, trials = plan(layout, spec, overrides)
        return _sweep(spec, layout, base, trials, overrides or {}, sweep_id or new_sweep_id(), train_timeout_s)
    except (ParamsError, SweepFailed) as exc:
        return Failed(message=str(exc))


def _sweep(
    spec: SweepParams,
    layout: Layout,
    base: Params,
    trials: list[Trial],
    overrides: dict[str, Any],
    sweep_id: str,
    timeout_s: float,
) -> dict[str, Any]:
    logger = get_run_logger()
    root, store = str(layout.root), os.environ.get("MLFLOW_TRACKING_URI")  # handed to Dask workers as is
    names = [f"{sweep_id}-{trial.index:02d}" for trial in trials]  # short: `dvc exp show` has the params
    configs = [{**overrides, **trial.overrides} for trial in trials]
    futures = run_trial.map(names, configs, unmapped(root), unmapped(store), unmapped(timeout_s))
    metric = base.registry.metric
    rows = [trial_row(trial, name, finished(future), metric) for trial, name, future in zip(trials, names, futures)]
    for row in rows:
        if row["status"] != "ok":
            logger.warning("trial %s failed and is skipped: %s", row["experiment"], row["error"])
    best = pick_best(rows, metric)
    parent_id = log_summary(layout, sweep_id, spec, rows, best)
    registration = None
    try:
        if best is None:
            raise SweepFailed(f"all {len(rows)} trials failed; nothing registered")
        winner = configs[names.index(best["experiment"])]
        state = finished(register_best.submit(best["experiment"], winner, root, store, timeout_s))  # on the runner too
        if not state.is_completed():
            raise SweepFailed(f"registering {best['experiment']} failed: {state.message or state.name}")
        registration = state.result()
    finally:
        close_summary(parent_id, registration)
    outcome = f"{registration['model_name']} version {registration['version']}"
    logger.info("best: experiment %s (%s=%s); %s", best["experiment"], metric.value, best[metric.value], outcome)
    return {
        "sweep_id": sweep_id,
        "experiment": best["experiment"],
        "summary_run_id": parent_id,
        "trials": rows,
        "best": best,
        "register": registration,
    }


def run_sweep(spec: SweepParams, task_runner: TaskRunner | None = None, **kwargs: Any) -> Any:
    """Run `char_rnn_sweep` with at most `spec.max_parallel` trials at once (or on `task_runner`).

    kwargs go to the flow (overrides, root, sweep_id, train_timeout_s, return_state).
    """
    runner = task_runner or ThreadPoolTaskRunner(max_workers=spec.max_parallel)
    return char_rnn_sweep.with_options(task_runner=runner)(spec=spec, **kwargs)
