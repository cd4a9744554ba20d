"""Serving the champion with `mlflow models serve`: time to ready, then a load test on loopback.

    .venv/bin/python benchmarks/serve_load.py [--project DIR] [--model-uri URI] [--clients 4] [--duration 30]
    .venv/bin/python benchmarks/serve_load.py --bad-requests --duration 0     # malformed requests only
    .venv/bin/python benchmarks/serve_load.py --project DIR --limits [--phase 10]   # one request at the limits
    .venv/bin/python benchmarks/serve_load.py --prepare rnn /tmp/seed [--epochs 3]
    .venv/bin/python benchmarks/serve_load.py --prepare hybrid /tmp/kolaw [--set train.epochs=2 ...]

Starts `mlflow models serve -m models:/<registry.model_name>@champion --env-manager local -h 127.0.0.1
-p <free port>` for a project (default: the project around the working directory, found as the CLI
finds it; `--model-uri` serves another version), with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false (as
README serves it), MLFLOW_TRACKING_URI set to the project's store as `char_rnn.tracking.tracking_uri`
gives it and the venv's bin first on PATH (MLflow execs `uvicorn`), in its own process group. Measured:

- time to ready: from starting the command to `GET /ping` answering 200;
- the first request's latency (one 100-character greedy request), and the text it returned;
- load: `--clients` threads (default 4), each with its own keep-alive connection, sending one
  request after another for `--duration` seconds (default 30): one row
  `{"prompt": <evaluate.prompt>, "length": 100, "temperature": 0}` per request. Reported: requests,
  errors (non-2xx answers and exceptions), requests/s and characters/s, p50 and p99 latency of the
  successful requests;
- the server's memory over its whole process group (psutil): RSS (summed, so shared pages count
  once per process) and USS (memory that only that process holds), when ready and after the load.

`--limits` measures what one request at the version's limits does to everyone else: `--clients`
threads send short requests (`--length`, default 20 characters here) for `--phase` seconds (default
10), then one request of `registry.max_rows` rows, each a `registry.max_prompt`-character prompt cut
from the project's corpus at its own offset, `--limits-length` characters each (default 100, the API's
default length), is sent on its own connection while the short clients go on, and they go on for
`--phase` seconds after it is answered. Reported: the short requests' p50 / p99 / max latency before,
during (in flight at any moment while the big request was) and after it, the during / before p99
ratio, and the big request's own time. `--limits-rows`, `--limits-prompt` change its size. The server
gets MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=900 here, so that a stall is measured rather than cut
off by the scoring server's 60 s timeout (a 504 while the batch goes on generating).

`--bad-requests` also prints the status and body of a few malformed requests (bad JSON, wrong types,
out-of-range values) before the load. At the end the whole process group is stopped (SIGTERM, then
SIGKILL after 20 s) and the script checks that none of it is left.

`--prepare rnn|hybrid DIR` builds something to serve instead: a fresh git + DVC project in DIR (as
the suite scaffolds one, `tests/harness.py`), params.yaml from the repository (rnn: the blog's seed, 100 epochs)
or from benchmarks/configs/kolaw.yaml (hybrid: 5 x GRU(256) + 5-gram + cache, 10+ minutes of
training), changed by `--epochs N` and `--set key=value` (dotted keys, YAML values, validated like
params.yaml; e.g. `--set train.epochs=2 --set tune.dynamic_rates=[]` keeps the 5 x GRU(256) shape and
trains in a few minutes), then `char-rnn run` in DIR, which registers the first version as champion.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from flow_overhead import REPO, VENV_BIN, child_env, free_port  # it puts the repository root on the path

from tests.harness import scaffold_project, stop_group, wait_http_ok

CONFIGS = {"rnn": REPO / "params.yaml", "hybrid": REPO / "benchmarks" / "configs" / "kolaw.yaml"}
BAD_REQUESTS: list[tuple[str, str, str]] = [  # (what, content type, body)
    ("truncated JSON", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "length": 10'),
    ("not JSON", "application/json", "prompt=알엔엔"),
    ("text/plain body", "text/plain", "알엔엔"),
    ("records not a list", "application/json", '{"dataframe_records": {"prompt": "알엔엔"}}'),
    ("no records", "application/json", '{"dataframe_records": []}'),
    ("no prompt column", "application/json", '{"dataframe_records": [{"length": 10}]}'),
    ("prompt is a number", "application/json", '{"dataframe_records": [{"prompt": 123, "length": 10}]}'),
    ("length is a string", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "length": "ten"}]}'),
    ("length 1.5", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "length": 1.5}]}'),
    ("length -5", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "length": -5}]}'),
    ("length 1000000", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "length": 1000000}]}'),
    ("temperature -1", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "temperature": -1}]}'),
    ("temperature null", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "temperature": null}]}'),
    ("seed a list", "application/json", '{"dataframe_records": [{"prompt": "알엔엔", "seed": [1, 2]}]}'),
    ("no known character", "application/json", '{"dataframe_records": [{"prompt": "QQQ", "length": 10}]}'),
]


def prepare(kind: str, dest: Path, overrides: list[str], epochs: int | None) -> None:
    """A project in `dest` with a registered champion, by `char-rnn run` (no DVC needed for that)."""
    from char_rnn.params import load_params, with_overrides

    if dest.exists() and any(dest.iterdir()):
        sys.exit(f"{dest} exists and is not empty: --prepare builds a fresh project")
    changes = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in overrides)}
    if epochs is not None:
        changes["train.epochs"] = epochs
    params = with_overrides(load_params(CONFIGS[kind]), changes)
    root = scaffold_project(dest)
    text = yaml.safe_dump(params.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
    (root / "params.yaml").write_text(text, encoding="utf-8")
    m, t = params.model, params.train
    print(
        f"prepare {kind} in {root}: {params.corpus.source}, {m.ensemble} x {m.cell.value}({m.units}),"
        f" {t.epochs} epochs; changes: {changes or 'none'}",
        flush=True,
    )
    start = time.perf_counter()
    done = subprocess.run([str(VENV_BIN / "char-rnn"), "run"], cwd=root, env=child_env())
    if done.returncode != 0:
        sys.exit(f"char-rnn run failed ({done.returncode}) in {root}")
    registration = json.loads((root / "reports" / "registration.json").read_text(encoding="utf-8"))
    print(f"char-rnn run took {time.perf_counter() - start:.1f} s; registered: {registration}")
    print(f"serve it: {sys.executable} {Path(__file__)} --project {root}")


def group_memory(pgid: int) -> tuple[int, float, float]:
    """(processes, summed RSS MiB, summed USS MiB) of every process in the group."""
    count, rss, uss = 0, 0, 0
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != pgid:
                continue
            info = process.memory_full_info()
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        count, rss, uss = count + 1, rss + info.rss, uss + info.uss
    return count, rss / 2**20, uss / 2**20


def group_left(pgid: int) -> list[psutil.Process]:
    """The live processes of the group (zombies waiting to be reaped do not count)."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return left


