"""The generator pyfunc: request rows, and a real `mlflow models serve` of the registered champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest

from char_rnn.generate import GenerationError, Generator, Mixture, Sampling
from char_rnn.hybrid import Weights
from char_rnn.layout import Layout
from char_rnn.params import Params
from conftest import BIN, TEXT_VOCAB, as_runtime, free_port


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
    for generator in (Generator(as_runtime(untrained), chars), Generator(as_runtime(untrained), chars, mixture)):
        served = CharRNNGenerator({})
        served.generator = generator
        answer = served.predict(None, pd.DataFrame([{"prompt": chars[3] + chars[1], "length": 5, "temperature": 0}]))
        assert len(answer["text"][0]) == 5
        for bad in (5, 2.5, None, [chars[0]]):
            with pytest.raises(MlflowException, match="prompt must be text") as refused:
                served.predict(None, pd.DataFrame([{"prompt": bad, "length": 5}]))
            assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode("utf-8"), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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
def test_served_champion_answers_invocations(layout: Layout, tiny_params: Params) -> None:
    from char_rnn import stages
    from char_rnn.tracking import tracking_uri
    from char_rnn.windows import load_vocab

    assert stages.run_all(tiny_params, layout)["register"]["alias"] == "champion"
    vocab = set(load_vocab(layout.vocab))
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
        f"models:/{tiny_params.registry.model_name}@champion",
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
        assert post(url, {"dataframe_records": [{"prompt": 5}]})[0] == 400
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
