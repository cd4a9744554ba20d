"""The generator pyfunc: request rows, and a real `mlflow models serve` of the registered champion."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from char_rnn.generate import Generation, GenerationError, Generator, Mixture, Row, Sampling
from char_rnn.hybrid import Weights
from char_rnn.layout import Layout
from char_rnn.params import Params
from char_rnn.units import CLOSED, Units
from conftest import BIN, SEED, TEXT_VOCAB, as_runtime, free_port


def test_request_rows_take_defaults_for_missing_values() -> None:
    from char_rnn.serving import sampling_of

    assert sampling_of({"prompt": "가"}) == Sampling()
    assert sampling_of({"length": float("nan"), "temperature": None, "top_k": 3.0, "seed": "7"}) == Sampling(
        top_k=3, seed=7
    )
    with pytest.raises(GenerationError, match="whole number"):
        sampling_of({"length": 2.5})
    with pytest.raises(GenerationError, match="must be a number"):
        sampling_of({"seed": "abc"})


def test_a_prompt_that_is_not_text_is_refused_alike_by_the_rnn_and_the_hybrid(untrained, text) -> None:
    from mlflow.exceptions import MlflowException

    from char_rnn.ngram import KneserNey
    from char_rnn.serving import CharRNNGenerator

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    mixture = Mixture(KneserNey.fit(text, TEXT_VOCAB, 3), Weights(0.5, 0.3, 0.2, cache_window=5))
    for generator in (
        Generator(as_runtime(untrained), Units(CLOSED, chars)),
        Generator(as_runtime(untrained), Units(CLOSED, chars), mixture),
    ):
        served = CharRNNGenerator({})
        served.use(generator)
        answer = served.predict(None, pd.DataFrame([{"prompt": chars[3] + chars[1], "length": 5, "temperature": 0}]))
        assert len(answer["text"][0]) == 5
        for bad in (5, 2.5, None, [chars[0]]):
            with pytest.raises(MlflowException, match="prompt must be text") as refused:
                served.predict(None, pd.DataFrame([{"prompt": bad, "length": 5}]))
            assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400


def ask_together(
    batcher: object, rows: dict[str, list[Row]], pause: float = 0.0
) -> tuple[dict[str, object], list[str]]:
    """Each request from its own thread (in the order given, `pause` seconds apart), as the server's
    threads call the batcher: its answer, or the exception it raised, and the order they ended in."""
    import threading

    outcomes: dict[str, object] = {}
    order: list[str] = []

    def ask(name: str) -> None:
        try:
            outcomes[name] = batcher.generate(rows[name])
        except Exception as exc:  # the test looks at it: no exception is left unhandled in a thread
            outcomes[name] = exc
        order.append(name)

    threads = [threading.Thread(target=ask, args=(name,), daemon=True) for name in rows]
    for thread in threads:
        thread.start()
        time.sleep(pause)
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), f"unanswered after 120 s: {set(rows) - set(order)}"
    return outcomes, order


def test_concurrent_requests_each_get_their_own_text_and_a_short_one_does_not_wait_for_a_long_one(
    untrained,
) -> None:
    """The server's threads hand their rows to one generation thread (char_rnn.batcher)."""
    from char_rnn.batcher import Batcher

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    generator = Generator(as_runtime(untrained), Units(CLOSED, chars))
    batcher = Batcher(generator)
    requests = {"long": (chars[1] * 3, Sampling(length=10_000, temperature=0.0))}  # the others arrive meanwhile
    requests |= {
        f"r{i}": (chars[i] + chars[2 * i], Sampling(length=20 + i, temperature=1.0, seed=i)) for i in range(1, 7)
    }
    rows = {name: [generator.prepare(*request)] for name, request in requests.items()}
    answers, order = ask_together(batcher, rows)
    assert order[-1] == "long" and sorted(order) == sorted(requests)
    assert all(answers[name] == [generator.generate(*request)] for name, request in requests.items())
    # The thread serves on: a second round, answered afresh, gets each text again.
    again, _ = ask_together(batcher, {name: rows[name] for name in ("r1", "r2")})
    assert all(again[name] == [generator.generate(*requests[name])] for name in ("r1", "r2"))
    with pytest.raises(ValueError, match="max_rows"):
        Batcher(generator, max_rows=0)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (Row(np.array([TEXT_VOCAB + 5]), Sampling(length=5), Generation("", "", [])), r"ids must be in \[0, 40\)"),
        (Row(np.array([2.0, 3.0]), Sampling(length=5), Generation("", "", [])), "integer ids"),
        (Row(np.array([2, 3]), Sampling(length=5, top_k=2.5), Generation("", "", [])), "top_k must be a whole number"),
    ],
)
def test_a_malformed_row_fails_alone_when_it_would_join_in_the_same_step_as_a_good_request(
    untrained, bad: Row, reason: str
) -> None:
    """A batch of two rows kept full by a long request: the malformed row and the good request wait in
    the queue and would join in the same step when it empties. The malformed one is refused before it
    joins (an id past the vocabulary once failed both with an IndexError in the generation thread, and a
    fractional top_k killed the thread, leaving every caller waiting); the good one gets its text."""
    from char_rnn.batcher import Batcher

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    generator = Generator(as_runtime(untrained), Units(CLOSED, chars))
    long, good = (
        (chars[1] * 3, Sampling(length=10_000, temperature=0.0)),
        (chars[4] + chars[7], Sampling(20, 1.0, seed=4)),
    )
    rows = {"long": [generator.prepare(*long)] * 2, "bad": [bad], "good": [generator.prepare(*good)]}
    outcomes, _ = ask_together(Batcher(generator, max_rows=2), rows, pause=0.05)
    assert outcomes["good"] == [generator.generate(*good)]
    assert isinstance(outcomes["bad"], ValueError) and re.search(reason, str(outcomes["bad"])), outcomes["bad"]
    assert outcomes["long"] == [generator.generate(*long)] * 2