def stop_server(process: subprocess.Popen, grace_s: float = 20) -> None:
    """The suite's stop_group (SIGTERM to the group, SIGKILL if the parent lingers), then waits for
    the rest of the group (uvicorn finishing its shutdown) and kills whatever outlives the grace period."""
    stop_group(process, grace_s)
    deadline = time.monotonic() + grace_s
    while (left := group_left(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for child in left:
        child.kill()
    killed = f"{len(left)} outlived the grace period and were killed; " if left else ""
    now = len(group_left(process.pid))
    print(f"server stopped (exit code {process.poll()}); {killed}processes of its group left: {now}")


def readable(payload: bytes) -> str:
    """A JSON body with its Korean shown as text, not \\u escapes; other bodies as they are; one line."""
    text = payload.decode(errors="replace")
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(text), ensure_ascii=False)
    return text.replace("\n", " ")


def post(port: int, body: bytes, content_type: str = "application/json", timeout: float = 120) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Client:
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of successful requests
    errors: list[str] = field(default_factory=list)
    failed: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of the errors

    @property
    def latencies(self) -> list[float]:
        return [end - start for start, end in self.spans]


def client_loop(port: int, body: bytes, deadline: float, out: Client, stop: threading.Event | None = None) -> None:
    """One request after another on one keep-alive connection until the deadline (or `stop`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        start = time.perf_counter()
        try:
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            if 200 <= response.status < 300:
                out.spans.append((start, time.perf_counter()))
            else:
                out.errors.append(f"HTTP {response.status}: {payload[:200]!r}")
                out.failed.append((start, time.perf_counter()))
        except (OSError, http.client.HTTPException) as exc:
            out.errors.append(f"{type(exc).__name__}: {exc}")
            out.failed.append((start, time.perf_counter()))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def serve(args: argparse.Namespace) -> int:
    from char_rnn.layout import find_root
    from char_rnn.params import load_params
    from char_rnn.tracking import tracking_uri

    project = (args.project or find_root()).resolve()
    params = load_params(project / "params.yaml")
    uri = args.model_uri or f"models:/{params.registry.model_name}@champion"
    prompt = args.prompt or params.evaluate.prompt
    port = args.port or free_port()
    store = tracking_uri(project / "mlruns")
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1"]
    command += ["-p", str(port)] + (["-w", str(args.workers)] if args.workers else [])
    print(f"project {project}; store {store}")
    print(f"$ {' '.join(command)}")
    args.length = args.length or (20 if args.limits else 100)
    body = json.dumps(
        {"dataframe_records": [{"prompt": prompt, "length": args.length, "temperature": 0}]}, ensure_ascii=False
    ).encode()

    # --limits: a stall is measured, not cut off at the scoring server's 60 s (see the module's docstring)
    timeout = {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "900"} if args.limits else {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            start = time.perf_counter()
            process = subprocess.Popen(
                command,
                cwd=project,
                env=child_env(MLFLOW_TRACKING_URI=store, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false", **timeout),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: mlflow, uvicorn and its workers stop as one
            )
            try:
                try:
                    wait_http_ok(f"http://127.0.0.1:{port}/ping", process, args.ready_timeout)
                except (RuntimeError, TimeoutError) as exc:
                    print(f"server not ready: {exc}\n--- server log (end) ---")
                    print(log_path.read_text(errors="replace")[-4000:])
                    return 1
                ready = time.perf_counter() - start
                n, rss_ready, uss_ready = group_memory(process.pid)
                print(f"time to ready (start to /ping 200): {ready:.2f} s; {n} processes in the group")

                first = time.perf_counter()
                status, payload = post(port, body)
                first = time.perf_counter() - first
                print(f"first request ({args.length} chars, greedy): HTTP {status} in {first * 1000:.0f} ms")
                print(f"  {readable(payload)[:400]}")

                if args.bad_requests:
                    bad_requests(port)
                code = 0 if 200 <= status < 300 else 1
                if args.limits:
                    code = max(code, at_the_limits(port, body, args, big_request(project, params, args)))
                elif args.duration > 0:
                    code = max(code, load(port, body, args, (n, rss_ready, uss_ready), process.pid))
                return code
            finally:
                stop_server(process)


def bad_requests(port: int) -> None:
    print("malformed requests (status, body):")
    for what, content_type, text in BAD_REQUESTS:
        try:
            status, payload = post(port, text.encode(), content_type)
            print(f"  {what:<20} HTTP {status}  {readable(payload)[:300]}")
        except (OSError, http.client.HTTPException) as exc:
            print(f"  {what:<20} {type(exc).__name__}: {exc}")


def big_request(project: Path, params: Any, args: argparse.Namespace) -> bytes:
    """One request at the limits: `rows` prompts of `chars` characters of the project's corpus, each
    from its own offset (so that no two rows are the same text), greedy."""
    from char_rnn.layout import Layout

    rows = args.limits_rows or params.registry.max_rows
    chars = args.limits_prompt or params.registry.max_prompt
    corpus = Layout(project).corpus.read_text(encoding="utf-8")
    text = corpus * (chars // len(corpus) + 2)
    step = len(corpus) // rows
    records = [
        {"prompt": text[i * step : i * step + chars], "length": args.limits_length, "temperature": 0}
        for i in range(rows)
    ]
    print(f"big request: {rows} rows x {chars:,}-character prompts, length {args.limits_length}, greedy")
    return json.dumps({"dataframe_records": records}, ensure_ascii=False).encode()


def at_the_limits(port: int, short: bytes, args: argparse.Namespace, big: bytes) -> int:
    """Short requests before, during and after one big request; see the module's docstring."""
    clients = [Client() for _ in range(args.clients)]
    start = time.perf_counter()
    deadline = time.monotonic() + 2 * args.phase + 900  # ends early: see `stop` below
    stop = threading.Event()
    threads = [threading.Thread(target=client_loop, args=(port, short, deadline, c, stop)) for c in clients]
    for thread in threads:
        thread.start()
    time.sleep(args.phase)
    sent = time.perf_counter()
    status, payload = post(port, big, timeout=900)
    answered = time.perf_counter()
    time.sleep(args.phase)
    stop.set()
    for thread in threads:
        thread.join()
    spans = [span for c in clients for span in c.spans]
    errors = [e for c in clients for e in c.errors]
    phases = {
        "before": [e - s for s, e in spans if e < sent],
        "during": [e - s for s, e in spans if s < answered and e > sent],
        "after": [e - s for s, e in spans if s > answered],
    }
    failed = [(s, e) for c in clients for s, e in c.failed]
    print(f"limits: {args.clients} clients sending {args.length}-character greedy requests for {args.phase:g} s,")
    print(f"  then one request at the limits ({len(big) / 2**20:.1f} MiB of JSON), then {args.phase:g} s more")
    print(f"  big request: HTTP {status} in {answered - sent:.2f} s (sent {sent - start:.1f} s into the run)")
    if not 200 <= status < 300:
        print(f"  {readable(payload)[:300]}")
    for name, latencies in phases.items():
        if latencies:
            p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
            print(
                f"  short requests {name:<6}: {len(latencies):5d} answered, p50 {p50:6.0f} ms,"
                f" p99 {p99:6.0f} ms, max {max(latencies) * 1000:6.0f} ms"
            )
        else:
            print(f"  short requests {name:<6}: none answered")
    if failed:
        during = sum(s < answered and e > sent for s, e in failed)
        print(f"  short requests failed: {len(failed)} ({during} of them in flight while the big request was)")
    if phases["before"] and phases["during"]:
        ratio = percentile(phases["during"], 0.99) / percentile(phases["before"], 0.99)
        print(f"  p99 during / before: {ratio:.2f}x")
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}")
    return 1 if errors or not 200 <= status < 300 else 0


