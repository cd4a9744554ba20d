"""The pipeline's MLflow run: found by its id, or continued in this store when the id came from another."""

from __future__ import annotations

from pathlib import Path

import pytest

from char_rnn import tracking
from char_rnn.layout import Layout, StoreUnreachable


def test_the_linked_run_is_the_one_the_stages_log_into(layout: Layout) -> None:
    import mlflow

    with tracking.new_run(layout.mlruns, "a run", {"git_commit": "none"}) as run:
        pass
    layout.train_run.parent.mkdir(parents=True)
    layout.train_run.write_text(tracking.run_link(run.info.run_id), encoding="utf-8")
    assert tracking.pipeline_run(layout.mlruns, layout.train_run) == run.info.run_id
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_run_of_another_store_is_continued_here_once(layout: Layout) -> None:
    """run.json arrives with `dvc pull` from another store: the later stages share one new run."""
    import mlflow

    layout.train_run.parent.mkdir(parents=True)
    layout.train_run.write_text(tracking.run_link("0123456789abcdef0123456789abcdef"), encoding="utf-8")
    first = tracking.pipeline_run(layout.mlruns, layout.train_run)
    assert tracking.pipeline_run(layout.mlruns, layout.train_run) == first
    continued = mlflow.get_run(first)
    assert continued.data.tags[tracking.CONTINUES] == "0123456789abcdef0123456789abcdef"
    assert "another MLflow store" in continued.data.tags["mlflow.note.content"]
    assert continued.info.status == "FINISHED"
    with tracking.resumed_run(layout.mlruns, first):
        mlflow.log_metric("heldout/loss", 1.0)
    assert mlflow.get_run(first).data.metrics == {"heldout/loss": 1.0}


def test_an_epoch_logged_before_a_kill_is_not_logged_again_when_resumed(layout: Layout) -> None:
    """Killed between logging epoch 3 and saving its checkpoint: the resumed fit trains epoch 3 again."""
    import mlflow

    with tracking.new_run(layout.mlruns, "a run", {"git_commit": "none"}) as run:
        logger = tracking.epoch_logger("train", 1)
        logger.on_train_begin()
        for epoch in range(3):
            logger.on_epoch_end(epoch, {"loss": 3.0 - epoch, "accuracy": 0.1 * epoch})
    with tracking.resumed_run(layout.mlruns, run.info.run_id):
        resumed = tracking.epoch_logger("train", 1)
        resumed.on_train_begin()
        for epoch in range(2, 5):  # from the checkpoint of epoch 2
            resumed.on_epoch_end(epoch, {"loss": 3.0 - epoch, "accuracy": 0.1 * epoch})
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/member2/loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0), (3, 1.0), (4, 0.0), (5, -1.0)]
    accuracy = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/member2/accuracy")
    assert [m.step for m in accuracy] == [1, 2, 3, 4, 5]


def test_the_experiment_says_it_is_model_training_new_or_old(layout: Layout) -> None:
    """Set on the experiment a store already had, too (MLflow reads the kind; the link chooses the view)."""
    import mlflow

    experiment_id = tracking.connect(layout.mlruns)
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    mlflow.MlflowClient().delete_experiment_tag(experiment_id, "mlflow.experimentKind")
    assert tracking.connect(layout.mlruns) == experiment_id
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_run_names_differ_where_the_runs_list_cuts_them() -> None:
    """The runs list shows about the first 20 characters of a name (tests/test_browser.py reads them):
    a quick run beside a full one, or two sizes of one cell, differ there."""
    quick, full = (tracking.run_name("seed", "simple_rnn", 100, 1, 1, epochs, "1a2b3c4") for epochs in (5, 100))
    small, large = (tracking.run_name("kolaw", "gru", units, 2, 5, 80, "1a2b3c4") for units in (64, 256))
    assert quick[:20] != full[:20] and small[:20] != large[:20], (quick, full, small, large)
    assert full == "100 epochs · simple_rnn(100) · seed · 1a2b3c4"  # and all of what ran is there


def test_an_experiment_in_a_dvc_copy_logs_to_the_project_store_or_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp/--queue` runs the stages in `<project>/.dvc/tmp/exps/...`, deleted afterwards,
    and names the project in DVC_ROOT: the store is the project's; without DVC_ROOT, none."""
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    copy.mkdir(parents=True)
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    assert Layout(project).mlruns == project / "mlruns"
    with pytest.raises(StoreUnreachable, match="temporary copy that DVC deletes"):
        _ = Layout(copy).mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a server: reachable from the copy
    assert Layout(copy).mlruns == copy / "mlruns"  # only the store's lock lives there then
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert Layout(copy).mlruns == project / "mlruns"
    assert Layout(project).mlruns == project / "mlruns"  # `dvc repro` sets DVC_ROOT to the project itself
    monkeypatch.setenv("DVC_EXP_NAME", "quick-2")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c3b3161d2b61064e2817a5a5201d20f83ca6e9f0")
    assert tracking.dvc_experiment() == {
        "dvc.exp_name": "quick-2",
        "dvc.exp_baseline_rev": "c3b3161d2b61064e2817a5a5201d20f83ca6e9f0",
    }
    assert tracking.run_name("seed", "simple_rnn", 100, 1, 1, 3, "c3b3161").startswith("exp quick-2 · 3 epochs")
