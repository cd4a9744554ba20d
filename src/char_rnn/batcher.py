"""Requests served at the same time are generated together, one batch row each.

Why: a character of the kolaw hybrid (5 x GRU(256)) is five small matrix-vector products that read
about 7 MB of weights; four rows cost hardly more than one. The model server calls `predict` from a
thread per request, and four threads taking turns on the GIL for one row each ran at a third of one
thread's speed. So one generation thread steps every live row together (`Rows`): a request that
arrives joins the batch between two steps, and leaves it, answered, as soon as its own length is
reached, whatever the other rows still have to go. No waiting window: a lone request starts at once
and pays nothing for the batching.

Prompts are read as held-out scoring read text, and without holding anyone up. A row's recurrent
state is built from the last `context` units of its prompt (the served version's `evaluate.context`,
else `heldout.WARMUP`): held-out scoring starts each chunk's state from the `context` units before
it, so the figure a version was chosen by was measured with that much context, and reading more of a
long prompt would cost a step per unit for nothing measured. The n-gram and the cache read their own
short tails of the whole prompt, as in scoring, and the match model all of it; only the end that
anything reads is encoded (`Batcher.prepare`).

Prompts are read in chunks between the live rows' steps (chunked prefill, as vLLM and TGI do it):
each iteration of the generation thread is one model step, in which every live row reads the unit it
has just drawn and some reading rows (`Reading`) read the next unit of their prompts, those with the
fewest units left first, as many as make the step STEP_ROWS rows (at least MIN_READ; also with no
row live, for the next request arrives any moment and waits for the step under way), and the rows of
a request of more than SMALL_REQUEST rows join the live ones only while fewer than STEP_ROWS are live,
the rest waiting with their prompts read. With a
request at the limits (64 prompts of 10,000 characters) an iteration of the kolaw hybrid served to 4
clients took 1.0 ms against 0.6 ms without it (benchmarks/RESULTS.md): it slows the others' steps by
about that much while it is served, never stops them, and takes longer itself than it would alone.

Each row draws from its own generator, seeded as `Generator.generate` seeds it, and spells as it does
(`Spelling`), so a row whose prompt is within the context gets the text `generate` gives it alone (up
to the rounding of batched matrix products, which the tests have not seen change a character).
"""

from __future__ import annotations

import numbers
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from char_rnn.generate import Generation, Generator, MixtureRows, Row, Sampling, Spelling, seed_of
from char_rnn.heldout import WARMUP
from char_rnn.inference import ONE_BLAS_THREAD, NumpyModel, State, pick

MAX_ROWS = 256  # rows generated at once: four requests at the registry's default limit of 64 rows
STEP_ROWS, SMALL_REQUEST, MIN_READ = 16, 4, 4  # see the module's docstring
_NO_DRAWS = np.random.default_rng(0)  # `pick` draws nothing at temperature 0


@dataclass(frozen=True)
class Read:
    """Rows that have read their prompts: who asked (`keys`), the rows, and as one batch their recurrent
    states and next-unit probabilities."""

    keys: list[Any]
    rows: list[Row]
    states: list[State]
    probs: np.ndarray

    @classmethod
    def concat(cls, reads: list[Read]) -> Read:
        """One batch of every read's rows, in order."""
        states = [tuple(map(_stack, *layers)) for layers in zip(*(read.states for read in reads))]
        keys, rows = [key for read in reads for key in read.keys], [row for read in reads for row in read.rows]
        return cls(keys, rows, states, np.concatenate([read.probs for read in reads]))

    def take(self, rows: np.ndarray) -> Read:
        """These rows only, in this order."""
        return Read(
            [self.keys[i] for i in rows], [self.rows[i] for i in rows], _rows(self.states, rows), self.probs[rows]
        )