def load(port: int, body: bytes, args: argparse.Namespace, before: tuple[int, float, float], pgid: int) -> int:
    clients = [Client() for _ in range(args.clients)]
    deadline = time.monotonic() + args.duration
    threads = [threading.Thread(target=client_loop, args=(port, body, deadline, c)) for c in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    latencies = [x for c in clients for x in c.latencies]
    errors = [e for c in clients for e in c.errors]
    after = group_memory(pgid)
    total = len(latencies) + len(errors)
    print(f"load: {args.clients} clients x {args.duration:g} s, {args.length}-character greedy requests on loopback")
    print(f"  requests {total}, errors {len(errors)} (non-2xx and exceptions), in {elapsed:.1f} s")
    if latencies:
        rate = len(latencies) / elapsed
        print(f"  {rate:.1f} successful requests/s = {rate * args.length:,.0f} generated characters/s")
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        print(
            f"  latency p50 {p50:.0f} ms, p99 {p99:.0f} ms,"
            f" mean {statistics.fmean(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}")
    print(
        f"  server memory (process group): ready {before[0]} processes,"
        f" RSS {before[1]:.0f} MiB, USS {before[2]:.0f} MiB;"
        f" after load {after[0]} processes, RSS {after[1]:.0f} MiB, USS {after[2]:.0f} MiB"
        f" ({after[1] - before[1]:+.0f} MiB RSS)"
    )
    return 1 if errors or not latencies else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="project root (default: the one around the working directory)")
    parser.add_argument("--model-uri", help="default: models:/<registry.model_name>@champion of the project")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (threads, keep-alive)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load; 0: no load test")
    parser.add_argument("--length", type=int, help="characters per request (default 100; with --limits 20)")
    parser.add_argument("--prompt", help="default: evaluate.prompt of the project's params.yaml")
    parser.add_argument("--port", type=int, help="default: a free port")
    parser.add_argument("--workers", type=int, help="uvicorn workers (-w); default: MLflow's (1)")
    parser.add_argument("--ready-timeout", type=float, default=180, help="seconds to wait for /ping")
    parser.add_argument("--limits", action="store_true", help="short requests around one request at the limits")
    parser.add_argument("--phase", type=float, default=10, help="with --limits: seconds before and after it")
    parser.add_argument("--limits-rows", type=int, help="with --limits: rows (default registry.max_rows)")
    parser.add_argument("--limits-prompt", type=int, help="with --limits: prompt chars (default registry.max_prompt)")
    parser.add_argument("--limits-length", type=int, default=100, help="with --limits: its length per row")
    parser.add_argument("--bad-requests", action="store_true", help="print status and body of malformed requests")
    parser.add_argument("--prepare", nargs=2, metavar=("rnn|hybrid", "DIR"), help="build a project with a champion")
    parser.add_argument("--epochs", type=int, help="with --prepare: train.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --prepare: a param")
    args = parser.parse_args()
    if args.prepare:
        kind, dest = args.prepare
        if kind not in CONFIGS:
            parser.error(f"--prepare takes rnn or hybrid, not {kind}")
        prepare(kind, Path(dest).resolve(), args.set, args.epochs)
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
