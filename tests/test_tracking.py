"""The pipeline's MLflow run: found by its id, or continued in this store when the id came from another."""

from __future__ import annotations

from char_rnn import tracking
from char_rnn.layout import Layout


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
