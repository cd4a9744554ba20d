"""Requests served at the same time are generated together, one batch row each.

Why: a character of the kolaw hybrid (5 x GRU(256)) is five small matrix-vector products that read
about 7 MB of weights; four rows cost hardly more than one. The model server calls `predict` from a
thread per request, and four threads taking turns on the GIL for one row each ran at a third of one
thread's speed. So one generation thread steps every live row together (`Rows`): a request that
arrives joins the batch before the next character, and leaves it, answered, as soon as its own
length is reached, whatever the other rows still have to go. No waiting window: a lone request
starts at once and pays nothing for the batching.

Each row reads its prompt alone and draws from its own generator, seeded as `Generator.generate`
seeds it, so a row gets the text `generate` gives it alone (up to the rounding of a batched matrix
product, which the tests have not seen change a character).
"""

from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass

import numpy as np

from char_rnn import cache
from char_rnn.generate import Generation, Generator, Row, Sampling, seed_of
from char_rnn.inference import NumpyModel, State, pick
from char_rnn.ngram import Suffixes


class Rows:
    """The rows being generated: per row its text so far and its random generator; for the batch the
    recurrent states, the next-character probabilities and, for the hybrid, the n-gram's suffixes and
    the cache. Rows are numbered in the order they were added."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.rows: dict[int, Row] = {}
        self.texts: dict[int, list[int]] = {}
        self.rngs: dict[int, np.random.Generator] = {}
        self.added = 0
        self.live = np.zeros(0, dtype=np.int64)  # the live rows' numbers, in batch order
        self.states: list[State] = []
        self.probs = np.zeros((0, generator.model.vocab_size), np.float32)
        self.suffixes: Suffixes | None = None
        self.recent: cache.Recent | None = None
        self.chosen = np.zeros(0, np.int32)  # the live rows' last characters, not yet read

    def add(self, rows: list[Row]) -> list[int]:
        """The rows join the batch (their prompts read first); returns their numbers."""
        generator, prompts = self.generator, [row.ids for row in rows]
        mixture = generator.mixture
        states, probs = read_prompts(generator.model, prompts)
        suffixes = Suffixes.of_rows(mixture.ngram, prompts) if mixture else None
        window = mixture.weights.cache_window if mixture else 0
        recent = cache.Recent(prompts, generator.model.vocab_size, window) if window else None
        numbers = list(range(self.added, self.added + len(rows)))
        for number, row in zip(numbers, rows):
            self.rows[number], self.texts[number] = row, []
            self.rngs[number] = np.random.default_rng(seed_of(row.sampling))
        self.added += len(rows)
        if len(self.live):
            states = [tuple(map(_stack, old, new)) for old, new in zip(self.states, states)]
            probs = np.concatenate([self.probs, probs])
            suffixes = self.suffixes.join(suffixes) if self.suffixes is not None and suffixes else suffixes
            recent = self.recent.join(recent) if self.recent is not None and recent else recent
        self.states, self.probs, self.suffixes, self.recent = states, probs, suffixes, recent
        self.live = np.concatenate([self.live, numbers])
        return numbers

    def step(self) -> list[tuple[int, Generation]]:
        """One character for every live row; returns the rows that reached their length, which leave."""
        done = self.choose()
        self.advance()
        return done

    def choose(self) -> list[tuple[int, Generation]]:
        """Each live row's next character; the rows that reached their length leave, with their text."""
        if not len(self.live):
            return []
        generator = self.generator
        mixed = self.probs if self.suffixes is None else generator.mixture.mix(self.probs, self.suffixes, self.recent)
        self.chosen = np.empty(len(self.live), np.int32)
        for j, number in enumerate(self.live):
            sampling = self.rows[number].sampling
            self.chosen[j] = pick(mixed[j : j + 1], sampling.temperature, sampling.top_k, self.rngs[number])[0]
            self.texts[number].append(int(self.chosen[j]))
        going = np.array([len(self.texts[n]) < self.rows[n].sampling.length for n in self.live], dtype=bool)
        done = [(int(number), self._leave(number)) for number in self.live[~going]]
        if done:
            keep = np.flatnonzero(going)
            self.live, self.chosen = self.live[keep], self.chosen[keep]
            self.states = [tuple(part[:, keep] for part in state) for state in self.states]
            for part in (self.suffixes, self.recent):
                if part is not None:
                    part.keep(keep)
        return done

    def advance(self) -> None:
        """The live rows read the characters just chosen."""
        if not len(self.live):
            return
        for part in (self.suffixes, self.recent):
            if part is not None:
                part.push(self.chosen)
        self.probs, self.states = self.generator.model.step(self.chosen, self.states)

    def _leave(self, number: int) -> Generation:
        row, text = self.rows.pop(number), self.texts.pop(number)
        del self.rngs[number]
        return Generation(row.start.prompt, row.start.dropped, [self.generator.units.decode(text)])