class Reading:
    """Rows reading the last `context` units of their prompts, a unit per step, up to `budget` rows a
    step, those with the fewest units left first (so that a short prompt is never queued behind a
    long one); a row leaves as soon as it has read all of its units. Rows may start at any step."""

    def __init__(self, model: NumpyModel, context: int) -> None:
        if context < 1:
            raise ValueError(f"context must be at least 1 unit, got {context}")
        self.model, self.context = model, context
        self.keys: list[Any] = []
        self.rows: list[Row] = []
        self.tails: list[np.ndarray] = []
        self.lengths = np.zeros(0, np.int64)  # units each row reads
        self.read = np.zeros(0, np.int64)  # units each row has read
        self.states = model.initial_state(0)

    def __len__(self) -> int:
        return len(self.rows)

    def start(self, keys: list[Any], rows: list[Row]) -> None:
        """These rows start reading, from the zero state (as Keras starts every sequence)."""
        if not rows:
            return
        tails = [np.asarray(row.ids)[-self.context :] for row in rows]
        self.keys, self.rows, self.tails = self.keys + keys, self.rows + rows, self.tails + tails
        self.lengths = np.concatenate([self.lengths, [len(tail) for tail in tails]])
        self.read = np.concatenate([self.read, np.zeros(len(rows), np.int64)])
        self.states = [  # new arrays, each its own: `update` writes into them
            tuple(map(_stack, old, new)) for old, new in zip(self.states, self.model.initial_state(len(rows)))
        ]

    def step(self, budget: int) -> Read:
        """One unit read by each of `budget` rows; returns the rows that have read all of theirs."""
        chosen, ids, states = self.inputs(budget)
        return self.update(chosen, *self.model.step(ids, states))

    def inputs(self, budget: int) -> tuple[np.ndarray, np.ndarray, list[State]]:
        """The `budget` rows with the fewest units left (the earliest first among equals), the next unit of
        each and their states: what a model step reads for them."""
        chosen = np.argsort(self.lengths - self.read, kind="stable")[:budget]
        ids = np.array([self.tails[i][self.read[i]] for i in chosen], dtype=np.int64)
        return chosen, ids, _rows(self.states, chosen)

    def update(self, chosen: np.ndarray, probs: np.ndarray, states: list[State]) -> Read:
        """The chosen rows have read a unit (`probs` and `states` from the step); returns those that have
        read all of theirs, which leave."""
        for state, new in zip(self.states, states):
            for part, value in zip(state, new):
                part[:, chosen] = value
        self.read[chosen] += 1
        finished = self.read[chosen] == self.lengths[chosen]
        done = chosen[finished]
        read = Read(
            [self.keys[i] for i in done], [self.rows[i] for i in done], _rows(self.states, done), probs[finished]
        )
        if len(done):
            going = np.setdiff1d(np.arange(len(self.rows)), done)  # in the order they started
            self.keys, self.rows = [self.keys[i] for i in going], [self.rows[i] for i in going]
            self.tails, self.states = [self.tails[i] for i in going], _rows(self.states, going)
            self.lengths, self.read = self.lengths[going], self.read[going]
        return read

    @classmethod
    def alone(cls, model: NumpyModel, row: Row, context: int) -> Read:
        """One row's prompt read by itself, to the end."""
        reading = cls(model, context)
        reading.start([None], [row])
        while not (read := reading.step(1)).rows:
            pass
        return read


