"""The sweep: its spec is checked before anything trains; two configs train at once, the best is registered.

The end-to-end test runs the real flow (Prefect's temporary server, real worker processes, a real
MLflow store in a throw-away project) on the blog's sentence with two epochs and tiny GRUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from char_rnn.layout import Layout
from char_rnn.params import Params, with_overrides
from pipelines.sweep_spec import SweepSpecError, load_spec, parse_spec, plan_trials

SPEC = {"max_parallel": 2, "grid": {"model.units": [8, 16], "model.cell": ["gru"]}}


def test_spec_rejects_unknown_keys_and_bad_values_naming_the_key(tiny_params: Params) -> None:
    with pytest.raises(SweepSpecError, match="max_paralel: Extra inputs"):
        parse_spec({**SPEC, "max_paralel": 2})
    with pytest.raises(SweepSpecError, match="corpus.source: only model.. and train.. keys"):
        parse_spec({"grid": {"corpus.source": ["kolaw"]}})
    with pytest.raises(SweepSpecError, match=r"(?s)config 1 .*model.units: Input should be greater than or equal to 1"):
        plan_trials(tiny_params, parse_spec({"grid": {"model.units": [8, 0]}}))
    with pytest.raises(SweepSpecError, match="model.unitz: Extra inputs"):
        plan_trials(tiny_params, parse_spec({"grid": {"model.unitz": [8]}}))


def test_grid_and_random_sample(tmp_path: Path, tiny_params: Params) -> None:
    spec_file = tmp_path / "params.yaml"
    spec_file.write_text(
        yaml.safe_dump({"sweep": {**SPEC, "grid": {"model.units": [8, 16, 32], "train.epochs": [1, 2]}}})
    )
    spec = load_spec(spec_file)  # a params file's sweep: section reads like a bare spec
    assert len(spec.configs()) == 6
    sample = parse_spec({**spec.model_dump(), "random": 3, "seed": 1}).configs()
    assert len(sample) == 3 and sample == parse_spec({**spec.model_dump(), "random": 3, "seed": 1}).configs()
    names = [trial.name for trial in plan_trials(tiny_params, spec)]
    assert names[0] == "00-units=8-epochs=1" and len(set(names)) == 6


def test_cli_refuses_a_bad_spec_before_running(tmp_path: Path) -> None:
    from pipelines.__main__ import app

    bad = tmp_path / "sweep.yaml"
    bad.write_text(yaml.safe_dump({"grid": {"model.units": [8]}, "parallel": 2}))
    result = CliRunner().invoke(app, ["sweep", "--spec", str(bad), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "parallel: Extra inputs are not permitted" in result.output


@pytest.mark.integration  # Prefect's temporary server and two worker processes
def test_sweep_trains_two_configs_at_once_nested_and_registers_the_best(layout: Layout, tiny_params: Params) -> None:
    from mlflow import MlflowClient

    from char_rnn.tracking import tracking_uri
    from pipelines.sweep import run_sweep

    params = with_overrides(tiny_params, {"train.epochs": 2})
    result = run_sweep(parse_spec(SPEC), params=params, root=str(layout.root), sweep_id="s1", train_timeout_s=600)

    rows = result["trials"]
    assert [row["status"] for row in rows] == ["ok", "ok"], rows
    # Parallel: each trial started before the other one finished.
    assert max(row["started"] for row in rows) < min(row["finished"] for row in rows), rows
    client = MlflowClient(tracking_uri=tracking_uri(layout.mlruns))
    runs = [client.get_run(row["run_id"]) for row in rows]
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {result["parent_run_id"]}
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    # Each trial wrote into its own folder; nothing landed in the project's own models/.
    for row in rows:
        assert Layout(layout.root).for_run(Path(row["run_dir"])).model.is_file()
    assert not layout.model.exists()

    metric = params.registry.metric.value
    best = min(rows, key=lambda row: row[metric])
    assert parent.data.tags["sweep.best_run_id"] == best["run_id"]
    champion = client.get_model_version_by_alias(params.registry.model_name, "champion")
    assert champion.run_id == best["run_id"]
    assert result["register"]["alias"] == "champion"
    assert len(client.search_model_versions(f"name='{params.registry.model_name}'")) == 1


def test_best_trial_by_metric_direction_skipping_failures() -> None:
    from char_rnn.params import Metric
    from pipelines.sweep import pick_best

    rows = [
        {"trial": "a", "status": "ok", "bits_per_char": 2.0, "accuracy": 0.5},
        {"trial": "b", "status": "failed", "error": "bits_per_char is nan"},
        {"trial": "c", "status": "ok", "bits_per_char": 1.5, "accuracy": 0.4},
    ]
    assert pick_best(rows, Metric.bits_per_char)["trial"] == "c"  # lower wins
    assert pick_best(rows, Metric.accuracy)["trial"] == "a"  # higher wins
    assert pick_best([rows[1]], Metric.bits_per_char) is None  # all failed: nothing to register


def test_a_trial_is_ranked_by_registry_metric_on_the_validation_text_never_the_test_text() -> None:
    """One figure decides everywhere: the one registry.metric names, here on the text configs are chosen on."""
    from char_rnn.evaluation import chosen_on
    from char_rnn.params import Metric

    held_out = {"test": {"hybrid_bits_per_char": 3.1, "bits_per_char": 3.9, "loss": 2.0},
                "validation": {"hybrid_bits_per_char": 3.4, "bits_per_char": 3.6, "loss": 1.5}}  # fmt: skip
    assert chosen_on(held_out)[Metric.hybrid_bits_per_char.value] == 3.4
    assert chosen_on({"test": {"bits_per_char": 3.0}}) == {}  # only test text: nothing to choose on
    assert chosen_on({"bits_per_char": 0.3, "accuracy": 0.98})["accuracy"] == 0.98  # the blog: memorised
    assert {metric.value for metric in Metric} == {"bits_per_char", "hybrid_bits_per_char", "accuracy"}