def read_prompts(model: NumpyModel, prompts: list[np.ndarray]) -> tuple[list[State], np.ndarray]:
    """Each prompt read alone (batch 1, as `generate` reads it), the states then stacked as one batch."""
    read = []
    for ids in prompts:
        states = model.initial_state(1)
        for i in ids:
            probs, states = model.step(np.array([i]), states)
        read.append((states, probs))
    stacked = [tuple(map(_stack, *(states[layer] for states, _ in read))) for layer in range(len(read[0][0]))]
    return stacked, np.concatenate([probs for _, probs in read])


def _stack(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts, axis=1)  # (members, batch, units): rows along the batch axis


def check(row: Row, vocab_size: int) -> None:
    """Refuses, with a ValueError in the caller's thread, a row that would break the batch it joins, so
    that it fails alone and the requests beside it are answered: ids that are not a non-empty 1-d array
    of integers in [0, vocab_size), or sampling values of the wrong type (`Sampling` checks ranges only;
    a fractional top_k once killed the generation thread)."""
    ids = np.asarray(row.ids)
    if ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"a prompt must be a non-empty 1-d array of integer ids, got {ids.dtype} {ids.shape}")
    if not 0 <= ids.min() <= ids.max() < vocab_size:
        raise ValueError(f"ids must be in [0, {vocab_size}), got {ids.min()} .. {ids.max()}")
    sampling = row.sampling
    if not isinstance(sampling, Sampling):
        raise ValueError(f"sampling must be a Sampling, got {type(sampling).__name__}")
    whole = {"length": sampling.length, "top_k": sampling.top_k, "seed": 0 if sampling.seed is None else sampling.seed}
    for name, value in whole.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not isinstance(sampling.temperature, numbers.Real):
        raise ValueError(f"temperature must be a number, got {sampling.temperature!r}")


@dataclass
class _Job:
    row: Row
    generation: Generation | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.generation is not None or self.error is not None

    def outcome(self) -> Generation:
        if self.error is not None:
            raise self.error
        assert self.generation is not None
        return self.generation


class Batcher:
    """The queue of rows waiting to join, and the one thread that generates every live row, at most
    `max_rows` at a time (started with the first request, and again if it is gone, as in a forked
    worker; a daemon, it ends with the server)."""

    def __init__(self, generator: Generator, max_rows: int = 64) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.generator, self.max_rows = generator, max_rows
        self._turn = threading.Condition()
        self._queue: list[_Job] = []
        self._thread: threading.Thread | None = None

    def generate(self, rows: list[Row]) -> list[Generation]:
        """Each row's continuation, generated with the other requests being served."""
        for row in rows:
            check(row, self.generator.model.vocab_size)
        jobs = [_Job(row) for row in rows]
        with self._turn:
            self._queue.extend(jobs)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="char-rnn-batcher", daemon=True)
                self._thread.start()
            self._turn.notify_all()
            self._turn.wait_for(lambda: all(job.done for job in jobs))
        return [job.outcome() for job in jobs]

    def _serve(self) -> None:
        rows, jobs = Rows(self.generator), {}
        while True:
            with self._turn:
                if not len(rows.live):
                    self._turn.wait_for(lambda: self._queue)
                free = self.max_rows - len(rows.live)
                joining, self._queue = self._queue[:free], self._queue[free:]
            ended: list[_Job] = []  # requests answered or failed in this step: their threads are woken
            try:  # rows that cannot join (their prompt cannot be read) fail alone
                jobs.update(zip(rows.add([job.row for job in joining]), joining) if joining else ())
            except Exception as exc:
                ended += self._fail(joining, exc)
            for number, generation in rows.choose():
                jobs[number].generation = generation
                ended.append(jobs.pop(number))
            try:
                rows.advance()
            except Exception as exc:  # the rows still going learn why; none waits forever
                ended += self._fail(list(jobs.values()), exc)
                rows, jobs = Rows(self.generator), {}
            if ended:
                with self._turn:
                    self._turn.notify_all()

    @staticmethod
    def _fail(jobs: list[_Job], error: Exception) -> list[_Job]:
        for job in jobs:
            job.error = error
        return jobs
