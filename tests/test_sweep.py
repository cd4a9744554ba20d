"""The sweep: its spec is checked before anything runs; two configs run at once as DVC experiments, the
best is registered.

The end-to-end test runs the real flow (Prefect's temporary server, real `dvc exp run --temp`, a real
MLflow store) in a fresh git + DVC project on the blog's sentence with two epochs and tiny GRUs.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from harness import GIT_IDENTITY, scaffold_project
from typer.testing import CliRunner

from char_rnn.params import Params
from conftest import BIN, REPO
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
    # A bad base override or a bad config is refused as quickly: before Prefect or DVC start.
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    bad.write_text(yaml.safe_dump({"grid": {"model.units": [8, 0]}}))
    for args, message in (
        (["--set", "train.epochs=0"], "train.epochs: Input should be greater than or equal to 1"),
        (["--spec", str(bad)], "config 1 {'model.units': 0}: "),
    ):
        result = CliRunner().invoke(app, ["sweep", "--root", str(tmp_path), *args])
        assert (result.exit_code, message in result.output) == (2, True), result.output


@pytest.fixture
def project(tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git + DVC project with the repository's pipeline on the blog's sentence, 2 epochs, nothing run."""
    root = scaffold_project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["epochs"], params["evaluate"]["sample_length"] = 2, 5
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    git(root, "commit", "-qam", "tiny")
    for key, value in (("user.name", "sweep test"), ("user.email", "sweep@localhost")):
        git(root, "config", key, value)  # DVC commits each experiment, whatever the machine's git config
    shutil.copy(migrated_store, root / "mlruns" / "mlflow.db")  # git-ignored; saves the migrations
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout


def experiments(root: Path) -> dict[str, str]:
    """The experiments `dvc exp show` lists (running ones too), each with its model.units."""
    command = [BIN / "dvc", "exp", "show", "--csv", "--keep", r"^(Experiment|model\.units)$", "--drop", ".*"]
    shown = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout
    return {row["Experiment"]: row["model.units"] for row in csv.DictReader(io.StringIO(shown)) if row["Experiment"]}


