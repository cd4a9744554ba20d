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
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from char_rnn.layout import Layout, write_atomically
from char_rnn.params import Metric, Params

if TYPE_CHECKING:
    from char_rnn.hybrid import Hybrid

Summary = dict[str, Any]
RUN_TAGS = "CHAR_RNN_RUN_TAGS"  # a JSON object in the environment: tags for the MLflow run that train opens


def check(params: Params, layout: Layout) -> Summary:
    """Check every param and the corpus source before any stage runs: a refused change removes nothing.

    DVC deletes a stage's outputs before its command runs, so a bad value found by that stage would
    cost its last good outputs; this stage runs first and writes only `reports/check.json`, which
    `dvc.yaml` keeps (persist) when it fails. The params were validated when they were loaded.
    """
    from char_rnn.corpus import load_corpus
    from char_rnn.windows import spellable, split_sizes

    text = load_corpus(params.corpus, layout.root)
    spellable(text, split_sizes(len(text), params.split, params.window.length)[0], params.vocab)
    # What ingest depends on: it changes with the corpus, not with any other param.
    found = {"corpus.source": params.corpus.source, "characters": len(text)}
    _write_json(layout.check, found)
    return {**found, "summary": f"params.yaml and corpus {params.corpus.source!r} ({len(text):,} characters) are fine"}


def ingest(params: Params, layout: Layout) -> Summary:
    """Read corpus.source strictly as UTF-8, normalise it (no BOM, LF, NFC), write data/corpus.txt and
    its documents' manifest."""
    from char_rnn.corpus import joined, load_documents, manifest

    documents = load_documents(params.corpus, layout.root)
    text = joined(documents)
    write_atomically(layout.corpus, text)
    _write_json(layout.documents, manifest(documents))
    summary = (
        f"{len(text):,} characters of {params.corpus.source!r} ({len(documents)} document"
        f"{'s' if len(documents) != 1 else ''}) in {layout.corpus.relative_to(layout.root)}"
    )
    return {"corpus": str(layout.corpus), "characters": len(text), "documents": len(documents), "summary": summary}


def window(params: Params, layout: Layout) -> Summary:
    """Build the units from the training text and the integer-id train/tune/validation/test splits."""
    from char_rnn.corpus import read_corpus
    from char_rnn.windows import cut_windows, save_windows

    windows = cut_windows(read_corpus(layout.corpus), params.window, params.split, params.vocab)
    save_windows(windows, layout.vocab, layout.windows)
    spec = windows.spec
    summary = (
        f"{spec.vocab_size} {spec.units} units from the training text; {spec.train_windows:,} training windows of"
        f" {spec.length}; tuning {spec.tune_chars:,}, validation {spec.val_chars:,} and test {spec.test_chars:,}"
        " characters"
    )
    return {**asdict(spec), "summary": summary}


def validate(params: Params, layout: Layout) -> Summary:
    """Run the Great Expectations suites on the corpus and the windows; fail on any unmet expectation."""
    from char_rnn.corpus import read_corpus
    from char_rnn.units import load_units
    from char_rnn.validation import require_success
    from char_rnn.validation import validate as run_suites
    from char_rnn.windows import load_spec

    spec, text, units = load_spec(layout.windows), read_corpus(layout.corpus), load_units(layout.vocab)
    report = run_suites(text, units, spec, layout.windows, params.validation)
    _write_json(layout.validation_report, report)
    require_success(report)
    passed = sum(len(suite["expectations"]) for suite in report["suites"])
    summary = f"all {passed} expectations passed (report: {layout.validation_report.relative_to(layout.root)})"
    return {"success": report["success"], "report": str(layout.validation_report), "summary": summary}


