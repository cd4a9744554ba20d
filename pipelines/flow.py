"""The Prefect flow: each task runs one stage of dvc.yaml through DVC, wired by dvc.yaml's graph.

DVC decides what runs (`dvc repro --single-item <stage>`: an unchanged stage is skipped, one whose
inputs came back is restored from the run-cache) and writes dvc.lock as each stage ends, exactly as
a `dvc repro` does (`pipelines.versioning`). Prefect keeps the schedule, the task graph (a task
waits for the stages whose outputs it reads), retries of transient failures (`pipelines.failures`),
the logs (each task logs its stage's output and what DVC did) and the run's markdown artifact.

No `from __future__ import annotations` here: Prefect builds the flow's parameter schema from the
annotations when it loads this module by file path.
"""

import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State

import char_rnn
from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.lock import ProjectBusy, project_lock
from char_rnn.params import Params, ParamsError, load_params, parse_params, with_overrides
from pipelines import CODE_DIR
from pipelines.arrivals import refresh, tracked
from pipelines.failures import StageFailed, machine_fault, one_line, retry_if_transient
from pipelines.publish import outcome, publish_run, report, run_branch
from pipelines.versioning import (
    is_up_to_date,
    push,
    refuse_while_dvc_runs,
    reproduce,
    require_dvc_project,
    require_remote,
    stage_env,
    write_params,
)

TRAINING = ("train", "refit")  # bounded by the run's training budget; the other stages by STAGE_TIMEOUT_S
STAGE_TIMEOUT_S = 900.0  # the other stages: minutes at most, even on the full corpus
GIT_HINTS = ("To track the changes with git", "git add ", "auto staging", "core.autostage")  # DVC's, not ours
ARTIFACT = "the outcome, one figure per model, MLflow links, what DVC did with each stage, the changed params"
UP_TO_DATE = "up to date: nothing changed (params, corpus and code as dvc.lock records them)"

TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_if_transient,
}


def stage_graph(root: Path) -> dict[str, list[str]]:
    """dvc.yaml's stages in its order, each with the stages whose outputs it reads: DVC's own graph."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    made_by = {
        next(iter(out)) if isinstance(out, dict) else out: name
        for name, stage in stages.items()
        for kind in ("outs", "metrics", "plots")
        for out in stage.get(kind, [])
    }
    reads = {name: [made_by[dep] for dep in stage.get("deps", []) if dep in made_by] for name, stage in stages.items()}
    return {name: list(dict.fromkeys(upstream)) for name, upstream in reads.items()}


@task(name="check-unchanged", **TASK_OPTIONS)
def check_unchanged(root: str, params: Params) -> bool:
    return is_up_to_date(Layout(Path(root)), params)


@task(name="refresh-corpus", **TASK_OPTIONS)
def refresh_corpus(root: str) -> list[str]:
    """`dvc update` of the corpus's imported folders, `dvc commit` of its added ones, before anything
    is decided (`pipelines.arrivals`)."""
    said = refresh(Layout(Path(root)))
    for line in said or ["no DVC-tracked folder under data/raw changed"]:
        get_run_logger().info("corpus: %s", line)
    return said


@task(**TASK_OPTIONS)
def dvc_stage(root: str, stage: str, timeout_s: float, run_env: dict[str, str]) -> dict[str, Any] | State:
    """One stage through DVC; its output and DVC's messages go to this task's log.

    A user's error (bad params, failed validation, NaN loss, ...) or a machine's fault (a full disk,
    met by the stage or by DVC) ends the task Failed with its one line and no traceback, never retried;
    a transient error raises and is retried; a bug raises with the stage's traceback.
    """
    try:
        run = reproduce(Layout(Path(root)), stage, timeout_s, run_env)
    except Exception as exc:  # DVC's own, in this process: a full disk is said in one line, the rest raise
        if (fault := machine_fault(exc)) is None:
            raise
        return Failed(message=one_line(fault))
    logger = get_run_logger()
    for line in run.output:  # DVC's own messages are among them, and the stage command's output
        if line.strip() and not any(hint in line for hint in GIT_HINTS):
            logger.info("%s", line)
    if run.error is None:
        logger.info("%s %s: %s", stage, run.how, run.summary)
        return {"how": run.how, "summary": run.summary}
    error = run.error if isinstance(run.error, PipelineError) else machine_fault(run.error) or run.error
    if isinstance(error, PipelineError):
        return Failed(message=one_line(error))
    raise error


@task(name="dvc-push", **TASK_OPTIONS)
def push_outputs(root: str) -> dict[str, Any]:
    return push(Layout(Path(root)))


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


def resolve_params(layout: Layout, overrides: dict[str, Any]) -> Params:
    """params.yaml, then dotted overrides, validated exactly as the file is."""
    return with_overrides(load_params(layout.params), overrides)


def committed_params(layout: Layout) -> Params | None:
    """params.yaml as the project's last commit has it (None outside git): what a run is compared with."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=layout.root, capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    try:
        return parse_params(yaml.safe_load(shown.stdout))
    except ParamsError:  # the committed file is of an older shape: nothing to compare with
        return None


def params_diff(run: Params, committed: Params | None) -> dict[str, tuple[Any, Any]]:
    """{key: (committed, this run's)} for every param this run changes from the committed params.yaml."""
    before = committed.flat() if committed is not None else {}
    return {key: (before.get(key), value) for key, value in run.flat().items() if before.get(key) != value}