@pytest.mark.parametrize("hybrid", [False, True])
def test_long_prompts_are_read_between_the_steps_of_the_others(untrained, text, hybrid: bool) -> None:
    """Chunked prefill: 64 rows whose prompts are as long as the context (500 characters by default) read
    them one character per row and step, as one batch, while a short request that arrives meanwhile
    joins, generates its 5 characters and leaves; once, it waited for every prompt to be read. Within
    the context, each row gets the text `generate` gives it alone."""
    from char_rnn.batcher import Batcher
    from char_rnn.ngram import KneserNey

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    mixture = Mixture(KneserNey.fit(text, TEXT_VOCAB, 3), Weights(0.5, 0.3, 0.2, cache_window=5)) if hybrid else None
    generator = Generator(as_runtime(untrained), Units(CLOSED, chars), mixture)
    prompts = ["".join(chars[i] for i in np.roll(text, -7 * k)[:500]) for k in range(8)]
    long = [(prompt, Sampling(length=2_000, temperature=0.0)) for prompt in prompts]
    short = (chars[3] + chars[5], Sampling(length=5, temperature=0.0))
    rows = {"long": [generator.prepare(*request) for request in long] * 8, "short": [generator.prepare(*short)]}
    outcomes, order = ask_together(Batcher(generator), rows, pause=0.02)
    assert order == ["short", "long"]
    assert outcomes["short"] == [generator.generate(*short)]
    assert outcomes["long"] == [generator.generate(*request) for request in long] * 8


def test_open_units_rows_spell_as_generate_spells_them(untrained) -> None:
    """With open units a character takes one to four draws, each among the units that continue a
    well-formed spelling, and a row leaves once it has `length` characters: each request, served
    together with the others, gets the text `generate` gives it alone."""
    import keras

    from char_rnn.batcher import Batcher
    from char_rnn.model import build_model
    from char_rnn.params import ModelParams

    units = Units.open(SEED * 2, min_count=2)
    keras.utils.set_random_seed(7)
    shape = {"cell": "gru", "units": 16, "layers": 1, "dropout": 0.0, "recurrent_dropout": 0.0}
    params = ModelParams(**shape, input="one_hot", embedding_dim=8, ensemble=1)
    generator = Generator(as_runtime(build_model(params, units.size)), units)
    requests = {  # known syllables, syllables spelled in jamo, ASCII and other UTF-8 bytes
        "known": ("알엔엔 으로", Sampling(length=30, temperature=1.0, seed=1)),
        "jamo": ("헌법 제1조", Sampling(length=25, temperature=1.2, top_k=50, seed=2)),
        "bytes": ("café €", Sampling(length=20, temperature=0.9, seed=3)),
        "greedy": ("자연어", Sampling(length=15, temperature=0.0)),
    }
    rows = {name: [generator.prepare(*request)] for name, request in requests.items()}
    outcomes, _ = ask_together(Batcher(generator), rows)
    assert all(outcomes[name] == [generator.generate(*request)] for name, request in requests.items()), outcomes


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_prompt_beyond_the_context_is_read_from_its_last_context_characters(untrained, text, hybrid: bool) -> None:
    """As held-out scoring built the RNN's state: from the last `context` characters (the n-gram and the
    cache, 3 and 5 characters here, see less than that anyway). The batcher encodes only that end of the
    prompt, the characters outside the vocabulary still reported from all of it."""
    from char_rnn.batcher import Batcher
    from char_rnn.ngram import KneserNey

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    mixture = Mixture(KneserNey.fit(text, TEXT_VOCAB, 3), Weights(0.5, 0.3, 0.2, cache_window=5)) if hybrid else None
    generator = Generator(as_runtime(untrained), Units(CLOSED, chars), mixture)
    batcher, sampling = Batcher(generator, context=50), Sampling(length=40, temperature=0.8, seed=3)
    prompt = "".join(chars[i] + ("#" if k % 7 == 3 else "") for k, i in enumerate(text[:300])) + "?"
    whole, served = generator.prepare(prompt, sampling), batcher.prepare(prompt, sampling)
    assert served.start.dropped == whole.start.dropped == "#?"
    assert 50 <= len(served.ids) < 60 and served.ids.tolist() == whole.ids[-len(served.ids) :].tolist()
    answer = batcher.generate([served])
    assert answer[0].texts == generator.generate(whole.start.prompt[-50:], sampling).texts
    assert answer[0].texts == batcher.generate([whole])[0].texts  # the whole prompt encoded: the same end read