def drift(params: Params, layout: Layout) -> Summary:
    """Check the new documents against the text the champion trained on (Great Expectations) and keep
    the training profile this run's model will be logged with; fail, naming the documents, on drift."""
    from char_rnn import registry, tracking
    from char_rnn.corpus import read_corpus
    from char_rnn.drift import DriftFailed, check_drift, failures, same_corpus, training_profile
    from char_rnn.windows import load_spec

    text, documents = read_corpus(layout.corpus), json.loads(layout.documents.read_text(encoding="utf-8"))
    tracking.connect(layout.mlruns)
    version, reference = registry.champion_profile(params.registry.model_name)
    another = reference is not None and not same_corpus(reference, params.corpus.source, documents)
    other, reference = (reference["source"], None) if another else (None, reference)  # not text that arrived
    report = {"champion": version, "another_corpus": other, **check_drift(text, documents, reference, params.drift)}
    report["summary"] = _drift_summary(report, params.registry.model_name)
    _write_json(layout.drift_report, report)
    if not report["success"]:
        raise DriftFailed("drift: the new text is not like the champion's:\n  " + "\n  ".join(failures(report)))
    train_chars = load_spec(layout.windows).train_chars
    _write_json(layout.profile, training_profile(params.corpus.source, text, documents, train_chars))
    return report


def _drift_summary(report: dict[str, Any], model_name: str) -> str:
    new, champion = report["new"], report["champion"]
    said = [f"{len(new)} new document{'s' if len(new) != 1 else ''}"]
    if report["changed"] or report["removed"]:
        said.append(f"earlier text changed: {', '.join(report['changed'] + report['removed'])}")
    if champion is None:
        said.append(f"no champion of {model_name} to compare with: only empty and duplicate documents checked")
    elif report["another_corpus"]:
        said.append(f"{model_name} version {champion} learnt {report['another_corpus']}, not this corpus: not compared")
    elif report["reference_shares"] is None:
        said.append(f"{model_name} version {champion} kept no training profile: not compared")
    elif new:
        said.append(f"like the text {model_name} version {champion} trained on")
    return "; ".join(said)


def baseline(params: Params, layout: Layout) -> Summary:
    """Fit the Kneser-Ney n-gram on the text before the validation text and score it on the text the RNN
    is scored on (test, then validation): the number to beat."""
    from char_rnn.heldout import SPLIT_NAMES, by_figure, scored_span
    from char_rnn.ngram import KneserNey, bits_per_char
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids = load_spec(layout.windows), load_text_ids(layout.windows)
    ngram = KneserNey.fit(ids[: spec.val_start], spec.vocab_size, params.baseline.order)
    texts = {}
    for split in spec.held_out or ("train",):
        span = scored_span(spec, split)
        probs = ngram.char_probabilities(ids, span.start, span.end)
        texts[SPLIT_NAMES[split]] = {"ngram_bits_per_char": bits_per_char(probs, span.chars), "chars": span.chars}
    result = {"ngram_order": params.baseline.order, **texts}
    write_atomically(layout.ngram, ngram.to_bytes())
    _write_json(layout.baseline, by_figure(result))
    summary = f"{params.baseline.order}-gram: " + "; ".join(
        f"{figures['ngram_bits_per_char']:.4f} bits/char on the {figures['chars']:,} characters of the {name} text"
        for name, figures in texts.items()
    )
    return {**result, "summary": summary}