@pytest.mark.integration  # real dvc, Prefect's temporary server, two experiments at once
def test_a_sweep_runs_each_config_as_a_dvc_experiment_and_registers_the_best(project: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.sweep import ExperimentFailed, dvc, read_json, run_sweep

    result = run_sweep(parse_spec(SPEC), root=str(project), sweep_id="s1", train_timeout_s=600)

    rows = result["trials"]
    assert [row["status"] for row in rows] == ["ok", "ok"], rows
    assert max(row["started"] for row in rows) < min(row["finished"] for row in rows), rows  # at once
    # One experiment per config, listed by DVC, with its param; nothing ran in the workspace.
    names = {row["experiment"]: row["model.units"] for row in rows}
    assert set(names) == {"s1-00", "s1-01"}  # short, so that `dvc exp show` has room for the params
    assert {row["trial"] for row in rows} == {"00-units=8-cell=gru", "01-units=16-cell=gru"}
    assert {name: int(units) for name, units in experiments(project).items() if name.startswith("s1-")} == names
    assert git(project, "status", "--porcelain") == "" and not (project / "models").exists()
    # One MLflow run per trial in the project's store, tagged with its experiment, under the sweep's run.
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("char-rnn").experiment_id
    runs = client.search_runs([experiment_id], "tags.`dvc.exp_name` LIKE 's1-%'")
    assert {run.data.tags["dvc.exp_name"]: run.info.run_id for run in runs} == {
        row["experiment"]: row["run_id"] for row in rows
    }
    assert {(run.info.status, run.data.tags["mlflow.parentRunId"]) for run in runs} == {
        ("FINISHED", result["summary_run_id"])
    }
    # The best (here on the memorised text: the blog holds nothing out) alone is registered, as champion,
    # and its experiment (it kept the winner's name) carries the registration.
    best = min(rows, key=lambda row: row["bits_per_char"])
    worst = max(rows, key=lambda row: row["bits_per_char"])
    assert result["experiment"] == best["experiment"] != worst["experiment"]
    champion = client.get_model_version_by_alias("char-rnn-seed", "champion")
    assert (champion.run_id, champion.tags["dvc.exp_name"]) == (best["run_id"], best["experiment"])
    assert len(client.search_model_versions("name='char-rnn-seed'")) == 1
    registration = read_json(str(project), best["experiment"], "reports/registration.json")
    assert (registration["version"], registration["alias"]) == (str(champion.version), "champion")
    # The same sweep again: every trial comes back from DVC's run-cache, so no new run and no new version;
    # each row names the run that trained its files, and the registration says it was there already.
    again = run_sweep(parse_spec(SPEC), root=str(project), sweep_id="s2", train_timeout_s=600)
    assert {row["run_id"] for row in again["trials"]} == {row["run_id"] for row in rows}
    assert all(row["from_run_cache"] for row in again["trials"])
    assert (again["register"]["version"], again["register"]["already_registered"]) == (registration["version"], True)
    assert len(client.search_model_versions("name='char-rnn-seed'")) == 1
    # A trial past its time budget is stopped as Ctrl-C stops it: no temporary copy, no experiment left;
    # also when the sweep was started with `&` from a script, which starts it with SIGINT ignored.
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(ExperimentFailed, match="ran past 8 s"):
            dvc(str(project), "exp", "run", "--temp", "-n", "s1-late", "-S", "train.epochs=5000", timeout_s=8)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert not list((project / ".dvc" / "tmp" / "exps").glob("*/tmp*"))
    assert "s1-late" not in experiments(project)


def test_a_failed_or_overdue_dvc_command_says_what_happened(tmp_path: Path) -> None:
    from pipelines.sweep import ExperimentFailed, dvc

    with pytest.raises(ExperimentFailed, match=r"dvc exp run exited with \d+: .*not inside of a DVC repository"):
        dvc(str(tmp_path), "exp", "run", "--temp")
    with pytest.raises(ExperimentFailed, match=r"dvc exp run ran past 0 s and was stopped"):
        dvc(str(tmp_path), "exp", "run", "--temp", timeout_s=0.1)  # DVC alone takes longer to start


def test_the_winner_is_not_replaced_by_a_rerun_that_evaluated_other_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering reruns the winner's overrides on the workspace as it is now: if that evaluated other
    files (the workspace changed during the sweep), what it registered is not what won, and the sweep says so."""
    from pipelines import sweep

    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(sweep, "dvc", lambda root, *args, **options: calls.append(args[:2]) or "")
    monkeypatch.setattr(sweep, "evaluated", lambda root, experiment: {"outs": experiment})  # each its own
    with pytest.raises(sweep.SweepFailed, match="experiment s-01-checking did not evaluate what s-01 did"):
        sweep.register_best.fn("s-01", {"model.units": 8}, "/project", None, 600)
    # the check is removed and nothing else runs: no registering run, no `exp rename` over the winner
    assert calls == [("exp", "run"), ("exp", "remove")]


def test_a_trial_is_scored_on_the_validation_text_and_a_failed_one_says_why(tiny_params: Params) -> None:
    from prefect.states import Completed, Failed

    from char_rnn.params import Metric
    from pipelines.sweep import trial_row

    [trial] = plan_trials(tiny_params, parse_spec({"grid": {"model.units": [8]}}))
    held_out = {"test": {"bits_per_char": 3.1}, "validation": {"bits_per_char": 3.4}}
    done = Completed(data={"metrics": held_out, "started": 1.0, "finished": 3.0})
    row = trial_row(trial, "s-00-units=8", done, Metric.bits_per_char)
    assert (row["status"], row["bits_per_char"], row["seconds"]) == ("ok", 3.4, 2.0)
    assert trial_row(trial, "s-00", Failed(message="dvc exp run exited with 1"), Metric.bits_per_char)["error"] == (
        "dvc exp run exited with 1"
    )
    nan = Completed(data={"metrics": {"validation": {"bits_per_char": float("nan")}}, "started": 0, "finished": 1})
    assert trial_row(trial, "s-00", nan, Metric.bits_per_char)["status"] == "failed"


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
