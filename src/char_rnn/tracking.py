"""The MLflow store and the pipeline's run, as a reviewer reads it in the UI.

One store for the pipeline, the UI and the tests: `sqlite:///<root>/mlruns/mlflow.db` with artifacts
under `<root>/mlruns/artifacts`, as absolute paths, so every stage finds the same store whatever its
working directory. `MLFLOW_TRACKING_URI` overrides it (a shared `mlflow server`). MLflow 3 refuses a
bare `./mlruns` file store.

One run per training, named for what ran, with a description the stages fill in section by section,
and one metric name per figure, grouped by prefix so the UI draws one section per group: `train/`,
`val/`, `refit/` per epoch (steps are epochs, from 1), and the evaluation's `test/` and
`validation/` (the text each figure is on; `memorised/` without held-out text: the blog's setting
scores the text it trained on), `hybrid/`, `dynamic/`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from char_rnn.lock import exclusive

EXPERIMENT = "char-rnn"
CONTINUES = "char_rnn.continues"  # tag of a run that continues a pulled run of another store
RESUMED = "char_rnn.resumed"  # tag of a run whose training was killed and resumed: where it went on
NOTE = "mlflow.note.content"  # the run's description in the UI, markdown
# In this order, the outcome first (a long description shows its first lines until "Show more"), each
# section written by one stage.
NOTE_SECTIONS = ("Ended", "Evaluation", "Registry", "Data", "Model", "Refit")
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` / `char-rnn ui` serve the local store
# MLflow 3.17's UI opens in its GenAI view (traces, no runs list, no registry) unless the address asks for
# the model-training view; the experiment's kind tag is read but does not choose it. Every link we print
# carries the query, after the route: MLflow drops it on its own links, so the UI's clicks fall back to GenAI.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"
KIND = {"mlflow.experimentKind": "custom_model_development"}  # what the experiment is, for MLflow's own use


def tracking_uri(mlruns: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns.resolve() / 'mlflow.db'}"


def artifact_root(mlruns: Path) -> str:
    return (mlruns.resolve() / "artifacts").as_uri()


def connect(mlruns: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    mlruns.mkdir(parents=True, exist_ok=True)
    users_choice = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(mlruns))
    # MLflow also exports the URI to the environment, which would pin every later project in this
    # process to this store: keep the variable meaning only what the user set.
    if users_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = users_choice
    # Opening a new SQLite store creates and migrates it: several processes opening it at once (sweep
    # trials, serve + train) would race on the schema, and on creating the experiment; they take turns.
    with exclusive(mlruns / ".store.lock"):
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            # Over HTTP the server decides where artifacts go; a local store keeps them under mlruns/.
            location = None if tracking_uri(mlruns).startswith("http") else artifact_root(mlruns)
            return mlflow.create_experiment(EXPERIMENT, artifact_location=location, tags=KIND)
        for key, value in KIND.items():  # a store created before the experiment had its kind
            if experiment.tags.get(key) != value:
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id


@contextmanager
def new_run(mlruns: Path, name: str, tags: dict[str, str]) -> Iterator[Any]:
    """The pipeline's run, opened by the train stage; FAILED if the block raises, FINISHED otherwise.

    CPU and memory are sampled while it is open (MLflow's system metrics, every few seconds).
    """
    import mlflow

    experiment_id = connect(mlruns)
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags, log_system_metrics=True) as run:
        yield run


SYSTEM_METRICS_INTERVAL_S = 5.0
DVC_EXPERIMENT = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}


def dvc_experiment() -> dict[str, str]:
    """The DVC experiment this stage runs in (DVC sets both variables for every `dvc exp run`, never for
    `dvc repro`), as run tags: the run in the MLflow UI and the row of `dvc exp show` find each other."""
    return {tag: os.environ[name] for name, tag in DVC_EXPERIMENT.items() if os.environ.get(name)}


def run_name(corpus: str, cell: str, units: int, layers: int, ensemble: int, epochs: int, commit: str) -> str:
    """What ran: `80 epochs · gru(256) ×5 · kolaw · 1a2b3c4`; a DVC experiment's starts `exp <name> ·`.

    The runs list shows only the first 20-odd characters of a name, so what most often differs between
    two runs of one project comes first: the experiment, the epochs (a quick run beside a full one), then
    the model's size; the corpus, which changes least, and the commit follow.
    """
    size = f"{cell}({units})" + (f" {layers} layers" if layers > 1 else "") + (f" ×{ensemble}" if ensemble > 1 else "")
    epochs_trained = f"{epochs} epoch" + ("s" if epochs != 1 else "")
    experiment = dvc_experiment().get("dvc.exp_name")
    parts = [f"exp {experiment}"] if experiment else []
    return " · ".join([*parts, epochs_trained, size, Path(corpus).stem if "/" in corpus else corpus, commit[:7]])


def experiment_url(experiment_id: str, base: str = LOCAL_UI) -> str:
    """The experiment's runs list, in the model-training view."""
    return f"{base}/#/experiments/{experiment_id}{MODEL_TRAINING_VIEW}"


def run_url(run_id: str) -> str:
    """The run's page, in the model-training view: on the tracking server, or the local UI (`make ui`)."""
    import mlflow

    uri, experiment_id = mlflow.get_tracking_uri(), mlflow.get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith("http") else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING_VIEW}"