def train(params: Params, layout: Layout) -> Summary:
    """Fit the RNN(s) on the training text, seeded and deterministic; open the MLflow run, log every epoch."""
    import mlflow

    from char_rnn import notes, progress, tracking
    from char_rnn.lineage import file_md5, git_commit
    from char_rnn.model import save_model
    from char_rnn.training import fit_members, history_csv, record
    from char_rnn.validation import counts
    from char_rnn.windows import load_windows

    spec, train_ids, val_ids = load_windows(layout.windows)
    commit, model = git_commit(layout.root), params.model
    lineage = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "corpus_md5": file_md5(layout.corpus),
        "corpus": params.corpus.source,
        "params_sha256": params.digest(),
        **tracking.dvc_experiment(),
        **json.loads(os.environ.get(RUN_TAGS, "{}")),  # a driver's, through `dvc repro` (the Prefect flow's)
    }
    lineage[tracking.WARM_START], start = _warm_start(params, layout)
    name = tracking.run_name(
        params.corpus.source, model.cell.value, model.units, model.layers, model.ensemble, params.train.epochs, commit
    )
    if "prefect.flow_run_name" in lineage:
        name += f" · {lineage['prefect.flow_run_name']}"
    passed, failed = counts(json.loads(layout.validation_report.read_text(encoding="utf-8")))
    checkpoints = _checkpoints(layout, "train", params.model, params.train)
    with _training_run(layout, checkpoints, name, lineage) as run:
        if "run_id" not in checkpoints.meta:  # a fresh run, not one resumed after a kill
            checkpoints.remember(run_id=run.info.run_id)
            logged = {key: value for key, value in params.flat().items() if not key.startswith("sweep.")}
            mlflow.log_params({**logged, **{f"data.{k}": v for k, v in asdict(spec).items()}})
            mlflow.log_metrics({"validation/passed": passed, "validation/failed": failed})
            for artifact in (layout.validation_report, layout.drift_report, layout.vocab, layout.profile):
                mlflow.log_artifact(str(artifact), artifact_path="data")
            _log_datasets(params.corpus.source, layout, lineage["corpus_md5"], spec)
            drift = json.loads(layout.drift_report.read_text(encoding="utf-8"))
            _log_drift(params.corpus.source, layout, drift)
            data_note = notes.data(params.corpus.source, spec, lineage["corpus_md5"], passed, failed, drift["summary"])
            tracking.set_note_section(run.info.run_id, "Data", data_note)

        def callbacks(i: int) -> list[Any]:
            label = progress.member_label("", i, model.ensemble)
            return [tracking.epoch_logger("train", i), progress.epoch_progress(label, params.train.epochs)]

        fitted = fit_members(model, params.train, spec, train_ids, val_ids, callbacks, None, checkpoints, start)
        fit_record = record(params.train, fitted, lineage[tracking.WARM_START])
        save_model(fitted.model, layout.fit_model)
        write_atomically(layout.fit_history, history_csv(fitted.histories[0]))
        write_atomically(layout.fit_record, fit_record.model_dump_json(indent=1) + "\n")
        mlflow.log_artifact(str(layout.fit_history), artifact_path="reports")
        tracking.set_note_section(run.info.run_id, "Model", notes.model(model, params.train, fit_record))
    write_atomically(layout.train_run, tracking.run_link(run.info.run_id))
    checkpoints.clear()
    history, url = fitted.histories[0], tracking.run_url(run.info.run_id)
    began = "" if start is None else f" from {lineage[tracking.WARM_START]}"
    summary = (
        f"{len(history['loss'])} epochs{began}, loss {history['loss'][-1]:.4f}, accuracy"
        f" {history['accuracy'][-1]:.3f}; MLflow run {name!r}: {url}"
    )
    return {
        "warm_start": lineage[tracking.WARM_START],
        "run_id": run.info.run_id,
        "run_url": url,
        "run_name": name,
        "loss": history["loss"][-1],
        "epochs": [member.epochs for member in fit_record.members],
        "summary": summary,
    }


def _checkpoints(layout: Layout, stage: str, *shaping: Any) -> Any:
    """The stage's checkpoints (`char_rnn.checkpoint`), kept only for the same params and data.

    A checkpoint of another training (params or data changed after a kill) is discarded, and the
    MLflow run it was logging into is ended FAILED, saying so: no run is left RUNNING.
    """
    from char_rnn import progress, tracking
    from char_rnn.checkpoint import Checkpoints, fingerprint
    from char_rnn.lineage import file_md5

    data = {path.name: file_md5(path) for path in sorted(layout.windows.iterdir())}
    folder = layout.checkpoints / stage
    checkpoints, discarded = Checkpoints.open(folder, fingerprint(stage, *shaping, data))
    if discarded is not None:
        progress.log.info("%s: discarded the checkpoint of a killed run: params or data changed since", stage)
        if "run_id" in discarded:
            tracking.abandon(layout.mlruns, discarded["run_id"], "killed; its rerun had other params or data")
    return checkpoints


@contextmanager
def _training_run(layout: Layout, checkpoints: Any, name: str, lineage: dict[str, str]) -> Iterator[Any]:
    """The train stage's MLflow run: a new one, or after a kill the killed one, which goes on."""
    import mlflow

    from char_rnn import progress, tracking

    run_id = checkpoints.meta.get("run_id")
    if run_id is not None and tracking.run_exists(layout.mlruns, run_id):
        where = checkpoints.resume_point()
        progress.log.info("train: resuming the killed run %s at %s (%s)", run_id, where, checkpoints.folder)
        with tracking.resumed_run(layout.mlruns, run_id) as run:
            mlflow.set_tag(tracking.RESUMED, where)
            yield run
        return
    if run_id is not None:
        checkpoints.forget("run_id")
    with tracking.new_run(layout.mlruns, name, lineage) as run:
        yield run


