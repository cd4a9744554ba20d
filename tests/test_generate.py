"""Generation: seeded, greedy at temperature 0, vocabulary only, the hybrid's mixture, the champion's text.

That the NumPy runtime computes the Keras model's probabilities is tests/test_inference.py's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from char_rnn.generate import GenerationError, Generator, Mixture, Sampling
from char_rnn.hybrid import Weights
from char_rnn.layout import Layout
from char_rnn.params import Params, with_overrides
from char_rnn.units import CLOSED, Units
from conftest import REPO, as_runtime, run_cli

CHARS = list(" 가나다라마바사아자차카타파하")
UNITS = Units(CLOSED, CHARS)
BLOG = (REPO / "src" / "char_rnn" / "seed.txt").read_text(encoding="utf-8").strip()
PROMPT = "알엔엔 으로"


def untrained(params: Params, overrides: dict[str, object] | None = None) -> object:
    """Random weights are enough where only the mechanics matter: no training, milliseconds."""
    from char_rnn.model import average, build_model

    model_params = with_overrides(params, overrides or {}).model
    members = [build_model(model_params, len(CHARS), f"member_{i}", seed=i) for i in range(model_params.ensemble)]
    return as_runtime(average(members))


@pytest.fixture(scope="module")
def generator(repo_params: Params) -> Generator:
    return Generator(untrained(repo_params), UNITS)


def test_same_seed_same_text_and_another_seed_another(generator: Generator) -> None:
    sampling = Sampling(length=80, temperature=1.0, seed=7)
    first = generator.generate("가나", sampling, num_samples=3).texts
    assert generator.generate("가나", sampling, num_samples=3).texts == first
    assert len(set(first)) == 3  # the samples of one batch differ from each other
    assert generator.generate("가나", Sampling(length=80, temperature=1.0, seed=8), num_samples=3).texts != first


def test_output_is_vocabulary_only_and_of_the_requested_length(generator: Generator) -> None:
    texts = generator.generate("가", Sampling(length=200, temperature=2.0, top_k=5, seed=0), num_samples=2).texts
    assert [len(t) for t in texts] == [200, 200]
    assert set("".join(texts)) <= set(CHARS)


def test_near_zero_temperature_and_top_1_are_greedy(generator: Generator) -> None:
    greedy = generator.generate("다라", Sampling(length=50, temperature=0.0)).texts
    assert generator.generate("다라", Sampling(length=50, temperature=1e-6, seed=3)).texts == greedy
    assert generator.generate("다라", Sampling(length=50, temperature=5.0, top_k=1, seed=3)).texts == greedy
    assert generator.generate("다라", Sampling(length=50, temperature=5.0, seed=3)).texts != greedy


def test_unknown_prompt_characters_are_dropped_and_reported(generator: Generator) -> None:
    result = generator.generate("가x나!가", Sampling(length=30, temperature=0.0))
    assert (result.prompt, result.dropped) == ("가나가", "!x")
    assert result.texts == generator.generate("가나가", Sampling(length=30, temperature=0.0)).texts
    with pytest.raises(GenerationError, match="no character of the prompt"):
        generator.generate("xyz", Sampling(length=5))


@pytest.fixture(scope="module")
def ngram():
    """An n-gram that has counted a text the random RNN knows nothing about."""
    from char_rnn.ngram import KneserNey

    text = "가나다라 마바사 가나다 아자차 가나다라 카타파하 " * 4
    return KneserNey.fit(np.array([CHARS.index(c) for c in text]), len(CHARS), 3)


def test_the_mixture_at_its_ends_is_the_rnn_alone_or_the_ngram_alone(repo_params: Params, ngram) -> None:
    model = untrained(repo_params)
    greedy = Sampling(length=40, temperature=0.0)
    rnn_only = Generator(model, UNITS, Mixture(ngram, Weights(1.0, 0.0))).generate("가나", greedy).texts
    assert rnn_only == Generator(model, UNITS).generate("가나", greedy).texts  # the compiled loop's text
    text = [CHARS.index(c) for c in "가나"]
    for _ in range(40):  # the n-gram's own greedy chain, written out
        text.append(int(np.argmax(ngram.distribution(np.array(text)))))
    ngram_only = Generator(model, UNITS, Mixture(ngram, Weights(0.0, 1.0))).generate("가나", greedy).texts[0]
    assert ngram_only == "".join(CHARS[i] for i in text[2:])
    assert ngram_only != rnn_only[0]
    cache_only = Generator(model, UNITS, Mixture(ngram, Weights(0.0, 0.0, 1.0, cache_window=3)))
    # The most frequent of the last three characters, the lowest id on ties: "가나다" -> 가, then 가 forever.
    assert cache_only.generate("다가나다", greedy).texts == ["가" * 40]


def test_mixture_samples_are_seeded_and_from_the_vocabulary(repo_params: Params, ngram) -> None:
    hybrid = Generator(untrained(repo_params), UNITS, Mixture(ngram, Weights(0.4, 0.4, 0.2, cache_window=8)))
    sampling = Sampling(length=60, temperature=1.0, top_k=5, seed=11)
    first = hybrid.generate("다라", sampling, num_samples=2).texts
    assert hybrid.generate("다라", sampling, num_samples=2).texts == first
    assert [len(t) for t in first] == [60, 60] and set("".join(first)) <= set(CHARS) and first[0] != first[1]
    assert hybrid.generate("다라", Sampling(length=60, temperature=1.0, top_k=5, seed=12), 2).texts != first
    greedy = hybrid.generate("다라", Sampling(length=60, temperature=0.0)).texts
    assert hybrid.generate("다라", Sampling(length=60, temperature=5.0, top_k=1, seed=3)).texts == greedy
    assert hybrid.generate("다라", Sampling(length=60, temperature=1e-6, seed=3)).texts == greedy
    assert hybrid.generate("다라", Sampling(length=60, temperature=5.0, seed=3)).texts != greedy


@pytest.mark.parametrize(
    "weights",
    [Weights(0.6, 0.4), Weights(0.5, 0.3, 0.2, cache_window=6), Weights(0.5, 0.3, 0.2, 6, match_min=2)],
    ids=["rnn+ngram", "cache", "cache+match"],
)
def test_the_sampled_mixture_is_the_scored_mixture(repo_params: Params, ngram, weights: Weights) -> None:
    """Teacher-forced through the generation loop, the mixture gives the true text the probabilities
    that held-out scoring (`char_rnn.heldout`, the n-gram's, the cache's and the match model's scoring)
    gave it."""
    hybrid = Generator(untrained(repo_params, {"model.ensemble": 2}), UNITS, Mixture(ngram, weights))
    ids = np.array([CHARS.index(c) for c in "다라 가나다 아자차 파하 가나다라 바사 " * 3], dtype=np.int32)
    prompt, seen = 3, []

    def teacher(mixed: np.ndarray, n: int) -> np.ndarray:
        seen.append(mixed[0, ids[n]])
        return ids[None, n]

    text = np.empty((1, len(ids)), dtype=np.int32)
    text[0, :prompt] = ids[:prompt]
    hybrid.mixture_loop(text, prompt, teacher)
    np.testing.assert_array_equal(text[0], ids)
    scored = hybrid.char_probabilities(ids, prompt, len(ids), context=len(ids))
    np.testing.assert_allclose(seen, scored, rtol=1e-5)


@pytest.mark.parametrize("hybrid", [False, True])
def test_rows_generated_together_get_the_text_each_gets_alone(repo_params: Params, ngram, hybrid: bool) -> None:
    """The server steps the requests it serves as one batch, and a request joins it between two
    characters: prompts of other lengths, other lengths, greedy and seeded draws, a cache window
    shorter than a prompt; each row must still get its own text, and leave as soon as it has it."""
    from char_rnn.batcher import Read, Reading, Rows

    def add(requests: list[tuple[str, Sampling]]) -> list[int]:
        """The rows join, each prompt read first by itself (`Batcher` reads them between the others' steps)."""
        reads = [Reading.alone(generator.model, generator.prepare(*request), rows.context) for request in requests]
        return rows.join(Read.concat(reads))

    mixture = Mixture(ngram, Weights(0.4, 0.4, 0.2, cache_window=3, match_min=2)) if hybrid else None
    generator = Generator(untrained(repo_params, {"model.ensemble": 2}), UNITS, mixture)
    requests = [
        ("가나다라마바", Sampling(length=30, temperature=0.0)),
        ("다#", Sampling(length=5, temperature=1.0, seed=3)),
        ("하", Sampling(length=41, temperature=0.7, top_k=4, seed=9)),
        ("라마바사아자차카", Sampling(length=5, temperature=1.3, seed=3)),
        ("마", Sampling(length=12, temperature=1.0, seed=5)),  # joins after 20 characters of the others
    ]
    rows = Rows(generator)
    assert add(requests[:4]) == [0, 1, 2, 3]
    finished: list[tuple[int, int, object]] = []  # (step, row, generation)
    for step in range(1, 42):
        if step == 21:
            assert add(requests[4:]) == [4]
        finished += [(step, number, generation) for number, generation in rows.step()]
    assert [(step, number) for step, number, _ in finished] == [(5, 1), (5, 3), (30, 0), (32, 4), (41, 2)]
    assert not len(rows.live) and not rows.rows  # nothing kept of the rows that left
    for _, number, generation in finished:
        assert generation == generator.generate(*requests[number])
    with pytest.raises(GenerationError, match="no character of the prompt"):
        generator.prepare("#?", Sampling())


def test_a_mixture_that_does_not_fit_is_refused(repo_params: Params, ngram) -> None:
    from char_rnn.ngram import KneserNey

    with pytest.raises(ValueError, match="sum to 1"):
        Mixture(ngram, Weights(1.5, -0.5))
    other = KneserNey.fit(np.arange(20) % 5, 5, 2)
    with pytest.raises(GenerationError, match="n-gram knows 5 units"):
        Generator(untrained(repo_params), UNITS, Mixture(other, Weights(0.5, 0.5)))


@pytest.mark.parametrize(
    "bad",
    [
        {"length": 0},
        {"length": 10_001},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"top_k": -1},
        {"seed": -1},
    ],
)
def test_bad_sampling_values_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(GenerationError):
        Sampling(**bad)


@pytest.mark.integration  # trains the blog's model for its 100 epochs
def test_greedy_continues_the_blog_sentence_from_the_champion(
    seed_project: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the default 100 epochs the model has memorised the sentence, as in the blog."""
    import mlflow

    from char_rnn.bundle import load_registered
    from char_rnn.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # else tracking_uri() returns another store
    rest = BLOG[len(PROMPT) :]
    # The evaluate stage's sample (60 characters, greedy) comes from the same generator.
    assert seed_project.sample.read_text(encoding="utf-8") == PROMPT + rest[:60] + "\n"
    mlflow.set_tracking_uri(tracking_uri(seed_project.mlruns))
    champion = load_registered("models:/char-rnn-seed@champion")
    result = champion.generate(PROMPT, Sampling(length=len(rest), temperature=1e-4, seed=1))
    assert result.texts == [rest]


@pytest.mark.integration
def test_cli_generates_from_the_champion(seed_project: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the CLI finds the store from its cwd
    result = run_cli(
        "generate",
        "--prompt",
        PROMPT + "#",
        "--length",
        "20",
        "--temperature",
        "0",
        "--num-samples",
        "2",
        cwd=seed_project.root,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [BLOG[: len(PROMPT) + 20]] * 2
    assert "dropped: '#'" in result.stderr
    # The project's corpus names the registered model, and stderr says which version answered.
    assert "generated by models:/char-rnn-seed/1 (models:/char-rnn-seed@champion)" in result.stderr
    local = run_cli("generate", "-m", "models/model.keras", "-p", PROMPT, "--length", "3", cwd=seed_project.root)
    assert local.returncode == 0 and "generated by models/model.keras" in local.stderr, local.stderr


def test_weights_that_follow_the_text_score_as_evaluate_does_and_sample_at_the_fitted_weights(
    repo_params: Params, ngram
) -> None:
    """The gate re-scores a hybrid through its generator: with a share, the weights follow the scored text
    exactly as in the evaluate stage (`Weights.track`); generated text is drawn at the fitted weights."""
    from char_rnn import cache
    from char_rnn.heldout import rnn_char_probabilities

    model, following = untrained(repo_params), Weights(0.5, 0.3, 0.2, cache_window=6, share=0.05)
    hybrid = Generator(model, UNITS, Mixture(ngram, following))
    fixed = Generator(model, UNITS, Mixture(ngram, dataclasses.replace(following, share=1.0)))
    ids = np.array([CHARS.index(c) for c in "다라 가나다 아자차 파하 가나다라 바사 " * 3], dtype=np.int32)
    scored = hybrid.char_probabilities(ids, 3, len(ids), context=len(ids))
    p_rnn = rnn_char_probabilities(model, ids, 3, len(ids), warmup=len(ids))
    p_kn, p_cache = ngram.char_probabilities(ids, 3, len(ids)), cache.char_probabilities(ids, 3, len(ids), 6)
    np.testing.assert_allclose(scored, following.track(p_rnn, p_kn, p_cache))
    assert not np.allclose(scored, fixed.char_probabilities(ids, 3, len(ids), context=len(ids)))
    sampling = Sampling(length=40, temperature=1.0, seed=5)
    assert hybrid.generate("다라", sampling).texts == fixed.generate("다라", sampling).texts