def _stage(name: str, call: Any, *args: Any, **options: Any) -> Any:
    """Run a task (or a plain step) and stop the flow with `StageFailed` naming it when it fails."""
    if not hasattr(call, "with_options"):
        try:
            return call(*args)
        except PipelineError as exc:
            raise StageFailed(name, one_line(exc)) from None
    state = call(*args, return_state=True, **options)
    if not state.is_completed():
        raise StageFailed(name, state.message or state.name)
    return state


@flow(name="char-rnn", description="dvc.yaml's stages, each a task run through DVC (dvc repro --single-item)")
def char_rnn_pipeline(
    overrides: dict[str, Any] = {},  # noqa: B006  a dict default: the custom-run form's editor; never mutated
    root: str | None = None,
    skip_if_unchanged: bool = False,
    train_timeout_s: float = 3600.0,
    push: bool = True,
    push_run_branch: bool = False,
) -> dict[str, Any] | State:
    """Run the pipeline's stages through DVC on the project at `root`; DVC reruns only what changed.

    Args:
        overrides: params to change for this run, as dotted keys of params.yaml, e.g. {"train.epochs": 5}.
            Validated like params.yaml, then written into it (as `dvc exp run -S` does) so that dvc.lock
            records them; a run whose stages fail, or that is cancelled, puts params.yaml back (once
            they all ran, dvc.lock records them and they stay). Empty: params.yaml as it is.
        root: the project folder (default: the one with params.yaml around the working directory).
        skip_if_unchanged: end "up to date" at once, without running DVC's stages, when params, corpus and
            code are as dvc.lock records them.
        train_timeout_s: seconds that train and refit may each take before they are stopped (each other
            stage: 900); a rerun resumes training from its last completed epoch.
        push: `dvc push` the outputs after the run when a default DVC remote is set.
        push_run_branch: then commit dvc.lock, params.yaml and the metrics on a new branch `runs/<time>-<name>`
            and push it to origin (a work-pool worker's clone is deleted after the run).
    """
    layout = Layout(Path(root).resolve()) if root else Layout.discover()
    ticket = uuid.uuid4().hex
    try:
        with project_lock(layout.lock, f"flow run {flow_run.get_name()}", ticket=ticket):
            refuse_while_dvc_runs(layout)
            return _run(layout, overrides, ticket, skip_if_unchanged, train_timeout_s, push, push_run_branch)
    except (StageFailed, ProjectBusy) as exc:
        return Failed(message=str(exc))


def _run(
    layout: Layout,
    overrides: dict[str, Any],
    ticket: str,
    skip_if_unchanged: bool,
    train_timeout_s: float,
    push: bool,
    push_run_branch: bool,
) -> State:
    logger = get_run_logger()
    _stage("setup", require_dvc_project, layout)
    # Which code runs: a work-pool worker's clone, or a developer's working copy.
    logger.info("code: pipelines from %s, char_rnn from %s", CODE_DIR, Path(char_rnn.__file__).parent)
    run_params = _stage("params", resolve_params, layout, overrides)
    changed = params_diff(run_params, committed_params(layout))
    logger.info("params: %s", "; ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items()) or "as committed")
    where = str(layout.root)
    if tracked(layout):  # text that arrives in a folder DVC tracks: brought up to date first
        _stage("refresh-corpus", refresh_corpus, where)
    if skip_if_unchanged and _stage("check-unchanged", check_unchanged, where, run_params).result():
        create_markdown_artifact(report({}, UP_TO_DATE, changed, layout), key="char-rnn-run", description=ARTIFACT)
        return Completed(message=UP_TO_DATE)
    branch = None
    if push_run_branch:  # checked now, not after training: a branch naming outputs that nobody can pull
        _stage("setup", require_remote, layout, push)
        branch = run_branch(str(flow_run.name))
    before = layout.params.read_bytes()
    written = _stage("params", write_params, layout, run_params)
    if written:
        logger.info("params.yaml: wrote %s for DVC to read and record", ", ".join(written))
    try:
        results = _stages(where, train_timeout_s, stage_env(ticket, lineage_tags(branch)))
    except BaseException:  # a failed stage, and a cancelled or interrupted run (Prefect's SIGTERM, Ctrl-C)
        layout.params.write_bytes(before)  # dvc.lock keeps what the stages that ran recorded
        raise
    said = outcome(results, layout)
    if push:
        results["dvc"] = _stage("dvc-push", push_outputs, where).result()
    if branch:
        results["git"] = _stage("git-push", publish, where, branch, commit_message(said, results)).result()
    create_markdown_artifact(report(results, said, changed, layout), key="char-rnn-run", description=ARTIFACT)
    return Completed(message=said, data=results)


def _stages(where: str, train_timeout_s: float, run_env: dict[str, str]) -> dict[str, Any]:
    """Every stage in dvc.yaml's order, each task waiting for the tasks of the stages it reads from."""
    states: dict[str, State] = {}
    for name, upstream in stage_graph(Path(where)).items():
        budget = train_timeout_s if name in TRAINING else STAGE_TIMEOUT_S
        call = dvc_stage.with_options(name=name)
        wait_for = [states[stage] for stage in upstream]
        states[name] = _stage(name, call, where, name, budget, run_env, wait_for=wait_for)
    return {name: state.result() for name, state in states.items()}


def commit_message(said: str, results: dict[str, Any]) -> str:
    """The run branch's commit: which flow run and its outcome, then what each stage did."""
    lines = [f"char-rnn run {flow_run.name} ({deployment.name or 'ad-hoc'}): {said}", ""]
    lines += [f"{name}: {result['summary']}" for name, result in results.items() if "summary" in result]
    return "\n".join(lines)
