"""The pipeline's stages, each `stage(params, layout) -> summary`, and `STAGES`, the one list of them.

This is the one module the drivers call: the CLI (and so `dvc.yaml`) and the Prefect flows in
`pipelines/`. Every stage follows the same rule for side effects:

- **Files.** A stage reads its inputs from the paths in `Layout` and writes each of its outputs
  there itself, whole (`write_atomically`, `save_model`), in the format of the module that owns it
  (`dump_hybrid`, `history_csv`, ...). The concern modules compute and return values and never
  choose a path.
- **MLflow.** Only stages log, through `char_rnn.tracking`: train opens the pipeline's run (its id
  goes to `models/run.json`) and the later stages resume it; register calls `char_rnn.serving` to
  log the pyfunc and `char_rnn.registry` to register it.
- **Params.** A stage reads the sections it needs (`params.train`, `params.evaluate.context`) and
  hands concern modules those, never `params` whole, so that `dvc.yaml` can declare exactly what
  each stage reads (`tests/test_architecture.py` checks it). `params.flat()` and `params.digest()`
  are lineage, logged and tagged, not read to compute an output.

Heavy imports (TensorFlow, Great Expectations, MLflow) stay inside the stages that need them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from char_rnn.layout import Layout, write_atomically
from char_rnn.params import Metric, Params

if TYPE_CHECKING:
    from char_rnn.hybrid import Hybrid

Summary = dict[str, Any]


def check(params: Params, layout: Layout) -> Summary:
    """Check every param and the corpus source before any stage runs: a refused change removes nothing.

    DVC deletes a stage's outputs before its command runs, so a bad value found by that stage would
    cost its last good outputs; this stage runs first and writes only `reports/check.json`, which
    `dvc.yaml` keeps (persist) when it fails. The params were validated when they were loaded.
    """
    from char_rnn.corpus import load_corpus
    from char_rnn.windows import split_sizes

    text = load_corpus(params.corpus, layout.root)
    split_sizes(len(text), params.split, params.window.length)
    # What ingest depends on: it changes with the corpus, not with any other param.
    found = {"corpus.source": params.corpus.source, "characters": len(text)}
    _write_json(layout.check, found)
    return found


def ingest(params: Params, layout: Layout) -> Summary:
    """Read corpus.source strictly as UTF-8, normalise it (no BOM, LF, NFC), write data/corpus.txt."""
    from char_rnn.corpus import load_corpus

    text = load_corpus(params.corpus, layout.root)
    write_atomically(layout.corpus, text)
    return {"corpus": str(layout.corpus), "characters": len(text)}


def window(params: Params, layout: Layout) -> Summary:
    """Build the vocabulary and the integer-id train/tune/validation splits that windows are cut from."""
    from char_rnn.corpus import read_corpus
    from char_rnn.windows import cut_windows, save_windows

    windows = cut_windows(read_corpus(layout.corpus), params.window, params.split)
    save_windows(windows, layout.vocab, layout.windows)
    return asdict(windows.spec)


def validate(params: Params, layout: Layout) -> Summary:
    """Run the Great Expectations suites on the corpus and the windows; fail on any unmet expectation."""
    from char_rnn.corpus import read_corpus
    from char_rnn.validation import require_success
    from char_rnn.validation import validate as run_suites
    from char_rnn.windows import load_vocab, load_windows

    spec, train_ids, val_ids = load_windows(layout.windows)
    text, chars = read_corpus(layout.corpus), load_vocab(layout.vocab)
    report = run_suites(text, chars, spec, train_ids, val_ids, params.validation)
    _write_json(layout.validation_report, report)
    require_success(report)
    return {"success": report["success"], "report": str(layout.validation_report)}


def baseline(params: Params, layout: Layout) -> Summary:
    """Fit the Kneser-Ney character n-gram and score it on the text the RNN is scored on: the number to beat."""
    from char_rnn.heldout import scored_span
    from char_rnn.ngram import KneserNey, bits_per_char, perplexity
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids = load_spec(layout.windows), load_text_ids(layout.windows)
    ngram = KneserNey.fit(ids[: spec.val_start], spec.vocab_size, params.baseline.order)
    probs = ngram.char_probabilities(ids, *scored_span(spec))
    result = {
        "ngram_order": params.baseline.order,
        "ngram_bits_per_char": bits_per_char(probs),
        "ngram_perplexity": perplexity(probs),
        "scored_chars": len(probs),
        "scored_on": "validation text" if spec.val_chars else "training text (no split: memorised, as in the blog)",
    }
    write_atomically(layout.ngram, ngram.to_bytes())
    _write_json(layout.baseline, result)
    return result


def train(params: Params, layout: Layout, tags: dict[str, str] | None = None) -> Summary:
    """Fit the RNN(s) on the training text, seeded and deterministic; open the MLflow run, log every epoch."""
    import mlflow

    from char_rnn import tracking
    from char_rnn.lineage import file_md5, git_commit
    from char_rnn.model import save_model
    from char_rnn.training import fit_members, history_csv, record
    from char_rnn.windows import load_windows

    spec, train_ids, val_ids = load_windows(layout.windows)
    lineage = {
        "git_commit": git_commit(layout.root),
        "corpus_md5": file_md5(layout.corpus),
        "params_sha256": params.digest(),
        **(tags or {}),
    }
    with tracking.new_run(layout.mlruns, lineage) as run:
        mlflow.log_params({**params.flat(), **{f"data.{k}": v for k, v in asdict(spec).items()}})
        for artifact in (layout.validation_report, layout.vocab):
            mlflow.log_artifact(str(artifact), artifact_path="data")
        fitted = fit_members(
            params.model,
            params.train,
            spec,
            train_ids,
            val_ids,
            lambda i: [tracking.epoch_logger(f"member{i + 1}_" if i else "")],
        )
        save_model(fitted.model, layout.fit_model)
        write_atomically(layout.fit_history, history_csv(fitted.histories[0]))
        write_atomically(layout.fit_record, record(params.train, fitted).model_dump_json(indent=1) + "\n")
        mlflow.log_artifact(str(layout.fit_history), artifact_path="reports")
    write_atomically(layout.train_run, tracking.run_link(run.info.run_id))
    history = fitted.histories[0]
    return {"run_id": run.info.run_id, "epochs": len(history["loss"]), "loss": history["loss"][-1]}


def tune(params: Params, layout: Layout) -> Summary:
    """Fit the hybrid's weights and dynamic evaluation's rate on the tuning slice, with the first fit."""
    from char_rnn.hybrid import Hybrid, dump_hybrid
    from char_rnn.windows import load_spec

    spec = load_spec(layout.windows)
    hybrid = _tune_on_slice(params, layout) if spec.tune_chars else Hybrid(tune_chars=0)
    write_atomically(layout.hybrid, dump_hybrid(hybrid))
    return hybrid.model_dump(mode="json", exclude={"dynamic": {"tune_bits_per_char"}})


def _tune_on_slice(params: Params, layout: Layout) -> Hybrid:
    """The RNNs of the first fit have not read the tuning slice; nothing after it is read."""
    import mlflow

    from char_rnn import tracking
    from char_rnn.dynamic import tune_rate
    from char_rnn.hybrid import DynamicChoice, Hybrid, fit_hybrid_weights
    from char_rnn.model import load_model, members
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids = load_spec(layout.windows), load_text_ids(layout.windows)
    model, span, context = (
        load_model(str(layout.fit_model)),
        (spec.train_chars, spec.val_start),
        params.evaluate.context,
    )
    weights = fit_hybrid_weights(members(model), ids, span, params.baseline.order, context, params.tune.cache_window)
    dynamic = None
    if params.tune.dynamic_rates:
        segment, steps_context = params.tune.dynamic_segment, params.tune.dynamic_context
        rate, tried = tune_rate(model, ids, span, params.tune.dynamic_rates, segment, steps_context)
        dynamic = DynamicChoice(rate=rate, segment=segment, context=steps_context, tune_bits_per_char=tried)
    with tracking.resumed_run(layout.mlruns, tracking.pipeline_run(layout.mlruns, layout.train_run)):
        mlflow.log_metrics({**weights.metrics(), **({"dynamic_rate": dynamic.rate} if dynamic else {})})
    return Hybrid(
        tune_chars=spec.tune_chars, weights=weights, ngram_order=params.baseline.order, context=context, dynamic=dynamic
    )


def refit(params: Params, layout: Layout) -> Summary:
    """Train fresh RNNs on training + tuning text for the epochs the first fit kept (refit.enabled),
    else keep the first fit: either way models/model.keras is the model that is scored and registered."""
    if not params.refit.enabled:
        write_atomically(layout.model, layout.fit_model.read_bytes())
        write_atomically(layout.history, layout.fit_history.read_bytes())
        return {"refit": False, "model": str(layout.model)}
    from char_rnn import tracking
    from char_rnn.model import save_model
    from char_rnn.training import FitRecord, fit_members, history_csv
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids = load_spec(layout.windows), load_text_ids(layout.windows)
    kept = [member.kept_epochs for member in FitRecord.model_validate_json(layout.fit_record.read_text()).members]
    with tracking.resumed_run(layout.mlruns, tracking.pipeline_run(layout.mlruns, layout.train_run)):
        fitted = fit_members(
            params.model,
            params.train,
            spec,
            ids[: spec.val_start],
            ids[spec.val_start :],
            lambda i: [tracking.epoch_logger((f"member{i + 1}_" if i else "") + "refit_")],
            kept,
        )
    save_model(fitted.model, layout.model)
    write_atomically(layout.history, history_csv(fitted.histories[0]))
    return {"refit": True, "epochs": kept, "model": str(layout.model)}


def evaluate(params: Params, layout: Layout) -> Summary:
    """Score the model next to the n-gram and the hybrid, plot its epochs, write a sample; log all to the run."""
    import mlflow
    import mlflow.keras

    from char_rnn import tracking
    from char_rnn.evaluation import evaluate as score_all
    from char_rnn.evaluation import plot_history
    from char_rnn.generate import load_generator, sample
    from char_rnn.hybrid import load_hybrid
    from char_rnn.lineage import keras_signature, pip_requirements
    from char_rnn.ngram import KneserNey
    from char_rnn.training import read_history
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids, history = load_spec(layout.windows), load_text_ids(layout.windows), read_history(layout.history)
    generator = load_generator(bundle(params, layout))
    ngram = generator.mixture.ngram if generator.mixture else KneserNey.load(layout.ngram)  # read once
    metrics = score_all(
        generator.model,
        ngram,
        load_hybrid(layout.hybrid),
        spec,
        ids,
        history,
        params.evaluate.context,
        params.train.batch_size,
    )
    prompt, length = params.evaluate.prompt, params.evaluate.sample_length
    text = sample(generator, prompt, length, params.evaluate.temperature, params.train.seed).texts[0]
    _write_json(layout.metrics, metrics)
    write_atomically(layout.plot, plot_history(history))
    write_atomically(layout.sample, f"{prompt}{text}\n")
    with tracking.resumed_run(layout.mlruns, tracking.pipeline_run(layout.mlruns, layout.train_run)):
        mlflow.log_metrics({f"eval_{k}": v for k, v in tracking.finite_metrics(metrics).items()})
        for artifact in (layout.metrics, layout.plot, layout.sample, layout.history, layout.hybrid):
            mlflow.log_artifact(str(artifact), artifact_path="reports")
        mlflow.keras.log_model(
            generator.model,
            name="model",
            signature=keras_signature(spec.vocab_size),
            pip_requirements=pip_requirements(),
        )
    return metrics


def register(params: Params, layout: Layout) -> Summary:
    """Register the model in MLflow and set alias champion (if it beats the champion) or challenger."""
    from char_rnn import tracking
    from char_rnn.lineage import file_md5, git_commit
    from char_rnn.serving import register_generator

    run_id = tracking.pipeline_run(layout.mlruns, layout.train_run)
    tags = {
        "git_commit": git_commit(layout.root),
        "corpus_md5": file_md5(layout.corpus),
        "model_md5": file_md5(layout.model),
        "params_sha256": params.digest(),
        "run_id": run_id,
        "keras_model_uri": tracking.logged_model_uri(run_id, "model") or "none",
    }
    metrics = json.loads(layout.metrics.read_text(encoding="utf-8"))
    registration = register_generator(
        run_id,
        bundle(params, layout),
        params.evaluate.prompt,
        params.registry.model_name,
        params.registry.metric,
        metrics,
        tags,
    )
    _write_json(layout.registration, asdict(registration))
    return asdict(registration)


def bundle(params: Params, layout: Layout) -> dict[str, Path]:
    """What generates and is registered: the RNN, or with the hybrid as metric, the RNN + n-gram mixture."""
    files = {"model": layout.model, "vocab": layout.vocab}
    if params.registry.metric is Metric.hybrid_bits_per_char:
        files |= {"ngram": layout.ngram, "hybrid": layout.hybrid}
    return files


def _write_json(path: Path, content: Any) -> None:
    write_atomically(path, json.dumps(content, indent=1, ensure_ascii=False, default=str) + "\n")


@dataclass(frozen=True)
class Stage:
    """A stage as the drivers see it: its name (the CLI command, the dvc.yaml stage, the Prefect task)."""

    name: str
    run: Callable[..., Summary]
    needs_tensorflow: bool  # the Prefect flow runs these in its model worker, a process it can stop

    @property
    def help(self) -> str:
        return " ".join((self.run.__doc__ or "").split("\n\n")[0].split())


STAGES: tuple[Stage, ...] = (
    Stage("check", check, needs_tensorflow=False),
    Stage("ingest", ingest, needs_tensorflow=False),
    Stage("window", window, needs_tensorflow=False),
    Stage("validate", validate, needs_tensorflow=False),
    Stage("baseline", baseline, needs_tensorflow=False),
    Stage("train", train, needs_tensorflow=True),
    Stage("tune", tune, needs_tensorflow=True),
    Stage("refit", refit, needs_tensorflow=True),
    Stage("evaluate", evaluate, needs_tensorflow=True),
    Stage("register", register, needs_tensorflow=True),
)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def run_all(params: Params, layout: Layout) -> dict[str, Summary]:
    """Every stage in order, in this process: what `dvc repro` does, without DVC's bookkeeping."""
    return {s.name: s.run(params, layout) for s in STAGES}