def set_note_section(run_id: str, title: str, markdown: str) -> None:
    """Write one section of the run's description, keeping the other stages' sections."""
    from mlflow import MlflowClient

    client = MlflowClient()
    sections = _sections(client.get_run(run_id).data.tags.get(NOTE, ""))
    sections[title] = markdown.strip()
    ordered = [t for t in NOTE_SECTIONS if t in sections] + [t for t in sections if t not in NOTE_SECTIONS]
    client.set_tag(run_id, NOTE, "\n\n".join(f"### {t}\n\n{sections[t]}" for t in ordered))


def _sections(note: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for block in note.split("### ")[1:]:
        title, _, body = block.partition("\n")
        found[title.strip()] = body.strip()
    return found


def log_dataset(name: str, path: Path, digest: str, context: str) -> None:
    """A dataset input of the active run (the Datasets column), named; `digest`: DVC's md5, or a
    document's sha256 cut to MLflow's 36 characters."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers its local source twice, then warns it cannot choose
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(str(path))
    mlflow.log_input(MetaDataset(source=source, name=name, digest=digest), context=context)


@contextmanager
def resumed_run(mlruns: Path, run_id: str) -> Iterator[Any]:
    """Log into the train stage's run from a later stage, so one run holds everything."""
    import mlflow

    connect(mlruns)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def run_exists(mlruns: Path, run_id: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    connect(mlruns)
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def abandon(mlruns: Path, run_id: str, why: str) -> None:
    """End a run that a killed process left RUNNING as FAILED, with the reason in its description."""
    from mlflow import MlflowClient

    if not run_exists(mlruns, run_id):
        return
    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        set_note_section(run_id, "Ended", why)
        client.set_terminated(run_id, "FAILED")


WARM_START = "char_rnn.warm_start"  # the version a run's weights started from, or "scratch" and why
LINEAGE = (
    WARM_START,
    "corpus",
    "corpus_md5",
    "git_commit",
    "params_sha256",
    "prefect.flow_run_id",
    "prefect.flow_run_name",
    "prefect.deployment",
    "run_branch",  # a worker's run: the branch of origin with its dvc.lock (pipelines.publish)
    *DVC_EXPERIMENT.values(),
)


def lineage_tags(run_id: str) -> dict[str, str]:
    """The run's lineage (corpus, commit, params hash, Prefect flow run and deployment, run branch, DVC
    experiment), to copy onto a version."""
    from mlflow import MlflowClient

    tags = MlflowClient().get_run(run_id).data.tags
    return {key: tags[key] for key in LINEAGE if key in tags}


def run_link(run_id: str) -> str:
    """`models/run.json`: which run the later stages log into."""
    return json.dumps({"run_id": run_id}, indent=1) + "\n"


def pipeline_run(mlruns: Path, link: Path) -> str:
    """The run the stages after train log into: the one `link` (models/run.json) names.

    A run id belongs to one MLflow store, and run.json travels with the outputs (`dvc pull`). When
    this store has no such run, the stages log into this store's continuation of it instead: a run
    tagged `char_rnn.continues` with the id, created by the first stage that needs it and found by
    that tag afterwards, so evaluate and register still share one run and nothing fails.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    experiment_id = connect(mlruns)
    run_id = json.loads(link.read_text(encoding="utf-8"))["run_id"]
    client = MlflowClient()
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        pass
    query = f"tags.`{CONTINUES}` = '{run_id}'"
    for found in client.search_runs([experiment_id], filter_string=query, max_results=1):
        return found.info.run_id
    note = (
        f"Continues run `{run_id}` of another MLflow store, whose outputs arrived here with `dvc pull`;"
        " its training and epochs are logged there."
    )
    run = client.create_run(
        experiment_id, run_name=f"continues-{run_id[:8]}", tags={CONTINUES: run_id, "mlflow.note.content": note}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def epoch_logger(group: str, member: int = 0) -> Any:
    """A Keras callback that logs every epoch as it ends, so a long run can be watched in the UI.

    `group` is `train` for the first fit (its validation figures go to `val/`) or `refit`; an
    ensemble's member i > 0 logs as `train/member<i+1>/loss`. Steps are epochs, counted from 1.
    A fit killed after logging an epoch but before its checkpoint trains that epoch again when
    resumed, to the same figures: the epochs the run already holds are not logged twice.
    """
    import keras
    import mlflow

    class EpochLogger(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            run_id, key = mlflow.active_run().info.run_id, epoch_key(group, "loss", member)
            self.logged = max((m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)), default=0)

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if epoch + 1 <= self.logged:
                return
            finite = {epoch_key(group, k, member): float(v) for k, v in (logs or {}).items() if math.isfinite(float(v))}
            mlflow.log_metrics(finite, step=epoch + 1)

    return EpochLogger()


def epoch_key(group: str, name: str, member: int = 0) -> str:
    """`train/loss`, `val/accuracy`, `train/member2/loss`, `refit/val_loss`: Keras' name under its group."""
    prefix = "val" if name.startswith("val_") and group == "train" else group
    name = name.removeprefix("val_") if group == "train" else name
    return f"{prefix}/{f'member{member + 1}/' if member else ''}{name}"


def attach_figures(run_id: str, model_id: str, groups: tuple[str, ...]) -> None:
    """Attach the run's latest figures of `groups` (`refit`, `heldout`, ...) to a logged model, so the
    Logged models table shows how the model ended and scored. Each is logged again with its own step
    and timestamp, which MLflow keeps once: the run's history gains nothing."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    keys = [key for key in client.get_run(run_id).data.metrics if key.split("/")[0] in groups and "/member" not in key]
    last = [client.get_metric_history(run_id, key)[-1] for key in keys]
    client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id) for m in last])


def evaluation_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's figures under their run names: one name per figure, grouped by the text it is on
    (`test/`, `validation/`, or `memorised/` without held-out text) and by part (`hybrid/weight_rnn`).

    The final training figures are left out: they are the last step of `train/` already.
    """
    named = {}
    for section in ("test", "validation"):
        named |= {f"{section}/{key}": value for key, value in finite_metrics(metrics.get(section, {})).items()}
    for key, value in finite_metrics(metrics).items():
        if key in ("train_loss", "train_accuracy", "epochs"):
            continue
        head, _, rest = key.partition("_")
        named[f"{head}/{rest}" if head in ("hybrid", "dynamic") else f"memorised/{key}"] = value
    return named


def metric_key(metric: str, metrics: dict[str, Any]) -> str:
    """The run's (and so the registry's) name for a `registry.metric` of these figures: the reported
    text's, `test/hybrid_bits_per_char` (or `validation/...`, or `memorised/...` without held-out text)."""
    section = next((name for name in ("test", "validation") if name in metrics), "memorised")
    return f"{section}/{metric}"


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow rejects NaN in some stores and charts it badly in all: keep only finite values."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