def _log_datasets(corpus: str, layout: Layout, corpus_md5: str, spec: Any) -> None:
    """The corpus and its splits as the run's dataset inputs, each with the md5 DVC records for it."""
    from char_rnn import tracking
    from char_rnn.lineage import file_md5

    tracking.log_dataset(corpus, layout.corpus, corpus_md5, "corpus")
    for split, chars, context in (
        ("train", spec.train_chars, "train"),
        ("tune", spec.tune_chars, "tune"),
        ("val", spec.val_chars, "validation"),
        ("test", spec.test_chars, "test"),
    ):
        if chars:
            path = layout.windows / f"{split}.npy"
            tracking.log_dataset(f"{corpus}/{context}", path, file_md5(path), context)


def _warm_start(params: Params, layout: Layout, pinned: str | None = None) -> tuple[str, Any]:
    """(what the weights start from, as the run's tag says it; the initialiser that sets them, or None).
    `pinned`: the version train started from, which the refit starts from too."""
    from char_rnn import tracking, warm_start
    from char_rnn.params import Init
    from char_rnn.units import load_units

    if params.train.init is Init.scratch or (pinned is not None and not pinned.startswith("models:/")):
        return "scratch", None
    tracking.connect(layout.mlruns)
    uri = pinned or warm_start.champion_uri(params.registry.model_name)
    if uri is None:
        return f"scratch: {params.registry.model_name} has no champion yet", None
    units = load_units(layout.vocab)
    start = warm_start.load_start(uri, tracking.tracking_uri(layout.mlruns), params.model, units)
    return uri, warm_start.initialiser(start, units, params.model)


def _log_drift(corpus: str, layout: Layout, drift: dict[str, Any]) -> None:
    """The drift check's figures as metrics, and a folder's new documents as dataset inputs (at most 20)."""
    import mlflow

    from char_rnn import tracking
    from char_rnn.drift import figures

    mlflow.log_metrics({f"drift/{key}": value for key, value in figures(drift).items()})
    folder = layout.root / corpus
    if folder.is_dir():
        digests = {row["name"]: row["sha256"] for row in json.loads(layout.documents.read_text(encoding="utf-8"))}
        for name in drift["new"][-20:]:  # the newest; the Datasets column is for reading, not for a thousand rows
            tracking.log_dataset(f"{corpus}/{name}", folder / name, digests[name][:32], "new document")


def tune(params: Params, layout: Layout) -> Summary:
    """Fit the hybrid's weights and dynamic evaluation's rate on the tuning slice, with the first fit
    (after a warm start, the champion's rate against static scoring: `_rates_to_try`)."""
    from char_rnn.hybrid import Hybrid, dump_hybrid
    from char_rnn.windows import load_spec

    spec = load_spec(layout.windows)
    hybrid = _tune_on_slice(params, layout) if spec.tune_units else Hybrid()
    write_atomically(layout.hybrid, dump_hybrid(hybrid))
    summary = "no tuning slice: nothing to fit"
    if hybrid.weights is not None:
        weights = hybrid.weights
        summary = f"hybrid weights RNN {weights.rnn:.3f}, n-gram {weights.ngram:.3f}, cache {weights.cache:.3f}"
        summary += f", share {weights.share}" if weights.share < 1 else ""
        summary += f"; the match model over the last {weights.match_min} units" if weights.match_min else ""
        if hybrid.dynamic:
            tried = ", ".join(hybrid.dynamic.tune_bits_per_char)
            summary += f"; dynamic evaluation's rate {hybrid.dynamic.rate} (of {tried})"
    return {**hybrid.model_dump(mode="json", exclude={"dynamic": {"tune_bits_per_char"}}), "summary": summary}


