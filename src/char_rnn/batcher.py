"""Requests that arrive together are generated together, as one batch.

Why: a character of the kolaw hybrid (5 x GRU(256)) is five small matrix-vector products that read
about 7 MB of weights; four rows cost hardly more than one. The model server calls `predict` from a
thread per request, and four threads taking turns on the GIL for one row each ran at a third of one
thread's speed. So the rows of the requests waiting while a batch runs form the next batch
(`Generator.generate_rows`), and each request returns as soon as its own rows are done. There is no
waiting window: a lone request starts at once and pays nothing for the batching.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from char_rnn.generate import Generation, Generator, Row


@dataclass
class _Job:
    row: Row
    generation: Generation | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.generation is not None or self.error is not None


class Batcher:
    """Runs one batch at a time; whichever waiting request finds none running runs the next one."""

    def __init__(self, generator: Generator, max_rows: int = 64) -> None:
        self.generator, self.max_rows = generator, max_rows
        self._turn = threading.Condition()
        self._queue: list[_Job] = []
        self._running = False

    def generate(self, rows: list[Row]) -> list[Generation]:
        """Each row's continuation, generated with whatever other requests are waiting."""
        jobs = [_Job(row) for row in rows]
        with self._turn:
            self._queue.extend(jobs)
        while True:
            with self._turn:
                while self._running and not all(job.done for job in jobs):
                    self._turn.wait()
                if all(job.done for job in jobs):
                    return [self._outcome(job) for job in jobs]
                self._running = True
                batch, self._queue = self._queue[: self.max_rows], self._queue[self.max_rows :]
            try:
                self._run(batch)
            finally:
                with self._turn:
                    self._running = False
                    self._turn.notify_all()

    def _run(self, batch: list[_Job]) -> None:
        try:
            for i, generation in self.generator.generate_rows([job.row for job in batch]):
                with self._turn:
                    batch[i].generation = generation
                    self._turn.notify_all()
        except Exception as exc:  # every request of the batch learns why, none waits forever
            with self._turn:
                for job in batch:
                    if not job.done:
                        job.error = exc

    @staticmethod
    def _outcome(job: _Job) -> Generation:
        if job.error is not None:
            raise job.error
        assert job.generation is not None
        return job.generation
