"""`char-rnn`: the command line, a thin driver over `char_rnn.stages` (and what dvc.yaml calls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.params import Params, load_params
from char_rnn.stages import STAGES, Stage
from char_rnn.stages import run_all as run_all_stages

app = typer.Typer(
    help="Character-level RNN pipeline: each stage reads params.yaml and the previous stage's files.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(None, "--params", help="params file (default: params.yaml at the project root)")


def _run(stage: Callable[[Params, Layout], dict[str, Any]], params_path: Path | None) -> None:
    layout = Layout.discover()
    try:
        params = load_params(params_path or layout.params)
        result = stage(params, layout)
    except (PipelineError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, ensure_ascii=False, indent=1, default=str))


def _stage_command(stage: Stage) -> None:
    def command(params: Path | None = ParamsOption) -> None:
        _run(stage.run, params)

    command.__doc__ = stage.help
    app.command(stage.name)(command)


for _stage in STAGES:
    _stage_command(_stage)


@app.command("run")
def run_all(params: Path | None = ParamsOption) -> None:
    """Run every stage in this process, without DVC (use `dvc repro` to get caching and dvc.lock)."""
    _run(run_all_stages, params)


@app.command("check-params")
def check_params(params: Path | None = ParamsOption) -> None:
    """Validate a params file and print it with dotted keys; exits 1 naming every bad key."""
    _run(lambda p, _layout: p.flat(), params)


@app.command("ui")
def ui(port: int = typer.Option(5000, help="port on 127.0.0.1")) -> None:
    """Open the MLflow UI on 127.0.0.1 over the pipeline's store (one worker: starts in ~15 s, not ~60 s)."""
    from char_rnn.tracking import artifact_root, tracking_uri

    layout = Layout.discover()
    layout.mlruns.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        tracking_uri(layout.mlruns),
        "--default-artifact-root",
        artifact_root(layout.mlruns),
    ]
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}  (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(command, env=env))


@app.command("generate")
def generate(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="models:/<name>@<alias>, models:/<name>/<version> or a local .keras file"
        " (default: models:/<registry.model_name>@champion)",
    ),
    prompt: str = typer.Option(
        ..., "--prompt", "-p", help="text to continue; characters outside the vocabulary are dropped with a warning"
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
            import mlflow

            from char_rnn.serving import load_registered
            from char_rnn.tracking import tracking_uri

            mlflow.set_tracking_uri(tracking_uri(layout.mlruns))
            if model is None:
                model = f"models:/{load_params(params or layout.params).registry.model_name}@champion"
            generator = load_registered(model)
        result = generator.generate(prompt, sampling, num_samples)
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
