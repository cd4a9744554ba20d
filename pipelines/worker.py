"""The model worker: a child process that runs the stages that need TensorFlow and MLflow.

Why a child process: Prefect's `timeout_seconds` cannot interrupt a blocking `model.fit` in a
worker thread, but a process can always be stopped. A stage that outlives its time budget, or a
flow run that is cancelled, ends the worker: SIGTERM first (raised as `SystemExit` inside `fit`, so
MLflow marks the run FAILED and no model file is written), SIGKILL after a grace period.

Why one long-lived worker rather than one process per stage: it starts importing TensorFlow and
MLflow (the slowest imports by far) as soon as the flow starts, while the flow's own process runs the
data stages, and the import is paid once for every stage that needs them. That overlap is what keeps
the flow's cost close to a direct run.

Protocol: one JSON request per line on the worker's stdin, one JSON reply per line on its stdout;
the worker points its own stdout at stderr so that library output never mixes into the replies.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from char_rnn.errors import PipelineError
from char_rnn.layout import Layout
from char_rnn.params import Params
from pipelines.failures import RemotePipelineError, TransientError, WorkerFailed, is_transient, machine_fault

GRACE_S = 10.0


class StageTimedOut(PipelineError):
    """A stage used up its time budget; the worker was stopped. Not retried: it would time out again."""


class ModelWorker:
    """Parent side: starts the worker, sends it stage requests, and stops it whatever happens."""

    _prestarted: ClassVar[dict[Path, ModelWorker]] = {}

    @classmethod
    def prestart(cls, root: Path) -> ModelWorker:
        """Start the worker before Prefect is even imported, so TensorFlow loads while Prefect starts
        (a command-line run); the flow then `claim`s it instead of starting its own."""
        worker = cls._prestarted[root] = cls(root)
        return worker

    @classmethod
    def claim(cls, root: Path) -> ModelWorker:
        """The worker prestarted for `root` in this process, else a new one."""
        return cls._prestarted.pop(root, None) or cls(root)

    def __init__(self, root: Path, run_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        """`run_dir`: where this worker's model and reports go (a sweep trial's folder); default `root`.
        `env`: set for the worker on top of this process's environment."""
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"), **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.worker", str(root), str(run_dir or root), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
            text=True,
            encoding="utf-8",
        )

    def __enter__(self) -> ModelWorker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop(graceful=kind is None)

    def call(self, stage: str, params: Params, timeout_s: float, tags: dict[str, str] | None = None) -> dict[str, Any]:
        """Run one stage in the worker; stop the worker and raise `StageTimedOut` after `timeout_s`."""
        request = {"stage": stage, "params": params.model_dump(mode="json"), "tags": tags or {}}
        assert self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WorkerFailed(f"the model worker exited with code {self.process.wait()}") from None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            self.stop(graceful=False)
            raise StageTimedOut(f"{stage} ran longer than its time budget of {timeout_s:g} s and was stopped")
        line = self.process.stdout.readline()
        if not line:
            raise WorkerFailed(_died(self.process.wait(), stage))
        return _unpack(json.loads(line))

    def stop(self, graceful: bool) -> None:
        """Closing stdin ends an idle worker; otherwise SIGTERM, then SIGKILL after a grace period."""
        if self.process.stdin and not self.process.stdin.closed:
            with suppress(BrokenPipeError):
                self.process.stdin.close()
        if graceful and _waited(self.process, GRACE_S):
            return
        if self.process.poll() is None:
            self.process.terminate()
            if not _waited(self.process, GRACE_S):
                self.process.kill()
                self.process.wait()


def _waited(process: subprocess.Popen, timeout_s: float) -> bool:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _unpack(reply: dict[str, Any]) -> dict[str, Any]:
    """Turn a reply back into a result or into the exception class that decides retries."""
    if "result" in reply:
        return reply["result"]
    error = reply["error"]
    message = f"{error['type']}: {error['message']}"
    if error["user_error"]:
        raise RemotePipelineError(message)
    if error["transient"]:
        raise TransientError(message)
    raise WorkerFailed(f"{message}\n{error['traceback']}")


def _died(code: int, stage: str) -> str:
    """Why the worker is gone, and that a rerun does not start training over (`char_rnn.checkpoint`)."""
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    resumes = "; a rerun resumes training from its last completed epoch" if stage in ("train", "refit") else ""
    return f"the model worker {how} during {stage}{resumes}"


# ---- worker side -------------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent(parent: int) -> None:
    """A flow process killed outright (SIGKILL) cannot stop its worker: the worker notices instead."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def _handle(request: dict[str, Any], layout: Layout) -> dict[str, Any]:
    from char_rnn import stages
    from char_rnn.params import parse_params

    try:
        params = parse_params(request["params"])
        if request["stage"] == "train":
            return {"result": stages.train(params, layout, tags=request["tags"])}
        return {"result": stages.stage(request["stage"]).run(params, layout)}
    except Exception as exc:
        return {"error": _error(machine_fault(exc) or exc)}


def _error(exc: Exception) -> dict[str, Any]:
    """What the parent needs to decide: a user's error or the machine's fault (one line, never retried),
    transient (retried), else a bug (its traceback)."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "user_error": isinstance(exc, PipelineError),
        "transient": is_transient(exc),
        "traceback": traceback.format_exc(),
    }


def main() -> None:
    root, run_dir, parent = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    layout = Layout(root).for_run(run_dir)
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    threading.Thread(target=_die_with_parent, args=(parent,), daemon=True).start()
    from char_rnn.quiet import import_tensorflow

    import_tensorflow()  # the warm-up, most of a small run's cost
    import mlflow.pyfunc  # noqa: F401  (what train logs to, and register logs the generator with)

    import char_rnn.model  # noqa: F401

    for line in sys.stdin:
        replies.write(json.dumps(_handle(json.loads(line), layout), ensure_ascii=False, default=str) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
