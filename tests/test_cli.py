"""The command line as a user meets it: summaries, quiet scripts, and a UI that leaves nothing behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from char_rnn.layout import Layout
from conftest import BIN, REPO, free_port, run_cli


def test_stages_end_with_a_summary_and_quiet_prints_nothing(layout: Layout) -> None:
    shown = run_cli("check", cwd=layout.root)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "check: params.yaml and corpus 'seed' (71 characters) are fine\n"
    quiet = run_cli("--quiet", "ingest", cwd=layout.root)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert '"characters": 71' in run_cli("--json", "ingest", cwd=layout.root).stdout


def test_a_refused_command_says_why_on_one_line(layout: Layout) -> None:
    (layout.root / "params.yaml").write_text(
        (REPO / "params.yaml").read_text(encoding="utf-8").replace("  length: 20", "  lenght: 20"), encoding="utf-8"
    )
    refused = run_cli("--quiet", "check", cwd=layout.root)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "window.lenght: Extra inputs are not permitted (got 20) (did you mean window.length?)" in refused.stderr


def server_processes(port: int) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if str(port) in " ".join(process.info["cmdline"] or []) and "mlflow" in " ".join(process.info["cmdline"]):
            found.append(process.info["pid"])
    return found


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_the_ui_stops_the_server_and_everything_it_started(tmp_path: Path, migrated_store: Path, stop) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(migrated_store, tmp_path / "mlruns" / "mlflow.db")
    port = free_port()
    ui = subprocess.Popen([str(BIN / "char-rnn"), "ui", "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "the UI did not come up"
                time.sleep(1)
        assert server_processes(port)
        ui.send_signal(stop)
        ui.wait(timeout=60)
        time.sleep(1)
        assert server_processes(port) == []
    finally:
        if ui.poll() is None:
            ui.kill()