def _tune_on_slice(params: Params, layout: Layout) -> Hybrid:
    """The RNNs of the first fit have not read the tuning slice; nothing after it is read. What is
    chosen here reaches the run with evaluate's figures (hybrid/*, dynamic/*)."""
    from char_rnn.dynamic import tune_rate
    from char_rnn.hybrid import DynamicChoice, Hybrid, fit_hybrid_weights
    from char_rnn.model import load_model, members
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids = load_spec(layout.windows), load_text_ids(layout.windows)
    model, span, context = (
        load_model(str(layout.fit_model)),
        (spec.train_units, spec.val_start),
        params.evaluate.context,
    )
    tune_params = params.tune
    weights = fit_hybrid_weights(
        members(model),
        ids,
        span,
        params.baseline.order,
        context,
        tune_params.cache_window,
        tune_params.mixture_shares,
        tune_params.match_min,
    )
    dynamic = None
    if params.tune.dynamic_rates:
        segment, steps_context = params.tune.dynamic_segment, params.tune.dynamic_context
        rates = _rates_to_try(params, layout)
        rate, tried = tune_rate(model, ids, span, rates, segment, steps_context, spec.tune_chars)
        dynamic = DynamicChoice(rate=rate, segment=segment, context=steps_context, tune_bits_per_char=tried)
    return Hybrid(weights=weights, ngram_order=params.baseline.order, dynamic=dynamic)


def _rates_to_try(params: Params, layout: Layout) -> list[float]:
    """tune.dynamic_rates, or after a warm start the one its champion chose (tune.warm_rates: champion),
    when that champion chose it for the same segment and context: each rate is a pass over the slice."""
    from char_rnn import tracking
    from char_rnn.params import WarmRates
    from char_rnn.training import FitRecord
    from char_rnn.warm_start import champion_rate

    started = FitRecord.model_validate_json(layout.fit_record.read_text()).warm_start
    grid, tune_params = params.tune.dynamic_rates, params.tune
    if tune_params.warm_rates is WarmRates.grid or not started.startswith("models:/"):
        return grid
    tracking.connect(layout.mlruns)
    chosen = champion_rate(started, tune_params.dynamic_segment, tune_params.dynamic_context)
    return grid if chosen is None else [chosen] if chosen > 0 else []


def refit(params: Params, layout: Layout) -> Summary:
    """Train RNNs afresh (or from the champion, as train began) on training + tuning text for the epochs
    the first fit kept (refit.enabled), else keep the first fit: either way models/model.keras is the
    model that is scored and registered."""
    if not params.refit.enabled:
        write_atomically(layout.model, layout.fit_model.read_bytes())
        write_atomically(layout.history, layout.fit_history.read_bytes())
        return {"refit": False, "model": str(layout.model), "summary": "off: the first fit is the model"}
    from char_rnn import notes, progress, tracking
    from char_rnn.model import save_model
    from char_rnn.training import FitRecord, fit_members, history_csv
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids = load_spec(layout.windows), load_text_ids(layout.windows)
    first = FitRecord.model_validate_json(layout.fit_record.read_text())
    kept = [member.kept_epochs for member in first.members]
    run_id = tracking.pipeline_run(layout.mlruns, layout.train_run)
    checkpoints = _checkpoints(layout, "refit", params.model, params.train, kept)

    def callbacks(i: int) -> list[Any]:
        label = progress.member_label("refit", i, params.model.ensemble)
        return [tracking.epoch_logger("refit", i), progress.epoch_progress(label, kept[i])]

    val = ids[spec.val_start : spec.start("test")]  # watched, never the test text
    with tracking.resumed_run(layout.mlruns, run_id):
        data = (params.model, params.train, spec, ids[: spec.val_start], val)
        start = _warm_start(params, layout, pinned=first.warm_start)[1]  # the version train started from
        fitted = fit_members(*data, callbacks, kept, checkpoints, start)
        tracking.set_note_section(run_id, "Refit", notes.refit(kept, spec))
    save_model(fitted.model, layout.model)
    write_atomically(layout.history, history_csv(fitted.histories[0]))
    checkpoints.clear()
    summary = f"retrained on training + tuning text for {', '.join(map(str, kept))} epochs"
    return {"refit": True, "epochs": kept, "model": str(layout.model), "summary": summary}


