"""The Prefect flow: the stages of `char_rnn.stages` as tasks, then DVC bookkeeping.

No `from __future__ import annotations` here: Prefect builds the flow's parameter model from the
annotations and cannot resolve `Params` from a string when it loads this module by file path.

Tasks pass paths (the project root) and typed params, never models or datasets, and caching is
off (`NO_CACHE`): every stage writes files, and DVC, not Prefect, decides what is up to date.
Retries happen only for transient errors (see `pipelines.failures`).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State

import char_rnn
from char_rnn import stages
from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.lock import ProjectBusy, project_lock
from char_rnn.params import Params, load_params, with_overrides
from pipelines import CODE_DIR
from pipelines.failures import StageFailed, machine_fault, one_line, retry_if_transient
from pipelines.publish import publish_run, run_branch
from pipelines.versioning import (
    holding_dvc_lock,
    is_up_to_date,
    record_run,
    refuse_while_dvc_repro_runs,
    require_dvc_project,
    require_remote,
    warm_up,
)
from pipelines.worker import ModelWorker

IN_FLOW_PROCESS = tuple(s.name for s in stages.STAGES if not s.in_worker)
IN_WORKER = tuple(s.name for s in stages.STAGES if s.in_worker)  # in the model worker, which can be stopped
TRAINING = ("train", "refit")  # bounded by the run's training budget; the other stages by STAGE_TIMEOUT_S
STAGE_TIMEOUT_S = 900.0  # tune, evaluate and register: minutes at most, even on the full corpus
UP_TO_DATE = "up to date: corpus, params and code unchanged since the last successful run"

TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_if_transient,
}


@task(name="check-unchanged", **TASK_OPTIONS)
def check_unchanged(root: str, params: Params) -> bool:
    return is_up_to_date(Layout(Path(root)), params)


@task(**TASK_OPTIONS)
def run_stage(stage: str, root: str, params: Params) -> dict[str, Any] | State:
    return expected_failures(stages.stage(stage).run, params, Layout(Path(root)))


@task(**TASK_OPTIONS)
def run_in_worker(
    stage: str, worker: ModelWorker, params: Params, timeout_s: float, tags: dict[str, str] | None
) -> dict[str, Any] | State:
    return expected_failures(worker.call, stage, params, timeout_s, tags)


def expected_failures(call: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | State:
    """A user's error (bad params, failed validation, NaN loss, ...) or a machine's fault (a full disk)
    ends the task Failed with its message on one line and no traceback, which is kept for bugs; none of
    these is retried."""
    try:
        return call(*args)
    except PipelineError as exc:
        return Failed(message=one_line(exc))
    except Exception as exc:
        if (fault := machine_fault(exc)) is None:
            raise
        return Failed(message=one_line(fault))


@task(name="dvc-commit", **TASK_OPTIONS)
def record(root: str, params: Params, push: bool) -> dict[str, Any]:
    return record_run(Layout(Path(root)), params, push)


@task(name="git-push", **TASK_OPTIONS)
def publish(root: str, branch: str, message: str) -> dict[str, Any]:
    return publish_run(Path(root), branch, message)


def lineage_tags(branch: str | None = None) -> dict[str, str]:
    """Tags for the MLflow run, next to the git commit and DVC hashes that the train stage adds; with the
    run branch its record will be pushed to, so that a registered version says where its dvc.lock is."""
    return {
        "prefect.flow_run_id": str(flow_run.id),
        "prefect.flow_run_name": str(flow_run.name),
        "prefect.deployment": deployment.name or "none (ad-hoc run)",
        **({"run_branch": branch} if branch else {}),
    }


def resolve_params(layout: Layout, params: Params | None, overrides: dict[str, Any] | None) -> Params:
    """params.yaml unless given, then dotted overrides, validated exactly as the file is."""
    return with_overrides(params if params is not None else load_params(layout.params), overrides or {})


def _stage(name: str, call: Callable[..., Any], *args: Any) -> Any:
    """Run a task (or a plain step) and stop the flow with `StageFailed` naming it when it fails."""
    if not isinstance(call, Task):
        try:
            return call(*args)
        except PipelineError as exc:
            raise StageFailed(name, one_line(exc)) from None
    state = call(*args, return_state=True)
    if not state.is_completed():
        raise StageFailed(name, state.message or state.name)
    return state.result()


def commit_message(results: dict[str, Any]) -> str:
    """The run branch's commit: which flow run, then what each stage did (the report's lines)."""
    lines = [f"char-rnn run {flow_run.name} ({deployment.name or 'ad-hoc'})", ""]
    lines += [f"{name}: {result['summary']}" for name, result in results.items() if "summary" in result]
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    """The flow run's markdown artifact: the MLflow run, what each stage did, the registry's decision."""
    train = results.get("train", {})
    lines = ["## char-rnn run", ""]
    if "run_url" in train:
        lines.append(f"MLflow run [{train['run_name']}]({train['run_url']})")
        lines.append("")
    lines += [f"- **{name}**: {result['summary']}" for name, result in results.items() if "summary" in result]
    return "\n".join(lines) + "\n"


@flow(
    name="char-rnn",
    description=" → ".join(s.name for s in stages.STAGES) + ", recorded by DVC",
)
def char_rnn_pipeline(
    params: Params | None = None,
    overrides: dict[str, Any] | None = None,
    root: str | None = None,
    skip_if_unchanged: bool = False,
    train_timeout_s: float = 3600.0,
    push: bool = True,
    push_run_branch: bool = False,
) -> dict[str, Any] | State:
    """Run every stage on the project at `root` (default: the one around the working directory).

    params: the full typed params (default: params.yaml at run time); overrides: dotted keys such
    as {"train.epochs": 5} applied on top; skip_if_unchanged: end Completed "up to date" without
    training when nothing changed since the last successful run; train_timeout_s: training's own
    time budget, after which the training process is stopped; push: `dvc push` when a remote is set;
    push_run_branch: then commit the run's record on a new branch `runs/...` and push it to origin
    (what a work-pool worker does: its clone is deleted after the run).
    """
    layout = Layout(Path(root).resolve()) if root else Layout.discover()
    try:
        with project_lock(layout.lock, f"flow run {flow_run.get_name()}"):
            refuse_while_dvc_repro_runs(layout)
            return _run(layout, params, overrides, skip_if_unchanged, train_timeout_s, push, push_run_branch)
    except (StageFailed, ProjectBusy) as exc:
        return Failed(message=str(exc))


def _run(
    layout: Layout,
    params: Params | None,
    overrides: dict[str, Any] | None,
    skip_if_unchanged: bool,
    train_timeout_s: float,
    push: bool,
    push_run_branch: bool,
) -> dict[str, Any] | State:
    _stage("setup", require_dvc_project, layout)
    # Which code runs: a work-pool worker's clone, or a developer's working copy.
    get_run_logger().info("code: pipelines from %s, char_rnn from %s", CODE_DIR, Path(char_rnn.__file__).parent)
    run_params = _stage("params", resolve_params, layout, params, overrides)
    where = str(layout.root)
    if skip_if_unchanged and _stage("check-unchanged", check_unchanged, where, run_params):
        return Completed(message=UP_TO_DATE)
    results: dict[str, Any] = {}
    branch = None
    if push_run_branch:  # checked now, not after training: a branch naming outputs that nobody can pull
        _stage("setup", require_remote, layout, push)
        branch = run_branch(str(flow_run.name))
    dvc_ready = warm_up(layout)  # while the stages run; joined before the first DVC command
    with holding_dvc_lock(layout), ModelWorker.claim(layout.root) as worker:  # TensorFlow loads meanwhile
        for stage in IN_FLOW_PROCESS:
            results[stage] = _stage(stage, run_stage.with_options(name=stage), stage, where, run_params)
        for stage in IN_WORKER:
            budget = train_timeout_s if stage in TRAINING else STAGE_TIMEOUT_S
            tags = lineage_tags(branch) if stage == "train" else None
            call = run_in_worker.with_options(name=stage)
            results[stage] = _stage(stage, call, stage, worker, run_params, budget, tags)
    dvc_ready.join()
    results["dvc"] = _stage("dvc-commit", record, where, run_params, push)
    if branch:
        results["git"] = _stage("git-push", publish, where, branch, commit_message(results))
    create_markdown_artifact(report(results), key="char-rnn-run", description="what the run did and decided")
    return results
