"""What a reviewer sees in the MLflow UI, read from the page in a real browser (headless Chromium).

Three runs of the real pipeline share one store, as nightly runs do: the blog's sentence, then two
kolaw runs of one registered model, the second compared with the first on the same text. `char-rnn ui`
serves the store; Playwright drives Debian's Chromium (never a downloaded browser) and the test reads
what a person would: run names and descriptions, datasets, metric sections and charts, and the
champion version's description with its comparison. Screenshots go to test-output/browser/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from char_rnn import stages
from char_rnn.layout import Layout
from char_rnn.params import Params, with_overrides
from conftest import BIN, REPO, TINY, free_port

pytestmark = pytest.mark.integration

SHOTS = Path(os.environ.get("CHAR_RNN_TEST_OUTPUT", REPO / "test-output")) / "browser"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip
# Set before the app's first script runs: the "Model training" view (MLflow 3 opens in its GenAI view),
# no assistant panel taking a third of the page, no registry promotion dialog over the page.
PRESETS = """
localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
localStorage.setItem('_mlflow_model_registry_promo_modal_dismissed_v1', 'true');
"""
KOLAW = {"corpus.source": "kolaw", "vocab.units": "open", "split.val_fraction": 0.1, "model.cell": "gru",
         "model.units": 16, "window.stride": 5, "train.batch_size": 64, "evaluate.context": 100,
         "evaluate.prompt": "대한민국은", "registry.model_name": "char-rnn-kolaw"}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path, repo_params: Params) -> Iterator[dict]:
    """The store of three pipeline runs, and `char-rnn ui` serving it on a free loopback port."""
    base = tmp_path_factory.mktemp("ui")
    shutil.copy(REPO / "params.yaml", base / "params.yaml")
    (base / "mlruns").mkdir()
    shutil.copy(migrated_store, base / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{base / 'mlruns' / 'mlflow.db'}"
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for name, overrides in (("seed", TINY), ("kolaw-1", {**KOLAW, "train.epochs": 1}),
                                ("kolaw-2", {**KOLAW, "train.epochs": 4})):  # fmt: skip
            root = base / name
            root.mkdir()
            shutil.copy(REPO / "params.yaml", root / "params.yaml")
            runs[name] = stages.run_all(with_overrides(repo_params, overrides), Layout(root))
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    ui = subprocess.Popen([str(BIN / "char-rnn"), "ui", "--port", str(port)], cwd=base, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", ui)
        yield {"url": f"http://127.0.0.1:{port}", "runs": runs}
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(1)


@pytest.fixture(scope="module")
def page(store: dict) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: apt-get install -y chromium fonts-noto-cjk (.ci/run does)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1600, "height": 1000},
            )  # fmt: skip
            context.add_init_script(PRESETS)
            context.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            yield context.new_page()
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_the_runs_list_names_each_run_and_its_datasets(store: dict, page: Any) -> None:
    from playwright.sync_api import expect

    experiment = store["runs"]["kolaw-2"]["train"]["run_url"].split("/experiments/")[1].split("/")[0]
    page.goto(f"{store['url']}/#/experiments/{experiment}/runs")
    for name in ("seed", "kolaw-1", "kolaw-2"):
        expect(page.get_by_role("link", name=store["runs"][name]["train"]["run_name"])).to_be_visible()
    expect(page.get_by_text(re.compile(r"^kolaw \(")).first).to_be_visible()  # the Datasets column: name (md5)
    page.screenshot(path=SHOTS / "01-runs.png")


def test_a_run_page_says_what_ran_and_how_it_scored(store: dict, page: Any) -> None:
    from playwright.sync_api import expect

    train = store["runs"]["kolaw-2"]["train"]
    page.goto(train["run_url"].replace("http://127.0.0.1:5000", store["url"]))
    expect(page.get_by_role("heading", name=train["run_name"])).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Held-out: "))).to_be_visible()  # the description's evaluation section
    expect(page.get_by_text(re.compile(r"characters, \d+ distinct"))).to_be_visible()  # its data section
    expect(page.get_by_text(re.compile(r"^kolaw \(")).first).to_be_visible()  # the Datasets section
    page.get_by_text("Show more", exact=True).first.click()
    expect(page.get_by_text(re.compile(r"^Sample: 대한민국은"))).to_be_visible()  # Korean, rendered
    page.screenshot(path=SHOTS / "02-run.png", full_page=True)


def test_metrics_are_grouped_by_prefix_with_train_and_val_loss_charts(store: dict, page: Any) -> None:
    from playwright.sync_api import expect

    train = store["runs"]["kolaw-2"]["train"]
    page.goto(train["run_url"].replace("http://127.0.0.1:5000", store["url"]) + "/model-metrics")
    for section in ("train", "val", "heldout", "gate", "validation"):
        expect(page.get_by_text(section, exact=True).first).to_be_visible()
    page.screenshot(path=SHOTS / "03-metrics.png")
    search = page.get_by_placeholder("Search metric charts")
    for key in ("train/loss", "val/loss"):
        search.fill(key)  # charts below the fold render only when shown: the search brings each forward
        expect(page.get_by_text(f"{train['run_name']} ({key})", exact=True)).to_be_visible()
        page.screenshot(path=SHOTS / f"04-{key.replace('/', '-')}.png")


def test_the_champion_version_says_why_it_is_champion(store: dict, page: Any) -> None:
    from playwright.sync_api import expect

    registered = store["runs"]["kolaw-2"]["register"]
    assert registered["alias"] == "champion", registered["gate"]["reason"]
    page.goto(f"{store['url']}/#/models/char-rnn-kolaw/versions/{registered['version']}")
    comparison = re.compile(r"vs v1's [\d.]+ bits/char on the same [\d,]+ characters")
    expect(page.get_by_text(comparison).first).to_be_visible()
    expect(page.get_by_text("champion", exact=False).first).to_be_visible()
    page.screenshot(path=SHOTS / "05-champion-version.png", full_page=True)
    page.goto(f"{store['url']}/#/models/char-rnn-seed")
    expect(page.get_by_text(re.compile(r"there was no champion"))).to_be_visible()  # the seed run's version
    page.screenshot(path=SHOTS / "06-seed-model.png", full_page=True)