def evaluate(params: Params, layout: Layout) -> Summary:
    """Score the model next to the n-gram and the hybrid, plot its epochs, write a sample; log all to the run."""
    from char_rnn.evaluation import evaluate as score_all
    from char_rnn.evaluation import for_the_record, plot_history
    from char_rnn.generate import load_generator, sample
    from char_rnn.heldout import by_figure
    from char_rnn.hybrid import load_hybrid
    from char_rnn.ngram import KneserNey
    from char_rnn.training import read_history
    from char_rnn.windows import load_spec, load_text_ids

    spec, ids, history = load_spec(layout.windows), load_text_ids(layout.windows), read_history(layout.history)
    generator, hybrid = load_generator(bundle(params, layout)), load_hybrid(layout.hybrid)
    ngram = generator.mixture.ngram if generator.mixture else KneserNey.load(layout.ngram)  # read once
    trainable = _keras_model(layout) if hybrid.dynamic is not None and spec.held_out else None
    metrics = score_all(generator.model, ngram, hybrid, spec, ids, history, params.evaluate.context,
                        params.train.batch_size, trainable)  # fmt: skip
    written = sample(
        generator, params.evaluate.prompt, params.evaluate.sample_length, params.evaluate.temperature, params.train.seed
    )
    dropped = f"(not in the vocabulary, dropped from the prompt: {written.dropped!r})\n" if written.dropped else ""
    _write_json(layout.metrics, by_figure(for_the_record(metrics)))
    write_atomically(layout.plot, plot_history(history, refit=params.refit.enabled))
    write_atomically(layout.sample, f"{written.prompt}{written.texts[0]}\n{dropped}")
    _log_evaluation(layout, spec, metrics, written.prompt + written.texts[0])
    return {**metrics, "summary": _evaluation_line(metrics)}


def _keras_model(layout: Layout) -> Any:
    """The model as Keras holds it, for what NumPy cannot do: dynamic evaluation's gradient steps."""
    from char_rnn.model import load_model

    return load_model(str(layout.model))


def _evaluation_line(metrics: dict[str, Any]) -> str:
    from char_rnn.notes import change

    if not any(name in metrics for name in ("test", "validation")):
        return f"accuracy {metrics['accuracy']:.4f}, {metrics['bits_per_char']:.4f} bits/char on the memorised text"
    lines = []
    for name in ("test", "validation"):
        if name in metrics:
            figures = metrics[name]
            line = (
                f"{name}: {figures['bits_per_char']:.4f} bits/char vs the n-gram's"
                f" {figures['ngram_bits_per_char']:.4f} ({change(figures['rnn_vs_ngram'])})"
            )
            if "hybrid_bits_per_char" in figures:
                line += f", hybrid {figures['hybrid_bits_per_char']:.4f} ({change(figures['hybrid_vs_ngram'])})"
            lines.append(line)
    return "; ".join(lines)


def _log_evaluation(layout: Layout, spec: Any, metrics: dict[str, Any], text: str) -> None:
    """The figures under their run names (at the last epoch's step) and the reports."""
    import mlflow

    from char_rnn import notes, tracking

    run_id = tracking.pipeline_run(layout.mlruns, layout.train_run)
    with tracking.resumed_run(layout.mlruns, run_id):
        mlflow.log_metrics(tracking.evaluation_metrics(metrics), step=metrics["epochs"])
        for artifact in (layout.metrics, layout.plot, layout.sample, layout.history, layout.hybrid):
            mlflow.log_artifact(str(artifact), artifact_path="reports")
        tracking.set_note_section(run_id, "Evaluation", notes.evaluation(metrics, spec, text))


