"""`char-rnn`: the command line, a thin driver over `char_rnn.stages` (and what dvc.yaml calls).

Every command shows its progress on stderr and ends with a one-line summary on stdout; `--quiet`
shows neither (errors only), `--json` prints each stage's result as JSON instead of its summary.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from char_rnn.errors import PipelineError
from char_rnn.faults import environment_fault
from char_rnn.layout import Layout
from char_rnn.lock import project_lock
from char_rnn.params import load_params
from char_rnn.quiet import import_tensorflow
from char_rnn.stages import STAGES, Stage
from char_rnn.stages import run_all as run_all_stages

app = typer.Typer(
    help="Character-level RNN pipeline: each stage reads params.yaml and the previous stage's files.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(None, "--params", help="params file (default: params.yaml at the project root)")
OUTPUT = {"quiet": False, "json": False}


@app.callback()
def options(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress and no summary; errors only"),
    as_json: bool = typer.Option(False, "--json", help="print each stage's result as JSON, not its summary"),
) -> None:
    OUTPUT.update(quiet=quiet, json=as_json)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("char_rnn")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # MLflow logs each database error with its traceback before raising it; the raised error is reported.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def fail(exc: BaseException) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@contextlib.contextmanager
def told() -> Iterator[None]:
    """The user's errors and the machine's faults (a full disk, a server away) as one line and exit 1;
    anything else is a bug and keeps its traceback."""
    try:
        yield
    except (PipelineError, FileNotFoundError) as exc:
        raise fail(exc) from None
    except Exception as exc:
        if (known := environment_fault(exc)) is None:
            raise
        raise fail(known) from None


def report(name: str, result: dict[str, Any]) -> None:
    if OUTPUT["json"]:
        typer.echo(json.dumps(result, ensure_ascii=False, indent=1, default=str))
    elif not OUTPUT["quiet"] and "summary" in result:
        typer.echo(f"{name}: {result['summary']}")


def _run(stage: Stage, params_path: Path | None) -> None:
    layout = Layout.discover()
    with told():
        params = load_params(params_path or layout.params)
        with project_lock(layout.lock, f"char-rnn {stage.name}"):
            if stage.tensorflow(params):
                import_tensorflow()
            report(stage.name, stage.run(params, layout))


def _stage_command(stage: Stage) -> None:
    def command(params: Path | None = ParamsOption) -> None:
        _run(stage, params)

    command.__doc__ = stage.help
    app.command(stage.name)(command)


for _stage in STAGES:
    _stage_command(_stage)


@app.command("run")
def run_all(params: Path | None = ParamsOption) -> None:
    """Run every stage in this process, without DVC (use `dvc repro` to get caching and dvc.lock)."""
    layout = Layout.discover()
    with told():
        loaded = load_params(params or layout.params)
        with project_lock(layout.lock, "char-rnn run"):
            if any(stage.tensorflow(loaded) for stage in STAGES):
                import_tensorflow()
            run_all_stages(loaded, layout, done=report)


@app.command("check-params")
def check_params(params: Path | None = ParamsOption) -> None:
    """Validate a params file and print it with dotted keys; exits 1 naming every bad key."""
    layout = Layout.discover()
    try:
        flat = load_params(params or layout.params).flat()
    except PipelineError as exc:
        raise fail(exc) from None
    typer.echo(json.dumps(flat, ensure_ascii=False, indent=1))


@app.command("ui")
def ui(port: int = typer.Option(5000, help="port on 127.0.0.1")) -> None:
    """Open the MLflow UI on 127.0.0.1 over the pipeline's store (one worker: starts in ~15 s, not ~60 s).

    Prints the link to the pipeline's runs in the model-training view (MLflow 3.17 opens in its GenAI view
    otherwise). Ctrl-C or SIGTERM stops the server and every process it started.
    """
    from char_rnn.tracking import artifact_root, connect, experiment_url, tracking_uri

    layout = Layout.discover()
    experiment_id = connect(layout.mlruns)  # the store and the experiment exist before the server reads them
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", tracking_uri(layout.mlruns), "--default-artifact-root", artifact_root(layout.mlruns),
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, start_new_session=True)  # its own group: stopped as one
    stop = lambda *_: _stop_group(server)  # noqa: E731
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    link = experiment_url(experiment_id, f"http://127.0.0.1:{port}")
    typer.echo(f"MLflow UI: {link}  (ready in about 15 s; Ctrl-C stops it)")
    raise typer.Exit(server.wait())


def _stop_group(server: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to whatever is left after a grace period."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):  # workers the server started outlive it briefly: they go too
        os.killpg(server.pid, signal.SIGKILL)


@app.command("promote")
def promote(
    uri: str = typer.Argument(..., help="the version to serve: models:/<name>/<version>"),
    reason: str = typer.Option(..., "--reason", help="why, recorded on the version with who decided"),
    by: str | None = typer.Option(None, help="who decides (default: the login name)"),
) -> None:
    """Make a version the champion by hand; the champion it replaces becomes @previous-champion."""
    from char_rnn import registry

    _registry_command(lambda: registry.promote(uri, reason, by or getpass.getuser()))


@app.command("rollback")
def rollback(
    model: str | None = typer.Option(None, help="registered model (default: the project's, char-rnn-<corpus>)"),
    by: str | None = typer.Option(None, help="who decides (default: the login name)"),
    params: Path | None = ParamsOption,
) -> None:
    """Make @previous-champion the champion again (and the champion it replaces the previous one)."""
    from char_rnn import registry

    layout = Layout.discover()
    name = model or load_params(params or layout.params).registry.model_name
    _registry_command(lambda: registry.rollback(name, by or getpass.getuser()))


def _registry_command(act: Callable[[], dict[str, Any]]) -> None:
    from char_rnn.tracking import connect

    connect(Layout.discover().mlruns)
    try:
        result = act()
    except PipelineError as exc:
        raise fail(exc) from None
    replaced = f"; version {result['previous_champion']} is @previous-champion" if result["previous_champion"] else ""
    result["summary"] = f"version {result['champion']} of {result['model_name']} is @champion{replaced}"
    report("registry", result)


@app.command("generate")
def generate(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="models:/<name>@<alias>, models:/<name>/<version> or a local .keras file"
        " (default: models:/<the project's registered model>@champion, char-rnn-<corpus> unless"
        " registry.model_name says otherwise)",
    ),
    prompt: str = typer.Option(
        ...,
        "--prompt",
        "-p",
        help="text to continue; with closed units, characters outside the vocabulary are dropped with a warning",
    ),
    length: int = typer.Option(100, help="characters to generate per sample"),
    temperature: float = typer.Option(1.0, help="0 = greedy; below 1 sharper, above 1 more random"),
    top_k: int = typer.Option(0, "--top-k", help="sample among the k most likely characters (0 = all)"),
    seed: int | None = typer.Option(None, help="same seed, same text (default: fresh randomness)"),
    num_samples: int = typer.Option(1, "--num-samples", "-n", help="samples to write, one after another"),
    vocab: Path | None = typer.Option(None, help="vocabulary of a local .keras model (default: data/vocab.json)"),
    params: Path | None = ParamsOption,
) -> None:
    """Write text from a prompt with the registered champion (sha256-checked) or a local .keras model."""
    from char_rnn.generate import Sampling, load_generator

    layout = Layout.discover()
    try:
        sampling = Sampling(length, temperature, top_k, seed)
        if model is not None and not model.startswith("models:/"):
            generator = load_generator({"model": Path(model), "vocab": vocab or layout.vocab})
        else:
            from char_rnn.bundle import load_registered
            from char_rnn.tracking import tracking_uri

            if model is None:
                model = f"models:/{load_params(params or layout.params).registry.model_name}@champion"
            generator = load_registered(model, tracking_uri(layout.mlruns))
        result = generator.generate(prompt, sampling, num_samples)
        typer.echo(f"generated by {generator.source}", err=True)
    except (PipelineError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if result.dropped:
        typer.secho(
            f"warning: prompt characters not in the vocabulary were dropped: {result.dropped!r}",
            fg=typer.colors.YELLOW,
            err=True,
        )
    for text in result.texts:
        typer.echo(result.prompt + text)
