"""What a newcomer sees in the MLflow UI, read from the page in a real browser (headless Chromium).

Three runs of the real pipeline share one store, as nightly runs do: the blog's sentence, then two
kolaw runs of one registered model that differ only in their epochs, the second compared with the first
on the same text. `char-rnn ui` serves the store and prints its link, the one README gives. Playwright
drives Debian's Chromium from a fresh profile with nothing preset, as a newcomer's browser is: MLflow
3.17 opens in its GenAI view (no runs list, no registry) unless the link asks for the model-training
view, so each test starts at a link the project gives a person (README's, a run's `run_url`) and first
checks the view. Then it reads what a person would: run names as the runs list cuts them, descriptions,
datasets, metric sections and charts, and which version holds which alias.

Screenshots go to pytest's temporary folder for the session, never into the repository: `browser0/`
under /tmp/pytest-of-<user>/pytest-<n>/ (pytest keeps the last three sessions'), or under the folder
`--basetemp=DIR` names.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from char_rnn import stages
from char_rnn.layout import Layout
from char_rnn.params import Params, with_overrides
from char_rnn.tracking import LOCAL_UI
from conftest import BIN, REPO, TINY, free_port

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip
# Two layers: a longer model name, so that names that led with the corpus and size would show the
# same first characters for both kolaw runs in the runs list.
KOLAW = {"corpus.source": "kolaw", "vocab.units": "open", "split.test_fraction": 0.1, "split.val_fraction": 0.1,
         "model.cell": "gru", "model.units": 16, "model.layers": 2, "window.stride": 5, "train.batch_size": 64,
         "evaluate.context": 100, "evaluate.prompt": "대한민국은", "registry.model_name": "char-rnn-kolaw"}  # fmt: skip
README_LINK = re.compile(re.escape(LOCAL_UI) + r"/#/experiments/\d+\?workflowType=machine_learning")
# What a runs list's name link shows: the characters left of its right edge, less the ellipsis MLflow
# draws over a name it cuts.
VISIBLE_TEXT = """link => {
  const font = document.createElement('canvas').getContext('2d');
  font.font = getComputedStyle(link).font;
  const right = link.getBoundingClientRect().right - font.measureText('…').width;
  const walker = document.createTreeWalker(link, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let text = '';
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      if (range.getBoundingClientRect().right > right) return text;
      text += node.data[i];
    }
  }
  return text;
}"""


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
    printed = base / "ui.out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with printed.open("w") as out:  # a file, not a pipe nobody reads: the server writes there too
        ui = subprocess.Popen([str(BIN / "char-rnn"), "ui", "--port", str(port)], cwd=base, env=env,
                              stdout=out, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", ui)
        link = re.search(r"^MLflow UI: (\S+)", printed.read_text(), re.M)
        assert link, printed.read_text()[-2000:]
        yield {"url": f"http://127.0.0.1:{port}", "link": link.group(1), "runs": runs}
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
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless; each test opens its own context (a fresh profile: no storage, no presets)."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: make test installs it (.ci/system-packages)"
    expect.set_options(timeout=60_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A newcomer's browser: nothing in its storage, so MLflow shows what its links alone ask for."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: `browser0/` in pytest's temporary folder for the session."""
    return tmp_path_factory.mktemp("browser")


def local(url: str, store: dict) -> str:
    """A link the project prints for the local UI (port 5000), on the port the test's UI serves."""
    assert url.startswith(LOCAL_UI + "/"), url
    return store["url"] + url.removeprefix(LOCAL_UI)


def expect_model_training_view(page: Any) -> None:
    """The model-training view's sidebar links to the model registry; the GenAI view's has no such link."""
    from playwright.sync_api import expect

    expect(page.get_by_role("link", name="Model registry")).to_be_visible()


def alias_chips(scope: Any) -> Any:
    """The alias chips (`@ champion`) in `scope`; tags are chips too, `key: value`."""
    return scope.get_by_role("status").filter(has_text=re.compile("^@"))