def register(params: Params, layout: Layout) -> Summary:
    """Register the model in MLflow: champion if it beats the champion re-scored on this run's test text,
    else challenger; files already registered are reported as their version. One registration of the model
    at a time (`char_rnn.registry_lock`), so two runs that finish together end with the better one champion."""
    from char_rnn import progress, registry, tracking
    from char_rnn.bundle import HYBRID_BUNDLE
    from char_rnn.evaluation import reported
    from char_rnn.heldout import by_text
    from char_rnn.lineage import file_sha256
    from char_rnn.registry_lock import registry_lock
    from char_rnn.windows import load_spec

    run_id, spec = tracking.pipeline_run(layout.mlruns, layout.train_run), load_spec(layout.windows)
    name, metric = params.registry.model_name, params.registry.metric
    metrics = by_text(json.loads(layout.metrics.read_text(encoding="utf-8")))
    key = tracking.metric_key(metric.value, metrics)
    value = registry.check_registrable(run_id, metric, reported(metrics))
    files = bundle(params, layout)
    digests = {f"{file}_sha256": file_sha256(path) for file, path in files.items()}
    with registry_lock(name):  # another run registering now would compare with the same champion
        for line in registry.clear_pending(name):  # held: a pending version now is a dead registration's
            progress.log.warning("register: %s", line)
        existing = registry.registered_version(name, digests, HYBRID_BUNDLE)
        if existing is not None:
            result = {"model_name": name, "version": existing, "already_registered": True}
            result |= {"metric": key, "value": value}
            _write_json(layout.registration, result)
            return {**result, "summary": f"these files are {name} version {existing} already: nothing registered"}
        decision = _gate(params, layout, files, spec, metrics)
        version = _publish(params, layout, run_id, files, digests, (key, value), decision)
    result = {
        "model_name": name,
        "version": version,
        "alias": decision.alias,
        "metric": key,
        "value": value,
        "already_registered": False,
        "gate": asdict(decision),
    }
    _write_json(layout.registration, result)
    return {**result, "summary": f"{name} version {version} is {decision.alias}: {decision.reason}"}


def _gate(params: Params, layout: Layout, files: dict[str, Path], spec: Any, metrics: dict[str, Any]) -> Any:
    """The candidate and the current champion scored on this run's test text, as each would serve it."""
    from char_rnn import gate, registry
    from char_rnn.bundle import load_registered
    from char_rnn.corpus import read_corpus
    from char_rnn.errors import PipelineError
    from char_rnn.evaluation import reported
    from char_rnn.generate import load_generator

    metric, name = params.registry.metric, params.registry.model_name
    champion = registry.current_champion(name)
    if not spec.test_chars:  # the blog's setting: no text that no model learnt from
        figures, where = reported(metrics), _scored_on(spec)
        value, chars = figures[metric.value], figures.get("chars", spec.train_chars - 1)
        if champion is None:
            return gate.first(value, metric, where, chars)
        why = f"this run has no test text; it is scored on {where}"
        return gate.unfair(value, str(champion.version), why, metric, 0)
    start = spec.train_chars + spec.tune_chars + spec.val_chars
    text = gate.Text(read_corpus(layout.corpus), start, start + spec.test_chars, params.evaluate.context)
    candidate_scorer = load_generator(files)
    candidate = gate.score(candidate_scorer, text, metric)
    ngram = metrics["test"]["ngram_bits_per_char"]
    bits = gate.score(candidate_scorer, text, Metric.bits_per_char) if metric is Metric.accuracy else candidate
    if params.registry.must_beat_baseline and bits >= ngram:
        return gate.below_baseline(candidate, metric, text, ngram, bits)
    if champion is None:
        return gate.first(candidate, metric, text.where, text.chars, ngram)
    version = str(champion.version)
    if why := gate.overlap(dict(champion.tags), text):
        return gate.unfair(candidate, version, why, metric, text.chars)
    try:
        scorer = load_registered(f"models:/{name}/{version}")
    except (PipelineError, OSError) as exc:
        return gate.unfair(candidate, version, f"its files cannot be used ({exc})", metric, text.chars)
    if missing := gate.unreadable(scorer.units, text):
        return gate.unfair(candidate, version, f"its closed units lack {missing} of this text", metric, text.chars)
    champion_figure = gate.score(scorer, text, metric)
    return gate.decide(candidate, champion_figure, version, metric, params.registry.min_improvement, text, ngram)


def _scored_on(spec: Any) -> str:
    """Which text the reported figures come from, as the version's description says it."""
    if spec.test_chars:
        return f"the test text (the last {spec.test_chars:,} characters, never used to choose anything)"
    if spec.val_chars:
        return f"the validation text (the last {spec.val_chars:,} characters; no test text)"
    return f"the {spec.train_chars:,} characters it trained on (memorised, as in the blog; no held-out text)"


