"""Evaluation: the blog's figures without a split, honest held-out figures and the n-gram with one."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from char_rnn import cache, match, stages
from char_rnn.dynamic import dynamic_char_probabilities
from char_rnn.evaluation import heldout_metrics
from char_rnn.heldout import rnn_char_probabilities, scored_span
from char_rnn.hybrid import Weights, load_hybrid
from char_rnn.layout import Layout
from char_rnn.model import load_model
from char_rnn.ngram import KneserNey, bits_per_char
from char_rnn.params import Params, with_overrides
from char_rnn.windows import load_text_ids, load_windows
from conftest import REPO, SEED, TINY


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path, repo_params: Params):
    """A corpus long enough for a validation tail and a tuning slice (the seed sentence, varied), fitted
    and evaluated once for the module: (layout, params, metrics)."""
    root = tmp_path_factory.mktemp("held-out")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "mlruns").mkdir()
    shutil.copy(migrated_store, root / "mlruns" / "mlflow.db")
    (root / "data" / "raw").mkdir(parents=True)
    text = "\n".join(SEED[i:] + SEED[:i] for i in range(0, 71, 7))
    (root / "data" / "raw" / "text.txt").write_text(text, encoding="utf-8")
    overrides = {"corpus.source": "data/raw/text.txt", "split.val_fraction": 0.2, "split.tune_fraction": 0.1,
                 "split.test_fraction": 0.15,
                 "train.epochs": 30, "train.early_stopping_patience": 2, "train.learning_rate": 0.01,
                 "tune.cache_window": 30, "tune.dynamic_rates": [0.01, 0.1],
                 "tune.mixture_shares": [0.1, 0.01], "tune.match_min": 4}  # fmt: skip
    params, layout = with_overrides(with_overrides(repo_params, TINY), overrides), Layout(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        results = stages.run_all(params, layout)
    return layout, params, results


def history(layout: Layout, run_id: str, key: str) -> list[float]:
    from mlflow import MlflowClient

    from char_rnn.tracking import tracking_uri

    return [m.value for m in MlflowClient(tracking_uri(layout.mlruns)).get_metric_history(run_id, key)]


@pytest.mark.integration  # the whole pipeline, shared with the other tests of the blog's project
def test_without_split_metrics_are_the_blogs(seed_project: Layout, repo_params: Params):
    layout = seed_project
    metrics = json.loads((layout.root / "results.json").read_text(encoding="utf-8"))["evaluate"]
    assert metrics["scored_on"].startswith("training windows") and "test" not in metrics
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2))
    assert "ngram_bits_per_char" not in metrics
    assert layout.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert layout.sample.read_text(encoding="utf-8").startswith(repo_params.evaluate.prompt)
    assert metrics["accuracy"] == pytest.approx(0.98235, abs=0.003) and metrics["epochs"] == 100  # the blog's


@pytest.mark.integration  # the whole pipeline
def test_held_out_scores_every_test_and_validation_character_next_to_the_ngram(held_out):
    layout, params, results = held_out
    metrics = results["evaluate"]
    assert list(metrics)[:2] == ["test", "validation"]  # what `dvc metrics show` lists first
    spec = load_windows(layout.windows)[0]
    baseline = json.loads(layout.baseline.read_text(encoding="utf-8"))
    ids, model, ngram = load_text_ids(layout.windows), load_model(str(layout.model)), KneserNey.load(layout.ngram)
    hybrid = load_hybrid(layout.hybrid)
    weights, dynamic = hybrid.weights, hybrid.dynamic
    assert {key: metrics[key] for key in weights.metrics()} == weights.metrics()
    assert weights.match_min == 4 and metrics["hybrid_match_min"] == 4
    for name, start, end in (
        ("test", spec.start("test"), len(ids)),
        ("validation", spec.val_start, spec.start("test")),
    ):
        figures = metrics[name]
        assert figures["chars"] == end - start == baseline["chars"][name]  # closed units: a unit per character
        assert figures["ngram_bits_per_char"] == pytest.approx(baseline["ngram_bits_per_char"][name])
        # The hybrid's figure is the parts' mixture on this text, the cache's included, the match model over it.
        p_rnn = rnn_char_probabilities(model, ids, start, end, warmup=params.evaluate.context)
        p_kn = ngram.char_probabilities(ids, start, end)
        p_cache = cache.char_probabilities(ids, start, end, params.tune.cache_window)
        copied = match.char_probabilities(ids, start, end, weights.track(p_rnn, p_kn, p_cache), weights.match_min)
        assert figures["hybrid_bits_per_char"] == pytest.approx(bits_per_char(copied))
        # The static figure is the saved model's: dynamic evaluation leaves no trace on it.
        assert figures["bits_per_char"] == pytest.approx(bits_per_char(p_rnn))
        assert figures["bits_per_char"] == pytest.approx(math.log2(figures["perplexity"]))
        p_dynamic = dynamic_char_probabilities(model, ids, start, end, dynamic.rate, dynamic.segment, dynamic.context)
        assert figures["dynamic_bits_per_char"] == pytest.approx(bits_per_char(p_dynamic))
    assert metrics["test"]["bits_per_char"] != pytest.approx(metrics["validation"]["bits_per_char"])
    # Dynamic evaluation's rate is the tuning slice's best, with the settings it was chosen for.
    tried = {float(rate): bits for rate, bits in dynamic.tune_bits_per_char.items()}
    assert set(tried) == {0.0, 0.01, 0.1} and dynamic.rate == min(tried, key=tried.__getitem__)
    assert metrics["dynamic_rate"] == dynamic.rate
    assert (dynamic.segment, dynamic.context) == (params.tune.dynamic_segment, params.tune.dynamic_context)
    # With a cache share forced in, the scored figure follows the three-part mixture.
    forced = Weights(0.3, 0.3, 0.4, cache_window=params.tune.cache_window)
    span = scored_span(spec)
    scored = heldout_metrics(model, ngram, forced, ids, span, params.evaluate.context)
    p_rnn = rnn_char_probabilities(model, ids, span.start, span.end, warmup=params.evaluate.context)
    p_kn, p_cache = ngram.char_probabilities(ids, span.start), cache.char_probabilities(ids, span.start, None, 30)
    assert scored["hybrid_bits_per_char"] == pytest.approx(bits_per_char(forced.mix(p_rnn, p_kn, p_cache)))
    # With a share, the weights follow the text as it is scored: another figure than the fixed mixture's.
    following = dataclasses.replace(forced, share=0.05)
    scored = heldout_metrics(model, ngram, following, ids, span, params.evaluate.context)
    fixed = bits_per_char(forced.mix(p_rnn, p_kn, p_cache))
    assert scored["hybrid_bits_per_char"] == pytest.approx(bits_per_char(following.track(p_rnn, p_kn, p_cache)))
    assert scored["hybrid_bits_per_char"] != pytest.approx(fixed)
    assert metrics["hybrid_share"] == weights.share in (1.0, 0.1, 0.01)  # chosen on the tuning slice


@pytest.mark.integration  # the whole pipeline
def test_early_stopping_restores_the_best_epoch(held_out):
    layout, params, results = held_out
    val_loss = history(layout, results["train"]["run_id"], "val/loss")
    assert len(val_loss) < params.train.epochs, "the run should have stopped early"
    assert results["evaluate"]["validation"]["loss"] == pytest.approx(min(val_loss), rel=1e-4)


def test_refit_needs_a_tuning_slice_and_the_hybrid_metric_needs_the_refit(tiny_params):
    from char_rnn.params import ParamsError

    with pytest.raises(ParamsError, match="refit.enabled needs split.tune_fraction"):
        with_overrides(tiny_params, {"refit.enabled": True})
    split = {"split.val_fraction": 0.2, "split.tune_fraction": 0.1, "registry.metric": "hybrid_bits_per_char"}
    with pytest.raises(ParamsError, match="hybrid_bits_per_char needs refit.enabled: true"):
        with_overrides(tiny_params, split)
    assert with_overrides(tiny_params, {**split, "refit.enabled": True}).refit.enabled


@pytest.mark.integration  # the whole pipeline
def test_refit_reads_the_tuning_slice_the_weights_were_fitted_without(held_out):
    """Last in the module: it replaces the scored model with the refit."""
    import numpy as np

    from char_rnn.training import FitRecord

    layout, params, results = held_out
    plain, plain_weights = load_hybrid(layout.hybrid), load_model(str(layout.model)).get_weights()
    first_fit = load_model(str(layout.fit_model)).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(plain_weights, first_fit, strict=True))  # without refit: kept
    refit = with_overrides(params, {"refit.enabled": True})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        stages.refit(refit, layout)
        metrics = stages.evaluate(refit, layout)
    (member,) = FitRecord.model_validate_json(layout.fit_record.read_text()).members
    val_loss = history(layout, results["train"]["run_id"], "val/loss")
    assert member.kept_epochs == int(np.argmin(val_loss)) + 1 and member.epochs == len(val_loss)
    assert len(history(layout, results["train"]["run_id"], "refit/loss")) == member.kept_epochs
    refit_weights = load_model(str(layout.model)).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(plain_weights, refit_weights, strict=True))
    # The weights were fitted by tune on the first fit, before the refit read the tuning slice.
    assert load_hybrid(layout.hybrid) == plain and metrics["hybrid_weight_rnn"] == plain.weights.rnn
    assert metrics["epochs"] == member.kept_epochs


def test_metrics_json_lists_each_test_figure_with_the_validation_figure_beside_it() -> None:
    """`dvc metrics show` sorts its columns by name: by figure, then text, a test figure's neighbour is
    the same figure on the validation text."""
    from char_rnn.heldout import by_figure, by_text

    metrics = {"test": {"bits_per_char": 3.5, "chars": 10}, "validation": {"bits_per_char": 3.1, "chars": 12},
               "hybrid_weight_rnn": 0.4, "epochs": 7}  # fmt: skip
    written = by_figure(metrics)
    assert written == {"bits_per_char": {"test": 3.5, "validation": 3.1}, "chars": {"test": 10, "validation": 12},
                       "hybrid_weight_rnn": 0.4, "epochs": 7}  # fmt: skip
    nested = [f"{key}.{text}" for key, value in written.items() if isinstance(value, dict) for text in value]
    columns = sorted(nested + [key for key, value in written.items() if not isinstance(value, dict)])
    assert columns.index("bits_per_char.validation") == columns.index("bits_per_char.test") + 1
    assert by_text(written) == metrics
    assert by_figure({"accuracy": 0.98, "bits_per_char": 0.29}) == {"accuracy": 0.98, "bits_per_char": 0.29}