class Rows:
    """The rows being generated: per row its random generator; for the batch the recurrent states, the
    next-unit probabilities, the spellings drawn so far and, for the hybrid, its parts' memory of each
    row's text (`MixtureRows`). Rows are numbered in the order they joined."""

    def __init__(self, generator: Generator, context: int = WARMUP) -> None:
        self.generator, self.context = generator, context
        self.rows: dict[int, Row] = {}
        self.rngs: dict[int, np.random.Generator] = {}
        self.added = 0
        self.live = np.zeros(0, dtype=np.int64)  # the live rows' numbers, in batch order
        self.states: list[State] = generator.model.initial_state(0)
        self.probs = np.zeros((0, generator.model.vocab_size), np.float32)
        self.spelling = Spelling(generator.units.speller, np.zeros(0, np.int64))
        self.mixing: MixtureRows | None = None  # the hybrid's parts' memory of each live row's text
        self.chosen = np.zeros(0, np.int32)  # the live rows' last units, not yet read

    def join(self, read: Read) -> list[int]:
        """Rows that have read their prompts join the batch; returns their numbers."""
        generator, prompts = self.generator, [row.ids for row in read.rows]
        mixture = generator.mixture
        mixing = MixtureRows(mixture, prompts) if mixture else None
        spelling = Spelling(generator.units.speller, np.array([row.sampling.length for row in read.rows]))
        rngs = [np.random.default_rng(seed_of(row.sampling)) for row in read.rows]
        numbers = list(range(self.added, self.added + len(read.rows)))
        states, probs = read.states, read.probs
        if len(self.live):
            states = [tuple(map(_stack, old, new)) for old, new in zip(self.states, states)]
            probs = np.concatenate([self.probs, probs])
            mixing = self.mixing.join(mixing) if self.mixing is not None and mixing else mixing
        self.states, self.probs, self.mixing = states, probs, mixing
        self.spelling = self.spelling.join(spelling)
        self.rows |= dict(zip(numbers, read.rows))
        self.rngs |= dict(zip(numbers, rngs))
        self.added += len(read.rows)
        self.live = np.concatenate([self.live, numbers])
        return numbers

    def step(self) -> list[tuple[int, Generation]]:
        """One unit for every live row; returns the rows that reached their length, which leave."""
        done = self.choose()
        self.advance()
        return done

    def choose(self) -> list[tuple[int, Generation]]:
        """Each live row's next unit, among those that may continue its spelling; the rows that have
        their length in characters leave, with their text."""
        if not len(self.live):
            return []
        mixed = self.probs if self.mixing is None else self.mixing.mix(self.probs)
        allowed = self.spelling.allowed()
        samplings = [self.rows[number].sampling for number in self.live]
        greedy = np.array([s.temperature == 0 for s in samplings])
        self.chosen = np.empty(len(self.live), np.int32)
        if greedy.all():  # drawing nothing, all at once: a `pick` call per row is ~5-15 us
            self.chosen[:] = pick(mixed, 0.0, 0, _NO_DRAWS, allowed)
        else:
            self._draw(mixed, allowed, samplings, greedy)
        self.spelling.take(self.chosen)
        finished = self.spelling.finished
        done = [(int(number), self._leave(number, j)) for j, number in enumerate(self.live) if finished[j]]
        if done:
            keep = np.flatnonzero(~finished)
            self.live, self.chosen, self.states = self.live[keep], self.chosen[keep], _rows(self.states, keep)
            for part in (self.mixing, self.spelling):
                if part is not None:
                    part.keep(keep)
        return done

    def _draw(
        self, mixed: np.ndarray, allowed: np.ndarray | None, samplings: list[Sampling], greedy: np.ndarray
    ) -> None:
        """`chosen` when some rows sample: the greedy ones at once, each other one with its own generator."""
        if greedy.any():
            self.chosen[greedy] = pick(mixed[greedy], 0.0, 0, _NO_DRAWS, None if allowed is None else allowed[greedy])
        for j in np.flatnonzero(~greedy):
            s, mask = samplings[j], None if allowed is None else allowed[j : j + 1]
            self.chosen[j] = pick(mixed[j : j + 1], s.temperature, s.top_k, self.rngs[self.live[j]], mask)[0]

    def advance(self) -> None:
        """The live rows read the units just chosen."""
        if len(self.live):
            self.update(*self.generator.model.step(*self.inputs()))

    def inputs(self) -> tuple[np.ndarray, list[State]]:
        """The units just chosen (now pushed to the hybrid's parts) and the states a model step reads them with."""
        if self.mixing is not None and len(self.live):
            self.mixing.push(self.chosen)
        return self.chosen, self.states

    def update(self, probs: np.ndarray, states: list[State]) -> None:
        """What the model step gave for the live rows."""
        self.probs, self.states = probs, states

    def _leave(self, number: int, j: int) -> Generation:
        row = self.rows.pop(number)
        del self.rngs[number]
        text = self.generator.text(self.spelling.units[j], row.sampling.length)
        return Generation(row.start.prompt, row.start.dropped, [text])


def _stack(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts, axis=1)  # (members, batch, units): rows along the batch axis


def _rows(states: list[State], rows: np.ndarray | slice) -> list[State]:
    """These rows of every layer's state (a copy for an index array)."""
    return [tuple(part[:, rows] for part in state) for state in states]