def test_rows_joining_together_read_their_prompts_as_one_batch_the_shortest_first(untrained) -> None:
    """Each `step` reads one unit of each of up to `budget` rows (no more than the context's last ones),
    those with the fewest units left first, so a prompt that starts later but is short goes before a
    long one; a row leaves as soon as its prompt is read, with the state and probabilities it gets
    reading alone."""
    from char_rnn.batcher import Reading

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    generator = Generator(as_runtime(untrained), Units(CLOSED, chars))
    model = generator.model
    prompts = {"a": [5, 6], "b": [1, 2, 3, 4, 5, 6], "c": [7, 8, 9], "d": [9]}  # b: 6 units, its last 4 read
    rows = {key: generator.prepare("".join(chars[i] for i in ids), Sampling()) for key, ids in prompts.items()}
    reading = Reading(model, context=4)
    reading.start(["a", "b", "c"], [rows["a"], rows["b"], rows["c"]])
    reads = [reading.step(2)]
    reading.start(["d"], [rows["d"]])
    reads += [reading.step(2) for _ in range(5)]
    assert [read.keys for read in reads] == [[], ["a", "d"], [], ["c"], [], ["b"]] and not len(reading)
    for read in reads:
        for key, row, probs, state in zip(read.keys, read.rows, read.probs, read.states[0][0][0]):
            alone_probs, alone_states = alone(model, row.ids[-4:])
            np.testing.assert_allclose(probs, alone_probs[0], rtol=0, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(state, alone_states[0][0][0, 0], rtol=0, atol=1e-6, err_msg=key)
    whole = alone(model, rows["b"].ids)[1][0][0]  # b read whole: what the 2 units before its last 4 change
    assert np.abs(reads[5].states[0][0] - whole).max() > 1e-3


def alone(model: object, ids: np.ndarray) -> tuple[np.ndarray, list]:
    """The probabilities and states after reading `ids` alone, one character per step."""
    states = model.initial_state(1)
    for i in ids:
        probs, states = model.step(np.array([i]), states)
    return probs, states


def test_requests_beyond_the_limits_or_with_bad_values_are_refused_before_generating(untrained) -> None:
    from mlflow.exceptions import MlflowException

    from char_rnn.serving import CharRNNGenerator

    chars = [chr(0xAC00 + i) for i in range(TEXT_VOCAB)]
    served = CharRNNGenerator({}, {"max_length": 50, "max_prompt": 100, "max_rows": 3})
    served.use(Generator(as_runtime(untrained), Units(CLOSED, chars)))
    fine = {"prompt": chars[0], "length": 50}
    assert len(served.predict(None, pd.DataFrame([fine] * 3))["text"][2]) == 50
    refused = {
        "length: at most 50": [{**fine, "length": 51}],
        "prompt characters: at most 100": [{**fine, "prompt": chars[0] * 101}],
        "prompts in one request: at most 3": [fine] * 4,
        "length must be between 1": [{**fine, "length": -1}],
        "length must be a whole number": [{**fine, "length": 2.5}],
        "temperature must be >= 0": [{**fine, "temperature": -0.5}],
        "top_k must be >= 0": [{**fine, "top_k": -1}],
        "top_k must be a number": [{**fine, "top_k": "many"}],
    }
    for reason, rows in refused.items():
        with pytest.raises(MlflowException, match=reason) as refusal:
            served.predict(None, pd.DataFrame(rows))
        assert refusal.value.error_code == "INVALID_PARAMETER_VALUE" and "\n" not in refusal.value.message


def post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def refuses_bad_requests(url: str) -> None:
    """Each a 400 with a one-line reason; registry params bound length, prompt and rows."""
    row = {"prompt": "알엔엔", "length": 5}
    bad = {
        "not JSON": b'{"dataframe_records": [',
        "a number as prompt": {"dataframe_records": [{**row, "prompt": 5}]},
        "a list as prompt": {"dataframe_records": [{**row, "prompt": ["알"]}]},
        "a 1 MB prompt": {"dataframe_records": [{**row, "prompt": "알" * 350_000}]},
        "a negative length": {"dataframe_records": [{**row, "length": -5}]},
        "a huge length": {"dataframe_records": [{**row, "length": 10**9}]},
        "a length as text": {"dataframe_records": [{**row, "length": "ten"}]},
        "a negative temperature": {"dataframe_records": [{**row, "temperature": -1}]},
        "a negative top_k": {"dataframe_records": [{**row, "top_k": -1}]},
        "too many prompts": {"dataframe_records": [row] * 65},
    }
    for what, payload in bad.items():
        status, body = post(url, payload)
        assert status == 400, (what, status, body)
        # MLflow's scoring server frames the reason: its parser's first line says why, then echoes the
        # input; a refused prediction reads "Failed to predict data '<rows>'." then "Error: <reason>".
        if what == "not JSON":
            assert "valid JSON" in body["message"].splitlines()[0], body
        else:
            assert re.fullmatch(r"Error: \S.*", body["message"].splitlines()[-1]), (what, body)


def under_load(url: str, pid: int, clients: int, seconds: float) -> None:
    """`clients` threads posting for `seconds`: every answer a 200, and the server's memory steady."""
    import concurrent.futures

    import psutil

    def rss() -> int:
        server = psutil.Process(pid)
        return sum(p.memory_info().rss for p in (server, *server.children(recursive=True)))

    def client(deadline: float) -> list[int]:
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(post(url, {"dataframe_records": [{"prompt": "알엔엔", "length": 20}]})[0])
        return statuses

    warm = client(time.monotonic() + 2)
    before = rss()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        deadline = time.monotonic() + seconds
        statuses = [s for done in pool.map(client, [deadline] * clients) for s in done]
    growth = (rss() - before) / 2**20
    print(f"{len(statuses)} requests from {clients} clients in {seconds} s; server memory {growth:+.1f} MiB")
    assert set(warm + statuses) == {200}
    assert growth < 50


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} not healthy after {timeout} s")


