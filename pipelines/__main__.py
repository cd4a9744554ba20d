"""`python -m pipelines run|sweep|serve|watch`: the Prefect driver's command line (run from the repository root).

Prefect reads its settings once, on import: the defaults below are set before it is imported. The
temporary server that a run starts when no PREFECT_API_URL is configured needs more than the default
20 s to start on a small machine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Run the char-rnn pipeline as a Prefect flow, or serve its nightly deployment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

RootOption = typer.Option(None, help="project root (default: the folder with params.yaml around the working directory)")
TimeoutOption = typer.Option(
    3600.0, help="training's own time budget in seconds; the training process is stopped after it"
)


def _overrides(assignments: list[str]) -> dict[str, Any]:
    """`train.epochs=5` → {"train.epochs": 5}: values are read as YAML, as in params.yaml."""
    pairs = [item.partition("=") for item in assignments]
    bad = [item for item, (_, sep, _) in zip(assignments, pairs) if not sep]
    if bad:
        raise typer.BadParameter(f"expected KEY=VALUE, got {', '.join(bad)}", param_hint="--set")
    return {key: yaml.safe_load(value) for key, _, value in pairs}


@app.command()
def run(
    root: Path | None = RootOption,
    set_: list[str] = typer.Option([], "--set", help="override a param, e.g. --set train.epochs=5 (repeatable)"),
    skip_if_unchanged: bool = typer.Option(False, help="end 'up to date' without training when nothing changed"),
    train_timeout_s: float = TimeoutOption,
    push: bool = typer.Option(True, help="dvc push after the run when a default remote is configured"),
) -> None:
    """Run the flow once, now, in this process (on PREFECT_API_URL's server, else a temporary one)."""
    from char_rnn.layout import find_root
    from pipelines.flow import char_rnn_pipeline

    state = char_rnn_pipeline(
        overrides=_overrides(set_),
        root=str(root.resolve() if root else find_root()),
        skip_if_unchanged=skip_if_unchanged,
        train_timeout_s=train_timeout_s,
        push=push,
        return_state=True,
    )
    typer.echo(f"{state.name}: {state.message or ''}".rstrip(": "))
    if state.is_completed():
        typer.echo(json.dumps(state.result(raise_on_failure=False), ensure_ascii=False, indent=1, default=str))
    raise typer.Exit(0 if state.is_completed() else 1)


@app.command()
def sweep(
    spec: Path | None = typer.Option(
        None,
        "--spec",
        help="sweep spec YAML: max_parallel, grid of dotted"
        " overrides, optional random and seed, or a params file with a sweep:"
        " section (default: the project's params.yaml)",
    ),
    root: Path | None = RootOption,
    set_: list[str] = typer.Option([], "--set", help="override a base param for every trial (repeatable)"),
    sweep_id: str | None = typer.Option(
        None, help="names the trials' DVC experiments <sweep-id>-<trial> (default: time + random suffix)"
    ),
    train_timeout_s: float = typer.Option(3600.0, help="each trial's time budget in seconds; it is stopped after it"),
    dask: str | None = typer.Option(
        None, help="a Dask scheduler's address (tcp://host:8786): trials run on its workers instead of here"
    ),
) -> None:
    """Run every config of a sweep spec as a DVC experiment, several at once; register the best (champion
    or challenger). Every config is validated before the first one runs."""
    from char_rnn.layout import Layout
    from char_rnn.params import ParamsError
    from pipelines.sweep import plan, run_sweep
    from pipelines.sweep_spec import load_spec

    task_runner = None
    if dask:
        from prefect_dask import DaskTaskRunner

        task_runner = DaskTaskRunner(address=dask)

    overrides = _overrides(set_)
    try:
        layout = Layout(root.resolve()) if root else Layout.discover()
        sweep_spec = load_spec(spec or layout.params)
        plan(layout, sweep_spec, overrides)
    except ParamsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    state = run_sweep(
        sweep_spec,
        task_runner=task_runner,
        overrides=overrides,
        root=str(layout.root),
        sweep_id=sweep_id,
        train_timeout_s=train_timeout_s,
        return_state=True,
    )
    typer.echo(f"{state.name}: {state.message or ''}".rstrip(": "), err=True)  # stdout: the JSON alone
    if state.is_completed():
        typer.echo(json.dumps(state.result(raise_on_failure=False), ensure_ascii=False, indent=1, default=str))
    raise typer.Exit(0 if state.is_completed() else 1)


@app.command()
def serve(
    root: Path | None = RootOption,
    cron: str = typer.Option("0 2 * * *", help="cron schedule (default: nightly at 02:00)"),
    timezone: str = typer.Option("UTC", help="the cron's timezone, an IANA name such as Asia/Seoul"),
    name: str = typer.Option("nightly", help="deployment name"),
    skip_if_unchanged: bool = typer.Option(True, help="scheduled runs end 'up to date' when nothing changed"),
    train_timeout_s: float = TimeoutOption,
) -> None:
    """Serve the scheduled deployment until Ctrl-C; needs PREFECT_API_URL (a `prefect server start`)."""
    from prefect.settings import PREFECT_API_URL

    from char_rnn.layout import find_root
    from pipelines.serve import serve as serve_deployment

    if not PREFECT_API_URL.value():
        typer.secho(
            "error: set PREFECT_API_URL=http://127.0.0.1:4200/api (start the server with "
            "`prefect server start --host 127.0.0.1`)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    serve_deployment((root or find_root()).resolve(), cron, timezone, name, skip_if_unchanged, train_timeout_s)


@app.command()
def watch(
    root: Path | None = RootOption,
    deployment: str = typer.Option("nightly", help="the deployment whose trigger the arrival event starts"),
    interval: float = typer.Option(60.0, help="seconds between looks"),
    once: bool = typer.Option(False, help="look once and exit"),
) -> None:
    """Start a run when new text arrives: look at data/raw every INTERVAL seconds (dvc update of imports,
    dvc commit of added folders, under the project's lock) and emit char-rnn.corpus.arrived for the
    deployment when DVC finds the corpus changed; needs PREFECT_API_URL."""
    import logging

    from char_rnn.layout import Layout
    from pipelines.arrivals import watch as watch_corpus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    watch_corpus(Layout(root.resolve()) if root else Layout.discover(), deployment, interval, once)


if __name__ == "__main__":
    sys.exit(app())