def _publish(
    params: Params,
    layout: Layout,
    run_id: str,
    files: dict[str, Path],
    digests: dict[str, str],
    figure: tuple[str, float],
    decision: Any,
) -> str:
    """Log the generator pyfunc into the run, register it with the run's lineage, which text it learnt
    from and the gate's decision, and move the aliases."""
    import mlflow

    from char_rnn import gate, registry, tracking
    from char_rnn.corpus import read_corpus
    from char_rnn.lineage import file_md5
    from char_rnn.serving import log_generator
    from char_rnn.windows import load_spec

    name, spec = params.registry.model_name, load_spec(layout.windows)
    lineage = tracking.lineage_tags(run_id)
    gate_tags = {"gate.decision": decision.alias, "gate.reason": decision.reason}
    compared = {"candidate": decision.candidate, "champion": decision.champion,
                "relative_change": decision.relative_change, "ngram": decision.ngram}  # fmt: skip
    figures = {figure[0]: figure[1], **{f"gate/{k}": v for k, v in compared.items() if v is not None}}
    epochs = ("refit",) if params.refit.enabled else ("train", "val")
    with tracking.resumed_run(layout.mlruns, run_id):
        limits = {key: getattr(params.registry, key) for key in ("max_length", "max_prompt", "max_rows")}
        limits["context"] = params.evaluate.context  # the units of a prompt a served request reads
        shas = {key.removesuffix("_sha256"): value for key, value in digests.items()}
        info = log_generator(files, shas, params.evaluate.prompt, limits)
        mlflow.log_metrics(figures, model_id=info.model_id)
        groups = (*epochs, "test", "validation", "memorised", "hybrid", "dynamic")
        tracking.attach_figures(run_id, info.model_id, groups)
    seen = spec.train_chars + spec.tune_chars + spec.val_chars  # everything before the test text
    version_tags = {
        **lineage,
        **digests,
        **gate.seen_tags(read_corpus(layout.corpus), seen),
        "data.units": spec.units,
        figure[0]: repr(figure[1]),
        **gate_tags,
        "run_id": run_id,
        "model_md5": file_md5(layout.model),
    }
    description = f"{decision.alias}: {decision.reason}\n\nFigures are on {_scored_on(spec)}."
    version = registry.register_version(info.model_uri, name, version_tags, description, params.registry)
    if decision.alias == registry.CHAMPION:
        registry.crown(name, version)
    else:
        registry.make_challenger(name, version)
    registry.finish(name, version)
    tracking.set_note_section(run_id, "Registry", f"Version {version} of `{name}` → {description}")
    return version


def bundle(params: Params, layout: Layout) -> dict[str, Path]:
    """What generates and is registered: the RNN, or with the hybrid as metric, the RNN + n-gram mixture."""
    files = {"model": layout.model, "vocab": layout.vocab}
    if params.registry.metric is Metric.hybrid_bits_per_char:
        files |= {"ngram": layout.ngram, "hybrid": layout.hybrid}
    return files


def _write_json(path: Path, content: Any) -> None:
    write_atomically(path, json.dumps(content, indent=1, ensure_ascii=False, default=str) + "\n")


def _never(params: Params) -> bool:
    return False


@dataclass(frozen=True)
class Stage:
    """A stage as the drivers see it: its name (the CLI command, the dvc.yaml stage, the Prefect task)."""

    name: str
    run: Callable[..., Summary]
    tensorflow: Callable[[Params], bool] = _never  # whether it imports TensorFlow with these params

    @property
    def help(self) -> str:
        return " ".join((self.run.__doc__ or "").split("\n\n")[0].split())


STAGES: tuple[Stage, ...] = (
    Stage("check", check),
    Stage("ingest", ingest),
    Stage("window", window),
    Stage("validate", validate),
    Stage("drift", drift),
    Stage("baseline", baseline),
    Stage("train", train, tensorflow=lambda p: True),
    Stage("tune", tune, tensorflow=lambda p: p.split.tune_fraction > 0),
    Stage("refit", refit, tensorflow=lambda p: p.refit.enabled),
    Stage("evaluate", evaluate, tensorflow=lambda p: bool(p.tune.dynamic_rates)),  # gradients
    Stage("register", register),  # scores with the NumPy runtime
)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def run_all(params: Params, layout: Layout, done: Callable[[str, Summary], None] | None = None) -> dict[str, Summary]:
    """Every stage in order, in this process: what `dvc repro` does, without DVC's bookkeeping.

    `done(name, summary)` is called as each stage finishes (the CLI prints its line).
    """
    results = {}
    for s in STAGES:
        results[s.name] = s.run(params, layout)
        if done is not None:
            done(s.name, results[s.name])
    return results
