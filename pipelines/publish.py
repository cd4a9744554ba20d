"""A worker's run reaches the team: its record, committed on a run branch of the repository it came from.

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

import subprocess
import time
from pathlib import Path
from typing import Any


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
