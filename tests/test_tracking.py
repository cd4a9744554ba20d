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
