"""What ties a model to its making: file hashes, the git commit, pinned requirements.

Low in the import order so that every stage, the registry and the serving code share one definition
of each: DVC's md5 (what `dvc.lock` shows), the sha256 a registered file is checked against before
it is loaded, and the pins MLflow records with a logged model.
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

from char_rnn.errors import PipelineError

# What reading the bundled files needs: the NumPy runtime (`char_rnn.inference`) reads the .keras file
# with h5py and caps BLAS threads with threadpoolctl; hybrid.json and the params are read with pydantic
# and PyYAML. No TensorFlow, no Keras: the served generator never imports them.
MODEL_PACKAGES = ("numpy", "h5py", "threadpoolctl", "pydantic", "pyyaml")
SERVING_PACKAGES = ("mlflow", "pandas")  # what the generator pyfunc needs on top


class ModelIntegrityError(PipelineError):
    """A model file differs from the sha256 recorded for it, or none was recorded: it is not loaded."""


def file_md5(path: Path) -> str:
    """DVC 3 records a file by the md5 of its bytes: this is the hash `dvc.lock` shows for it."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Refuse a file whose bytes are not the ones registered: checked before Keras reads a byte of it."""
    if not expected:
        raise ModelIntegrityError(f"{path.name}: no sha256 was recorded for it; register the model again")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{path.name}: sha256 {actual} does not match the registered {expected}; the file was changed"
            " after registration and is not loaded"
        )


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "none"


def pip_requirements(*extra: str) -> list[str]:
    """Pinned from what is installed: without them MLflow asks pip over the network (23 s vs 0.3 s)."""
    return [f"{name}=={metadata.version(name)}" for name in (*MODEL_PACKAGES, *extra)]