@pytest.mark.integration
def test_served_champion_answers_invocations(seed_project: Layout, repo_params: Params) -> None:
    from char_rnn.tracking import tracking_uri
    from char_rnn.units import load_units

    layout = seed_project  # the blog's champion, trained once for the session
    assert json.loads((layout.root / "results.json").read_text(encoding="utf-8"))["register"]["alias"] == "champion"
    vocab = set(load_units(layout.vocab).names)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `mlflow models serve` execs uvicorn
        "MLFLOW_TRACKING_URI": tracking_uri(layout.mlruns),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    command = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{repo_params.registry.model_name}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    server = subprocess.Popen(
        command, cwd=layout.root, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/ping", server, timeout=240)
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = post(
            url,
            {
                "dataframe_records": [
                    {"prompt": "알엔엔 으로", "length": 15, "temperature": 0},
                    {"prompt": "자연어 #처리", "length": 40, "temperature": 0.8, "top_k": 5, "seed": 7},
                ]
            },
        )
        assert status == 200, body
        first, second = body["predictions"]
        assert (len(first["text"]), len(second["text"])) == (15, 40)
        assert set(first["text"] + second["text"]) <= vocab
        assert (first["dropped"], second["dropped"]) == ("", "#")
        assert post(url, {"dataframe_records": [{"prompt": "###"}]})[0] == 400
        refuses_bad_requests(url)
        under_load(url, server.pid, clients=8, seconds=20)
        assert post(url, {"dataframe_records": [{"prompt": "알엔엔 으로", "length": 15, "temperature": 0}]}) == (
            200,
            {"predictions": [first]},
        )  # still serving, the same answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
