"""The pipeline's stages, each `stage(params, layout)`: files in, files out.

This is the one module the drivers call: the CLI (and so `dvc.yaml`) and the Prefect tasks in
`pipelines/`. Each stage reads the outputs of the one before it from the paths in `Layout`, so the
stages can run in separate processes and DVC can cache each one. Heavy imports stay inside.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from char_rnn.corpus import ingest as ingest_corpus
from char_rnn.corpus import read_corpus
from char_rnn.layout import Layout
from char_rnn.params import Metric, Params
from char_rnn.windows import load_text_ids, load_vocab, load_windows, make_windows


def ingest(params: Params, layout: Layout) -> dict[str, Any]:
    characters = ingest_corpus(params.corpus, layout.root, layout.corpus)
    return {"corpus": str(layout.corpus), "characters": characters}


def window(params: Params, layout: Layout) -> dict[str, Any]:
    text = read_corpus(layout.corpus)
    spec = make_windows(text, params.window, params.split, layout.vocab, layout.windows)
    return asdict(spec)


def validate(params: Params, layout: Layout) -> dict[str, Any]:
    from char_rnn.validation import validate as run_validation

    spec, train_ids, val_ids = load_windows(layout.windows)
    text, chars = read_corpus(layout.corpus), load_vocab(layout.vocab)
    report = run_validation(text, chars, spec, train_ids, val_ids, params.validation, layout.validation_report)
    return {"success": report["success"], "report": str(layout.validation_report)}


def baseline(params: Params, layout: Layout) -> dict[str, Any]:
    """The Kneser-Ney n-gram on the same characters the RNN is scored on: the number to beat.

    Its model file is what evaluate scores and what the hybrid mixes in.
    """
    from char_rnn.evaluate import fit_ngram, ngram_probabilities
    from char_rnn.ngram import bits_per_char, perplexity

    spec, _, _ = load_windows(layout.windows)
    ids = load_text_ids(layout.windows)
    ngram = fit_ngram(ids, spec, params.baseline.order)
    ngram.save(layout.ngram)
    probs = ngram_probabilities(ngram, ids, spec)
    result = {
        "ngram_order": params.baseline.order,
        "ngram_bits_per_char": bits_per_char(probs),
        "ngram_perplexity": perplexity(probs),
        "scored_chars": len(probs),
        "scored_on": "validation text" if spec.val_chars else "training text (no split: memorised, as in the blog)",
    }
    layout.baseline.parent.mkdir(parents=True, exist_ok=True)
    layout.baseline.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def train(params: Params, layout: Layout, tags: dict[str, str] | None = None) -> dict[str, Any]:
    from char_rnn.registry import file_md5, git_commit
    from char_rnn.tracking import save_run_link
    from char_rnn.train import train as run_training

    spec, _, _ = load_windows(layout.windows)
    lineage = {
        "git_commit": git_commit(layout.root),
        "corpus_md5": file_md5(layout.corpus),
        "params_sha256": params.digest(),
        **(tags or {}),
    }
    result = run_training(
        params,
        spec,
        load_text_ids(layout.windows),
        layout.mlruns,
        layout.model,
        layout.history,
        layout.hybrid,
        extra_artifacts=[layout.validation_report, layout.vocab],
        tags=lineage,
    )
    save_run_link(layout.train_run, result.run_id, result.model_uri)
    return {"run_id": result.run_id, "epochs": len(result.history["loss"]), "loss": result.history["loss"][-1]}


def evaluate(params: Params, layout: Layout) -> dict[str, Any]:
    import mlflow

    from char_rnn.evaluate import evaluate as run_evaluation
    from char_rnn.evaluate import plot_history, read_history, write_metrics
    from char_rnn.generate import load_generator
    from char_rnn.heldout import weights_of
    from char_rnn.ngram import KneserNey
    from char_rnn.tracking import finite_metrics, load_run_link, resumed_run

    spec, _, _ = load_windows(layout.windows)
    history = read_history(layout.history)
    generator = load_generator(bundle(params, layout))
    hybrid = json.loads(layout.hybrid.read_text(encoding="utf-8"))
    ngram = generator.mixture.ngram if generator.mixture else KneserNey.load(layout.ngram)  # read once
    weights = weights_of(hybrid, layout.hybrid)
    metrics, sample = run_evaluation(
        generator, ngram, weights, spec, load_text_ids(layout.windows), history, params, hybrid.get("dynamic")
    )
    write_metrics(metrics, layout.metrics)
    plot_history(history, layout.plot)
    layout.sample.write_text(f"{params.evaluate.prompt}{sample}\n", encoding="utf-8")
    with resumed_run(layout.mlruns, load_run_link(layout.train_run)["run_id"]):
        mlflow.log_metrics({f"eval_{k}": v for k, v in finite_metrics(metrics).items()})
        for artifact in (layout.metrics, layout.plot, layout.sample):
            mlflow.log_artifact(str(artifact), artifact_path="reports")
    return metrics


def register(params: Params, layout: Layout) -> dict[str, Any]:
    """Log the generator pyfunc (model.keras + vocab.json) into the train run and register it."""
    from char_rnn.registry import file_md5, git_commit
    from char_rnn.registry import register as register_version
    from char_rnn.tracking import connect, load_run_link

    link = load_run_link(layout.train_run)
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    connect(layout.mlruns)
    tags = {
        "git_commit": git_commit(layout.root),
        "corpus_md5": file_md5(layout.corpus),
        "model_md5": file_md5(layout.model),
        "params_sha256": params.digest(),
        "run_id": link["run_id"],
        "keras_model_uri": link["model_uri"],
    }
    registration = asdict(
        register_version(
            link["run_id"],
            bundle(params, layout),
            params.evaluate.prompt,
            params.registry.model_name,
            params.registry.metric,
            metrics,
            tags,
        )
    )
    layout.registration.parent.mkdir(parents=True, exist_ok=True)
    layout.registration.write_text(json.dumps(registration, indent=1) + "\n", encoding="utf-8")
    return registration


def bundle(params: Params, layout: Layout) -> dict[str, Path]:
    """What generates and is registered: the RNN, or with the hybrid as metric, the RNN + n-gram mixture."""
    files = {"model": layout.model, "vocab": layout.vocab}
    if params.registry.metric is Metric.hybrid_bits_per_char:
        files |= {"ngram": layout.ngram, "hybrid": layout.hybrid}
    return files


STAGES: dict[str, Callable[[Params, Layout], dict[str, Any]]] = {
    "ingest": ingest,
    "window": window,
    "validate": validate,
    "baseline": baseline,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}


def run_all(params: Params, layout: Layout) -> dict[str, dict[str, Any]]:
    """Every stage in order, in this process: what `dvc repro` does, without DVC's bookkeeping."""
    return {name: stage(params, layout) for name, stage in STAGES.items()}
