"""Model registry: every finished run becomes a version; aliases, not copies, mark what serves.

`@champion` serves. The register stage moves it only when the gate (`char_rnn.gate`) says the new
version beats it on the same text; otherwise the new version is `@challenger`. Only a registry that
answers "no such model" or "no such alias" has no champion; one that cannot answer (a server away, a
store that cannot be read) fails the stage, which the flow retries when the error is transient. A person can decide
otherwise (`promote`, with a reason that is recorded), and the champion a promotion replaces keeps
`@previous-champion`, so `rollback` is one command. A run that failed or has no finite metric is
refused before anything is logged or registered, so a failed run never moves an alias.

What a version holds is the generator pyfunc (`char_rnn.serving`: the `.keras` file and the
vocabulary, and for the hybrid also the n-gram and hybrid.json). The sha256 of every bundled file is
tagged on the version (`model_sha256`, `vocab_sha256`, ...) and checked before any of them is loaded
again; files that are a version already are that version, not a new one.

Registration is all or nothing: a version is created with every tag at once and marked `PENDING`
until its alias has moved; a registration cut short (a tracking server gone for longer than the
client's retries) leaves a pending version that the next register stage finishes (when its alias
had moved) or deletes (when none had), so no version is left half-registered and no alias points
to one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from char_rnn.errors import PipelineError
from char_rnn.params import Metric, RegistryParams
from char_rnn.registry_lock import registry_lock

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"  # the champion a promotion replaced: what a rollback restores
PROFILE = "data/profile.json"  # the run's artifact that says what its model trained on (`char_rnn.drift`)
PENDING = "char_rnn.pending"  # tag of a version whose registration has not finished


class RegistrationRefused(PipelineError):
    """The run is not fit to register; no version was created and no alias moved."""


class ModelNotFound(PipelineError):
    """The registry has no version behind this URI."""


# MLflow's answers (3.17, a SQLite store and `mlflow server` alike) when there is nothing behind an alias:
# no such registered model, or a model without that alias.
NO_SUCH_MODEL = "RESOURCE_DOES_NOT_EXIST"
NO_SUCH_ALIAS = "INVALID_PARAMETER_VALUE"  # "Registered model alias champion not found."


def _champion(client: Any, name: str) -> Any | None:
    """The version behind `@champion`, or None when the model or the alias does not exist. Any other error
    (a server away, a store that cannot be read) is raised: "no champion" would crown the candidate
    without a comparison."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        missing = exc.error_code == NO_SUCH_MODEL or (exc.error_code == NO_SUCH_ALIAS and "not found" in exc.message)
        if missing:
            return None
        raise


def check_registrable(run_id: str, metric: Metric, metrics: dict[str, Any]) -> float:
    """The run's metric, or `RegistrationRefused` when the run did not finish or the metric is not finite.

    Called before anything is logged, so a refused run leaves no model behind.
    """
    from mlflow import MlflowClient

    status = MlflowClient().get_run(run_id).info.status
    value = metrics.get(metric.value)
    if status != "FINISHED" or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RegistrationRefused(f"run {run_id} is {status} with {metric.value}={value!r}; nothing registered")
    return float(value)


def registered_version(model_name: str, digest_tags: dict[str, str], bundle: tuple[str, ...]) -> str | None:
    """The version that holds exactly these files (the same `<file>_sha256` tags, no more of the files a
    version may bundle, `bundle`), if any. Other tags (the run's lineage) do not tell files apart.

    Going back to params that were already run restores the same bytes (DVC's cache; the model is
    saved byte for byte the same from the same weights): they are that version, not a new one.
    """
    from mlflow import MlflowClient

    query = " and ".join([f"name = '{model_name}'", *(f"tags.{k} = '{v}'" for k, v in sorted(digest_tags.items()))])
    file_tags = {f"{name}_sha256" for name in bundle}
    same = [
        int(version.version)
        for version in MlflowClient().search_model_versions(query)
        if file_tags.intersection(version.tags) == set(digest_tags)
    ]
    return str(min(same)) if same else None


def register_version(
    model_uri: str, model_name: str, tags: dict[str, str], description: str, ranking: RegistryParams | None = None
) -> str:
    """A new version of the logged model, with its tags and description; no alias moves here. With
    `ranking` (the registry's params), the registered model's own description says how it is ranked."""
    import mlflow
    from mlflow import MlflowClient

    with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered ..." lines: the stage says more
        version = str(mlflow.register_model(model_uri, model_name, tags={**tags, PENDING: "true"}).version)
    client = MlflowClient()
    client.update_model_version(model_name, version, description=description)
    if ranking is not None:  # rewritten at every registration: it follows a change of registry.metric
        client.update_registered_model(model_name, description=model_description(ranking))
    return version


def model_description(ranking: RegistryParams) -> str:
    """What a reviewer opening the registered model reads before any version: what it is, which figure
    ranks its versions, and how the champion is chosen (`char_rnn.gate`)."""
    metric = ranking.metric
    hybrid = "the RNN mixed with an n-gram (and, where fitted, a cache and a match model)"
    served = hybrid if metric is Metric.hybrid_bits_per_char else "the RNN"
    better = "higher" if metric.higher_is_better else "lower"
    floor = ""
    if ranking.must_beat_baseline:
        floor = " None that the n-gram beats on that text is (`registry.must_beat_baseline`)."
    return "\n\n".join(
        [
            "A character-level RNN language model of Korean text, served as a text generator: a prompt in,"
            f" its continuation out, sampled from {served}. Each run of the pipeline registers a version.",
            f"**Ranked by** `{metric.value}` (`registry.metric`; {better} is better). The register stage scores"
            " the new version and the current champion on the run's test text, which neither learnt from, by"
            " the same procedure, each through what it serves.",
            "**The champion** (`@champion`) is what serves. The new version becomes `@champion` only when it is"
            f" better by at least {ranking.min_improvement * 100:g} % (`registry.min_improvement`); else, or"
            " when the two cannot be compared fairly (no test text, or the champion learnt from it), it is"
            f" `@challenger`. A first version is champion.{floor} A person may `char-rnn promote` a version,"
            " with a reason recorded on it; the champion it replaces keeps `@previous-champion`, which"
            " `char-rnn rollback` restores.",
        ]
    )


