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


def data(corpus: str, spec: WindowSpec, corpus_md5: str, passed: int, failed: int) -> str:
    total = spec.train_chars + spec.tune_chars + spec.val_chars
    splits = ", ".join(
        f"{name} {chars:,}"
        for name, chars in (("training", spec.train_chars), ("tuning", spec.tune_chars), ("validation", spec.val_chars))
        if chars
    )
    return (
        f"**{corpus}**: {total:,} characters, {spec.vocab_size:,} distinct (md5 `{corpus_md5}`); {splits}.\n"
        f"Windows of {spec.length}, stride {spec.stride}: {spec.train_windows:,} for training.\n"
        f"Great Expectations: {passed} expectations passed, {failed} failed."
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


def evaluation(metrics: dict[str, Any], held_out: bool, sample: str) -> str:
    if not held_out:
        return (
            f"No validation split (the blog's setting): scored on the training text it memorised, accuracy"
            f" **{metrics['accuracy']:.4f}**, {number(metrics['bits_per_char'])} bits/char.\n\n"
            f"Sample: `{sample}`"
        )
    lines = [
        f"Held-out: **{number(metrics['bits_per_char'])} bits/char** on the {metrics['heldout_chars']:,} validation"
        f" characters, each predicted once from at least the text before it; Kneser-Ney n-gram"
        f" {number(metrics['ngram_bits_per_char'])} (RNN {change(metrics['rnn_vs_ngram'])})."
    ]
    if "hybrid_bits_per_char" in metrics:
        weights = ", ".join(f"{part} {metrics[f'hybrid_weight_{part}']:.3f}" for part in ("rnn", "ngram", "cache"))
        lines.append(
            f"Hybrid: **{number(metrics['hybrid_bits_per_char'])}** ({change(metrics['hybrid_vs_ngram'])}"
            f" vs the n-gram; weights {weights}, fitted on the tuning slice)."
        )
    if "dynamic_bits_per_char" in metrics:
        lines.append(
            f"Dynamic evaluation: {number(metrics['dynamic_bits_per_char'])}"
            f" ({change(metrics['dynamic_vs_ngram'])}, rate {metrics['dynamic_rate']})."
        )
    return "\n".join(lines) + f"\n\nSample: `{sample}`"
