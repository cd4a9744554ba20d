"""Faults of the machine rather than of the pipeline, told in one line: a full disk, a tracking
server that stays away. Both surface deep inside MLflow, SQLite or Keras as their own exceptions; the
drivers ask here whether an unexpected exception is one of them (anything else keeps its traceback).
No retry follows: a full disk fails the same way again, and MLflow's client has already retried the
server with backoff.
"""

from __future__ import annotations

import errno

from char_rnn.errors import PipelineError

NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)  # a write refused until a person acts
# How MLflow and SQLite report it once they have turned the OSError into their own exception.
NO_SPACE_WORDS = (
    "No space left on device",
    "File too large",
    "Disk quota exceeded",
    "Read-only file system",
    "database or disk is full",
    "disk I/O error",  # SQLite, when a write it needs fails
)


def unreachable(exc: Exception) -> PipelineError | None:
    """A tracking server that stayed away longer than MLflow's client retries (with backoff, about
    4 minutes by default: MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR)."""
    if "Max retries exceeded" not in str(exc):
        return None
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
    from mlflow.tracking import get_tracking_uri

    return PipelineError(
        f"the MLflow tracking server {get_tracking_uri()} did not answer"
        f" ({MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries with backoff); rerun when it is back"
    )


def no_space(exc: Exception) -> PipelineError | None:
    """A full disk (a file-size or quota limit, a read-only file system), wherever it surfaced: one
    line, and no retry would help."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            where = f" {cause.filename}" if cause.filename else ""
            return PipelineError(f"could not write{where}: {cause.strerror} (disk full or a file-size limit)")
        cause = cause.__cause__ or cause.__context__
    said = [words for words in NO_SPACE_WORDS if words in str(exc)]
    if said:
        return PipelineError(f"could not write: {said[0]} in {type(exc).__name__} (disk full or a file-size limit)")
    return None


def environment_fault(exc: Exception) -> PipelineError | None:
    return no_space(exc) or unreachable(exc)