def _last_known(text: str, unknown: set[str], count: int) -> str:
    """The shortest end of `text` that holds `count` characters not in `unknown` (all of it if none does)."""
    if not unknown:
        return text[-count:]
    known = 0
    for start in range(len(text) - 1, -1, -1):
        known += text[start] not in unknown
        if known == count:
            return text[start:]
    return text


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
    small: bool  # its request has at most SMALL_REQUEST rows
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
    """The queue of rows waiting to join, and the one thread that generates every row, at most
    `max_rows` (reading, read or live) at a time, each prompt read from its last `context` units. The
    thread starts with the first request, and again if it is gone, as in a forked worker; a daemon, it
    ends with the server. It holds BLAS to one thread while it has rows, not while it waits."""

    def __init__(self, generator: Generator, max_rows: int = MAX_ROWS, context: int = WARMUP) -> None:
        if max_rows < 1 or context < 1:
            raise ValueError(f"max_rows and context must be at least 1, got {max_rows} and {context}")
        self.generator, self.max_rows, self.context = generator, max_rows, context
        self.reach = generator.reach(context)  # the end of a prompt that anything reads
        self._turn = threading.Condition()
        self._queue: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._fresh()

    def prepare(self, prompt: str, sampling: Sampling) -> Row:
        """`Generator.prepare` of the part of the prompt that is read: its last `reach` known characters
        (each is at least one unit), the characters dropped still those of the whole prompt. Encoding
        every character of 64 prompts of 10,000 took ~0.25 s of the request thread's Python, during
        which the generation thread waited for the GIL."""
        text = unicodedata.normalize("NFC", prompt)
        dropped = self.generator.units.unknown(text)
        row = self.generator.prepare(_last_known(text, set(dropped), self.reach), sampling)
        return Row(row.ids, row.sampling, Generation(row.start.prompt, dropped, []))

    def generate(self, rows: list[Row]) -> list[Generation]:
        """Each row's continuation, generated with the other requests being served."""
        for row in rows:
            check(row, self.generator.model.vocab_size)
        jobs = [_Job(row, small=len(rows) <= SMALL_REQUEST) for row in rows]
        with self._turn:
            self._queue.extend(jobs)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="char-rnn-batcher", daemon=True)
                self._thread.start()
            self._turn.notify_all()
            self._turn.wait_for(lambda: all(job.done for job in jobs))
        return [job.outcome() for job in jobs]

    def _fresh(self) -> None:
        """No row reading, read or live: how the thread starts, and goes on after a step failed."""
        self._reading, self._rows = Reading(self.generator.model, self.context), Rows(self.generator, self.context)
        self._read: list[Read] = []  # rows that have read their prompts, waiting for room to join
        self._jobs: dict[int, _Job] = {}  # the live rows' jobs, by row number

    def _serve(self) -> None:
        self._fresh()
        while True:
            with self._turn:
                self._turn.wait_for(lambda: self._queue)
            with ONE_BLAS_THREAD:
                while self._iterate():
                    pass

    def _iterate(self) -> bool:
        """Rows that arrived start reading; rows that have read their prompts join the live ones; every
        live row draws its next unit (those that have their length leave); one model step. Returns
        whether any row is left, or waiting."""
        waiting = sum(len(read.rows) for read in self._read)
        with self._turn:
            free = self.max_rows - len(self._rows.live) - len(self._reading) - waiting
            joining, self._queue = self._queue[:free], self._queue[free:]
        self._reading.start(joining, [job.row for job in joining])
        ended = self._join() + self._choose() + self._step()  # requests answered or failed: their threads are woken
        with self._turn:
            if ended:
                self._turn.notify_all()
            return bool(self._queue or len(self._rows.live) or len(self._reading) or self._read)

    def _join(self) -> list[_Job]:
        """Read rows join the live ones: a small request's at once, a larger one's while fewer than
        STEP_ROWS rows are live, the shortest first. A failed join fails the rows joining."""
        room = STEP_ROWS - len(self._rows.live)
        if not any(room > 0 or job.small for read in self._read for job in read.keys):
            return []
        read = Read.concat(self._read)
        small = [i for i, job in enumerate(read.keys) if job.small]
        large = sorted(
            (i for i, job in enumerate(read.keys) if not job.small), key=lambda i: read.rows[i].sampling.length
        )
        joining = np.array(sorted(small + large[: max(room - len(small), 0)]), dtype=np.int64)
        waiting = np.setdiff1d(np.arange(len(read.rows)), joining)
        self._read = [read.take(waiting)] if len(waiting) else []
        if not len(joining):
            return []
        joined = read.take(joining)
        try:
            self._jobs.update(zip(self._rows.join(joined), joined.keys))
        except Exception as exc:
            return self._fail(joined.keys, exc)
        return []

    def _choose(self) -> list[_Job]:
        """A failed draw fails the live rows."""
        ended: list[_Job] = []
        try:
            for number, generation in self._rows.choose():
                self._jobs[number].generation = generation
                ended.append(self._jobs.pop(number))
        except Exception as exc:  # the rows still going learn why; none waits forever
            ended += self._fail(list(self._jobs.values()), exc)
            self._rows, self._jobs = Rows(self.generator, self.context), {}
        return ended

    def _step(self) -> list[_Job]:
        """One model step: every live row reads the unit it drew and up to STEP_ROWS less their number (at
        least MIN_READ) reading rows read their next unit. A failed step fails the rows in it."""
        live, reading = len(self._rows.live), len(self._reading)
        if not live + reading:
            return []
        try:
            if not reading:  # nothing to read: the live rows' step alone, without gathering
                self._rows.advance()
                return []
            ids, states = self._rows.inputs()
            chosen, read_ids, read_states = self._reading.inputs(max(MIN_READ, STEP_ROWS - live))
            both = [tuple(map(_stack, mine, theirs)) for mine, theirs in zip(states, read_states)]
            probs, states = self.generator.model.step(np.concatenate([ids, read_ids]), both)
            self._rows.update(probs[:live], _rows(states, slice(0, live)))
            read = self._reading.update(chosen, probs[live:], _rows(states, slice(live, None)))
        except Exception as exc:
            failed = list(self._jobs.values()) + self._reading.keys
            self._reading, self._rows, self._jobs = (
                Reading(self.generator.model, self.context),
                Rows(self.generator, self.context),
                {},
            )
            return self._fail(failed, exc)
        self._read += [read] if read.rows else []
        return []

    @staticmethod
    def _fail(jobs: list[_Job], error: Exception) -> list[_Job]:
        for job in jobs:
            job.error = error
        return jobs