def test_readme_link_opens_the_runs_list_with_names_told_apart(store: dict, page: Any, shots: Path) -> None:
    """README's link is the one `char-rnn ui` prints; it lands on the runs list, where each name shows
    enough of itself to tell the runs apart (the GenAI view would land on an empty traces overview)."""
    from playwright.sync_api import expect

    readme = README_LINK.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert readme, f"README.md gives no link matching {README_LINK.pattern}"
    assert local(readme.group(0), store) == store["link"]
    page.goto(store["link"])
    expect_model_training_view(page)
    links = [page.get_by_role("link", name=store["runs"][name]["train"]["run_name"]) for name in store["runs"]]
    for link in links:
        expect(link).to_be_visible()
    expect(page.get_by_text(re.compile(r"^kolaw \(")).first).to_be_visible()  # the Datasets column: name (md5)
    page.screenshot(path=shots / "01-runs.png")
    visible = [link.evaluate(VISIBLE_TEXT) for link in links]
    assert len(set(visible)) == len(visible), f"the runs list shows the same start of several names: {visible}"


def test_a_run_page_says_what_ran_and_how_it_scored(store: dict, page: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    train = store["runs"]["kolaw-2"]["train"]
    page.goto(local(train["run_url"], store))  # the link in the stage's summary and the Prefect report
    expect_model_training_view(page)
    expect(page.get_by_role("heading", name=train["run_name"])).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Test \([\d,]+ characters"))).to_be_visible()  # the evaluation section
    expect(page.get_by_text(re.compile(r"[\d,]+ open units, from the training text"))).to_be_visible()  # data
    expect(page.get_by_text(re.compile(r"^kolaw \(")).first).to_be_visible()  # the Datasets section
    page.get_by_text("Show more", exact=True).first.click()
    expect(page.get_by_text(re.compile(r"^Sample: 대한민국은"))).to_be_visible()  # Korean, rendered
    page.screenshot(path=shots / "02-run.png", full_page=True)


def test_metrics_are_grouped_by_prefix_with_train_and_val_loss_charts(store: dict, page: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    train = store["runs"]["kolaw-2"]["train"]
    page.goto(local(train["run_url"], store))
    page.get_by_role("tab", name="Model metrics").click()
    for section in ("train", "val", "test", "gate", "validation"):
        expect(page.get_by_text(section, exact=True).first).to_be_visible()
    page.screenshot(path=shots / "03-metrics.png")
    search = page.get_by_placeholder("Search metric charts")
    for key in ("train/loss", "val/loss"):
        search.fill(key)  # charts below the fold render only when shown: the search brings each forward
        expect(page.get_by_text(f"{train['run_name']} ({key})", exact=True)).to_be_visible()
        page.screenshot(path=shots / f"04-{key.replace('/', '-')}.png")


def test_the_registry_shows_which_version_holds_which_alias_and_why(store: dict, page: Any, shots: Path) -> None:
    """The aliases as MLflow draws them (a chip per alias, on the version that holds it), not a word in
    a description: the better kolaw run holds @champion, the one it replaced @previous-champion."""
    from playwright.sync_api import expect

    registered = store["runs"]["kolaw-2"]["register"]
    assert registered["alias"] == "champion", registered["gate"]["reason"]
    page.goto(f"{store['url']}/#/models/char-rnn-kolaw")
    for version, alias in ((registered["version"], "champion"), ("1", "previous-champion")):
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
        expect(alias_chips(row)).to_have_attribute("title", alias)  # one chip, this alias
    page.screenshot(path=shots / "05-kolaw-versions.png", full_page=True)
    page.get_by_role("link", name=f"Version {registered['version']}", exact=True).click()
    expect(alias_chips(page)).to_have_attribute("title", "champion")
    comparison = re.compile(r"vs v1's [\d.]+ bits/char on the test text")
    expect(page.get_by_text(comparison).first).to_be_visible()
    page.screenshot(path=shots / "06-champion-version.png", full_page=True)
    page.goto(f"{store['url']}/#/models/{store['runs']['seed']['register']['model_name']}")
    expect(page.get_by_text(re.compile(r"there was no champion"))).to_be_visible()  # the seed run's version
    page.screenshot(path=shots / "07-seed-model.png", full_page=True)
