"""What a run tells: its outcome (the flow run's final message), its report (the markdown artifact), and for
a work-pool worker its record, committed on a run branch of the repository it came from.

The outcome and the report read the stages' own records (`reports/registration.json`) and summary lines;
nothing is computed here.

A work-pool worker runs the flow in a temporary clone that is deleted when the run ends. `dvc push`
(`pipelines.versioning`) sends the outputs to the team's DVC remote; this commits what git keeps of
the run (dvc.lock, params.yaml, and the metrics, epoch tables and plot that dvc.yaml leaves to git)
on a new branch `runs/<UTC time>-<flow run name>` and pushes it to `origin`. A teammate gets exactly
that model with `git fetch origin && git switch <branch> && dvc pull`; merging it is an ordinary review.

Why a branch and not a DVC experiment (`dvc exp save` + `dvc exp push`): a branch is what `git fetch`
brings and what every git server, UI and review tool lists; experiments live under `refs/exps/`, which
`git fetch` skips, hosting UIs hide, and only `dvc exp list` shows. A new branch per run never conflicts
with people or with another run, where a push to main would.

Git's identity comes from the environment (GIT_AUTHOR_NAME, ...: the deployment's job variables), and
the worker needs push access to the repository its deployment clones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from char_rnn.layout import Layout
from char_rnn.tracking import LOCAL_UI, MODEL_TRAINING_VIEW

NOTHING_RAN = "up to date: nothing changed (DVC skipped every stage)"


class PublishFailed(Exception):
    """A git command failed; the message carries git's own (retried when it reads as transient)."""


def run_branch(flow_run_name: str) -> str:
    """`runs/20261130-020013-crimson-otter`: sorts by time, says which flow run, unique per run."""
    return f"runs/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{flow_run_name}"


def git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PublishFailed(f"git {args[0]}: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()


def publish_run(root: Path, branch: str, message: str) -> dict[str, Any]:
    """Commit the recorded run on `branch` and push the branch to origin. Safe to retry: each step is
    skipped when already done (on the branch, nothing left to commit)."""
    if git(root, "branch", "--show-current") != branch:
        git(root, "switch", "--create", branch)
    git(root, "add", "--all")  # .gitignore (DVC's own entries too) keeps outputs, caches and secrets out
    if git(root, "status", "--porcelain"):
        git(root, "commit", "--quiet", "--message", message)
    git(root, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
    commit = git(root, "rev-parse", "HEAD")  # origin's URL is not shown: it may hold an access token
    return {
        "branch": branch,
        "commit": commit,
        "summary": f"dvc.lock and metrics on branch {branch} ({commit[:7]}) of origin",
    }


def outcome(results: dict[str, Any], layout: Layout) -> str:
    """One line for the run's final state: the registry's decision with the figures it compared (this
    model, the champion's, the n-gram's), or that DVC found nothing to rerun."""
    if all(result.get("how") == "skipped" for result in results.values()):
        return NOTHING_RAN
    record = json.loads(layout.registration.read_text(encoding="utf-8"))
    name, version = record["model_name"], record["version"]
    if results["register"]["how"] != "ran":
        return f"nothing registered: the model and its figures are unchanged ({name} version {version}, as before)"
    if record["already_registered"]:
        return f"{name} version {version} holds these files already: nothing registered"
    return f"{name} version {version} is {record['alias']}: {record['gate']['reason']}"


def report(results: dict[str, Any], said: str, changed: dict[str, tuple[Any, Any]], layout: Layout) -> str:
    """The flow run's markdown artifact: the outcome, one figure per model, where to look in MLflow,
    what DVC did with each stage, and the params that differ from the committed params.yaml."""
    lines = [f"## {said}", ""]
    if "register" in results and layout.registration.is_file():
        lines += _figures(json.loads(layout.registration.read_text(encoding="utf-8")), results)
    if stages := [(name, result) for name, result in results.items() if "how" in result]:
        lines += ["### Stages (what DVC did)", "", "| stage | DVC | summary |", "|---|---|---|"]
        lines += [f"| {name} | {result['how']} | {_cell(result['summary'])} |" for name, result in stages]
        lines.append("")
    lines += ["### Params that differ from the committed params.yaml", ""]
    if changed:
        lines += ["| param | committed | this run |", "|---|---|---|"]
        lines += [f"| `{key}` | {_cell(old)} | {_cell(new)} |" for key, (old, new) in changed.items()]
    else:
        lines.append("none: the run used params.yaml as committed")
    return "\n".join(lines) + "\n"


def _figures(record: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """One row per model the gate compared, then the links to MLflow."""
    name, version, gate = record["model_name"], record["version"], record.get("gate") or {}
    figure = gate.get("figure", record["metric"])
    rows = [(f"this run: {name} version {version}", gate.get("candidate", record["value"]))]
    if gate.get("champion") is not None:
        rows.append((f"champion: version {gate['champion_version']}", gate["champion"]))
    if gate.get("ngram") is not None:
        rows.append(("n-gram baseline", gate["ngram"]))
    lines = [f"| model | {figure} |", "|---|---|", *(f"| {who} | {value:.4f} |" for who, value in rows), ""]
    server = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = server.rstrip("/") if server.startswith("http") else LOCAL_UI
    links = [f"[{name} version {version}]({base}/#/models/{name}/versions/{version}{MODEL_TRAINING_VIEW})"]
    if run := re.search(r"https?://\S+", results.get("train", {}).get("summary", "")):
        links.append(f"[the training run]({run.group(0)})")
    where = "" if server.startswith("http") else " (the project's own store: start its UI with `make ui` first)"
    return [*lines, f"MLflow: {' · '.join(links)}{where}", ""]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