def finish(model_name: str, version: str) -> None:
    """The last step of a registration, after its alias moved."""
    from mlflow import MlflowClient

    MlflowClient().delete_model_version_tag(model_name, version, PENDING)


def clear_pending(model_name: str) -> list[str]:
    """Finish the registrations that were cut short after their alias moved; delete the others.
    Returns what was done, one line per version."""
    from mlflow import MlflowClient

    client, done = MlflowClient(), []
    for found in client.search_model_versions(f"name = '{model_name}' and tags.`{PENDING}` = 'true'"):
        version = client.get_model_version(model_name, found.version)  # a search's results omit aliases
        if version.aliases:
            finish(model_name, version.version)
            done.append(f"version {version.version}: finished (its alias had moved)")
        else:
            client.delete_model_version(model_name, version.version)
            done.append(f"version {version.version}: deleted (its registration was cut short)")
    return done


def current_champion(model_name: str) -> Any | None:
    """The version behind `@champion`, or None (no model or no champion yet); raises MLflow's error when
    the registry cannot say (a server away, a store that cannot be read)."""
    from mlflow import MlflowClient

    return _champion(MlflowClient(), model_name)


def champion_profile(model_name: str) -> tuple[str | None, dict[str, Any] | None]:
    """The champion's version and the training profile its run kept (`data/profile.json`): (None, None)
    without a champion, (version, None) for one registered before profiles were kept."""
    import mlflow
    from mlflow import MlflowClient

    champion = current_champion(model_name)
    if champion is None:
        return None, None
    where = urlparse(MlflowClient().get_run(champion.run_id).info.artifact_uri)
    if where.scheme in ("", "file"):  # a local store: read where it lies (nothing written: a full disk is no bar)
        path = Path(unquote(where.path)) / PROFILE
        return str(champion.version), json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    folder = PROFILE.rsplit("/", 1)[0]
    if PROFILE not in {item.path for item in MlflowClient().list_artifacts(champion.run_id, folder)}:
        return str(champion.version), None  # a version from before profiles were kept
    with tempfile.TemporaryDirectory() as tmp:  # any other error (a store away) is raised, not "no profile"
        path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=PROFILE, dst_path=tmp)
        return str(champion.version), json.loads(Path(path).read_text(encoding="utf-8"))


def crown(model_name: str, version: str) -> str | None:
    """Make `version` the champion; the one it replaces keeps `@previous-champion`, so a rollback is one
    command. Returns the replaced version. A challenger alias on `version` is dropped: it won."""
    from mlflow import MlflowClient

    client = MlflowClient()
    replaced = _champion(client, model_name)
    if replaced is not None and str(replaced.version) != version:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, replaced.version)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if CHALLENGER in client.get_model_version(model_name, version).aliases:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    return str(replaced.version) if replaced is not None and str(replaced.version) != version else None


def make_challenger(model_name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, CHALLENGER, version)


def note_decision(model_name: str, version: str, decision: str, tags: dict[str, str]) -> None:
    """Add a decision to the version's description (newest last) and record it in its tags."""
    from mlflow import MlflowClient

    client = MlflowClient()
    current = client.get_model_version(model_name, version).description or ""
    client.update_model_version(model_name, version, description="\n\n".join(filter(None, [current, decision])))
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def promote(uri: str, reason: str, by: str) -> dict[str, str | None]:
    """A person's decision: `uri`'s version becomes champion, whatever the gate said, with who and why."""
    version = resolve_version(uri)
    if not reason.strip():
        raise RegistrationRefused("a promotion needs a reason (--reason), recorded on the version")
    with registry_lock(version.name):  # not between a registering run's gate and its alias
        replaced = crown(version.name, str(version.version))
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        note_decision(
            version.name,
            str(version.version),
            f"**Promoted to champion by {by}** ({when}): {reason}",
            {"promoted_by": by, "promoted_reason": reason, "promoted_at": when},
        )
    return {"model_name": version.name, "champion": str(version.version), "previous_champion": replaced}


def rollback(model_name: str, by: str) -> dict[str, str | None]:
    """`@previous-champion` becomes champion again; the champion it replaces becomes the previous one."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        previous = MlflowClient().get_model_version_by_alias(model_name, PREVIOUS_CHAMPION)
    except MlflowException:
        raise ModelNotFound(f"{model_name} has no @{PREVIOUS_CHAMPION} to roll back to") from None
    return promote(f"models:/{model_name}/{previous.version}", "rollback to the previous champion", by)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, alias, None); `models:/name/version` -> (name, None, version)."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/(\d+))", uri)
    if match is None:
        raise ModelNotFound(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, number = match.groups()
    return name, alias, number


def resolve_version(uri: str) -> Any:
    """`models:/name@alias` or `models:/name/version` -> that ModelVersion (tags included)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, number = parse_model_uri(uri)
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as exc:
        raise ModelNotFound(f"{uri}: not in the registry at {client.tracking_uri} ({exc.message})") from None
