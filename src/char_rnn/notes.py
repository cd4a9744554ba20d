"""The run's description, section by section: what a reviewer reads on the run's page in the MLflow UI.

Each stage writes its own section (`tracking.set_note_section`) from what it knows, so the page tells
which corpus and model ran, how it scored against the n-gram, and what the registry decided, without
opening a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from char_rnn.params import ModelParams, TrainParams

if TYPE_CHECKING:
    from char_rnn.training import FitRecord
    from char_rnn.windows import WindowSpec


def number(value: float, digits: int = 4) -> str:
    return f"{value:,.{digits}f}"


def change(relative: float) -> str:
    """`−5.32 %`: a relative change, with a true minus sign as the UI shows it."""
    return f"{relative * 100:+.2f} %".replace("-", "−")


def data(corpus: str, spec: WindowSpec, corpus_md5: str, passed: int, failed: int, drift: str) -> str:
    total = spec.train_chars + spec.tune_chars + spec.val_chars + spec.test_chars
    splits = ", ".join(
        f"{name} {chars:,}"
        for name, chars in (
            ("training", spec.train_chars),
            ("tuning", spec.tune_chars),
            ("validation", spec.val_chars),
            ("test", spec.test_chars),
        )
        if chars
    )
    return (
        f"**{corpus}**: {total:,} characters (md5 `{corpus_md5}`); {splits}, in that order.\n"
        f"{spec.vocab_size:,} {spec.units} units, from the training text alone; windows of {spec.length}, stride"
        f" {spec.stride}: {spec.train_windows:,} for training.\n"
        f"Great Expectations: {passed} expectations passed, {failed} failed.\n"
        f"Drift: {drift}."
    )


def model(model: ModelParams, train: TrainParams, fit: FitRecord) -> str:
    encoding = "one-hot input" if model.input.value == "one_hot" else f"embedding {model.embedding_dim}"
    layers = f"{model.layers} layers" if model.layers > 1 else "1 layer"
    ensemble = (
        f", ensemble of {model.ensemble} (seeds {train.seed}–{train.seed + model.ensemble - 1})"
        if (model.ensemble > 1)
        else f", seed {train.seed}"
    )
    epochs = ", ".join(
        f"{m.epochs}" + (f" (kept {m.kept_epochs})" if m.kept_epochs != m.epochs else "") for m in fit.members
    )
    return (
        f"{model.cell.value}({model.units}), {layers}, {encoding}, dropout {model.dropout}{ensemble}.\n"
        f"Adam {train.learning_rate} ({train.lr_schedule.value}), batch {train.batch_size}; "
        f"epochs trained: {epochs} of {train.epochs}."
    )


def refit(kept: list[int], spec: WindowSpec) -> str:
    return (
        f"Retrained on training + tuning text ({spec.train_chars + spec.tune_chars:,} characters) for the epochs"
        f" the first fit kept ({', '.join(map(str, kept))}): the scored model has read what the scored n-gram"
        " counts. The hybrid's weights were fitted before, without the tuning slice."
    )


def evaluation(metrics: dict[str, Any], spec: WindowSpec, sample: str) -> str:
    if not spec.held_out:
        return (
            f"No held-out text (the blog's setting): scored on the training text it memorised, accuracy"
            f" **{metrics['accuracy']:.4f}**, {number(metrics['bits_per_char'])} bits/char.\n\n"
            f"Sample: `{sample}`"
        )
    lines = []
    for name, what in (
        ("test", "the test text, the corpus's tail: never used to choose anything"),
        ("validation", "the validation text, before it: early stopping and configs were chosen on it"),
    ):
        if name not in metrics:
            continue
        figures = metrics[name]
        line = (
            f"**{name.capitalize()}** ({figures['chars']:,} characters, {what}): RNN"
            f" **{number(figures['bits_per_char'])} bits/char**, Kneser-Ney n-gram"
            f" {number(figures['ngram_bits_per_char'])} (RNN {change(figures['rnn_vs_ngram'])})"
        )
        if "hybrid_bits_per_char" in figures:
            line += f"; hybrid **{number(figures['hybrid_bits_per_char'])}** ({change(figures['hybrid_vs_ngram'])})"
        if "dynamic_bits_per_char" in figures:
            line += f"; dynamic evaluation {number(figures['dynamic_bits_per_char'])}"
        lines.append(line + ".")
    if "hybrid_weight_rnn" in metrics:
        weights = ", ".join(f"{part} {metrics[f'hybrid_weight_{part}']:.3f}" for part in ("rnn", "ngram", "cache"))
        follows = metrics.get("hybrid_share", 1) < 1
        moving = f"; while scoring they follow the text, returning share {metrics['hybrid_share']}" if follows else ""
        copies = metrics["hybrid_match_min"]
        moving += f"; over the mixture, the match model after {copies} units that occurred before" if copies else ""
        lines.append(f"Hybrid weights {weights}, fitted on the tuning slice{moving}.")
    if "dynamic_rate" in metrics:
        lines.append(f"Dynamic evaluation's rate {metrics['dynamic_rate']}, chosen on the tuning slice.")
    return "\n".join(lines) + f"\n\nSample: `{sample}`"
