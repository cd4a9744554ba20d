"""README's "Team setup", run as written on loopback: for `tests/test_team.py` and `benchmarks/team_overhead.py`.

What a team already operates is stood in for by real local processes: PostgreSQL 15 (a throw-away
cluster, `initdb` as the `postgres` user), a moto S3 server (for MinIO or AWS S3) and a bare git
repository holding this working tree (for the team's git server). Then every command of README's
"Team setup" block runs as written, in a clone of that repository, each with team.env sourced first,
and with the environment team.env reads pointing at free loopback ports: the database, the bucket, the
committed DVC remote, the MLflow server, the Prefect server, the work pool, the deployment, the worker,
the Dask scheduler and workers. Services start in the background, one-shot commands wait only for the
server they talk to, so the slow starts overlap.

Every process started here, and every process they start, carries `TEAM_SERVICES_RUN=<base folder>`
in its environment: `leftovers()` finds any of them still running after `stop()`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKER = "TEAM_SERVICES_RUN"
SETUP = "set -a && . ./team.env && set +a"  # README's switch, before each command
SERVICES = ("mlflow server", "prefect server start", "prefect worker start", "dask scheduler", "dask worker")
IDENTITY = {"user.name": "A. Teammate", "user.email": "teammate@example.com"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_commands() -> list[str]:
    """The commands of README's "Team setup" block, in order, without the switch line and comments."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- team-setup -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no team setup block (a ```bash block after <!-- team-setup -->)"
    lines = [line.split("  # ")[0].strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[0] == SETUP, f"the block starts with the switch: {SETUP}"
    return commands[1:]


def service_of(command: str) -> str | None:
    """`dask worker` for `PYTHONPATH=src:. dask worker ...`; None for a one-shot command."""
    bare = re.sub(r"^(\w+=\S+ )+", "", command)
    return next((name for name in SERVICES if bare.startswith(name + " ")), None)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 240, alive: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {alive.returncode}")
        with suppress(OSError):
            if check():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout_s} s")


def http_ok(url: str, payload: dict | None = None) -> bool:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status == 200 and (payload is None or bool(json.loads(response.read())))


def tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the process group, SIGKILL to whatever of it is left after the grace period."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(process.pid):
        time.sleep(0.2)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- what the team already runs: PostgreSQL, an S3 store, a git server --------------------------------


def _pg_bin() -> Path:
    found = shutil.which("pg_config")
    if found:
        return Path(subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert candidates, "no PostgreSQL server binaries: make test installs them (.ci/system-packages)"
    return Path(candidates[-1]).parent


def _as_postgres(*command: str) -> list[str]:
    """initdb refuses to run as root: as root, run the server's commands as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@dataclass
class Postgres:
    folder: Path
    port: int

    @classmethod
    def start(cls) -> Postgres:
        folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # short: its unix socket lives here
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        port, pg = free_port(), _pg_bin()
        initdb = [str(pg / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        subprocess.run(_as_postgres(*initdb, "--no-sync"), check=True, capture_output=True)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        start = [str(pg / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-o", options]
        subprocess.run(_as_postgres(*start, "start"), check=True, capture_output=True)
        return cls(folder, port)

    def running(self) -> bool:
        status = [str(_pg_bin() / "pg_ctl"), "-D", str(self.folder / "data"), "status"]
        return self.folder.exists() and subprocess.run(_as_postgres(*status), capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.running():
            stop = [str(_pg_bin() / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop"]
            subprocess.run(_as_postgres(*stop), check=True, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def make_origin(base: Path, source: Path = REPO) -> Path:
    """A bare repository whose main holds `source`'s working tree (tracked and new files, as they are now)."""
    tree = base / "tree"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, tree / name)
    git = ["git", "-c", f"user.name={IDENTITY['user.name']}", "-c", f"user.email={IDENTITY['user.email']}"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=tree, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tree, check=True)
    subprocess.run([*git, "commit", "-qm", "the project"], cwd=tree, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(tree), str(base / "origin.git")], check=True)
    shutil.rmtree(tree)
    return base / "origin.git"


# ---- the team setup ---------------------------------------------------------------------------------------


@dataclass
class Team:
    """The services README's commands started, the team's checkout they ran in, and what they read."""

    base: Path
    origin: Path
    checkout: Path
    env: dict[str, str]
    postgres: Postgres
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    readiness: dict[str, Callable[[], None]] = field(default_factory=dict)

    sourced: dict[str, str] = field(default_factory=dict)  # `env` after team.env: what every command sees

    @property
    def secret(self) -> str:
        return self.env["AWS_SECRET_ACCESS_KEY"]

    def url(self, name: str) -> str:
        """MLFLOW_TRACKING_URI, PREFECT_API_URL, DASK_SCHEDULER, ...: as team.env sets them."""
        if not self.sourced:
            printed = self.sh("env -0").stdout.split("\0")
            self.sourced = dict(line.split("=", 1) for line in printed if "=" in line)
        return self.sourced[name]

    def sh(self, command: str, cwd: Path | None = None, check: bool = True, **env: str):
        """One command as README runs it: team.env sourced first, in the team's checkout."""
        result = subprocess.run(
            ["bash", "-c", f"{SETUP} && {command}"],
            cwd=cwd or self.checkout,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check and result.returncode != 0:
            output = result.stdout[-3000:] + result.stderr[-3000:]
            raise RuntimeError(f"{command!r} failed ({result.returncode}):\n{output}")
        return result

    def start(self, name: str, command: str) -> None:
        """A service in the background, in its own process group, as README runs it."""
        self.spawn(name, ["bash", "-c", f"{SETUP} && {command}"], self.checkout)

    def spawn(self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        """A process of this setup, in its own group, logging to logs/<name>.log; `stop()` stops it."""
        with (self.base / "logs" / f"{name.replace(' ', '-')}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                argv, cwd=cwd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def ready(self, *names: str) -> None:
        for name in names:
            if name in self.readiness:
                self.readiness.pop(name)()

    def stop(self) -> None:
        """Worker first (no run starts meanwhile), servers after, the stand-ins last."""
        order = ("prefect worker start", "dask worker", "dask scheduler", "prefect server start", "mlflow server")
        for name in (*order, *self.processes):
            if name in self.processes:
                stop_group(self.processes.pop(name))
        if "moto" in self.processes:
            stop_group(self.processes.pop("moto"))
        self.postgres.stop()

    def leftovers(self) -> list[str]:
        """Processes still running that carry this setup's marker, and PostgreSQL if it still runs."""
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with suppress(OSError):
                if f"{MARKER}={self.base}".encode() in environ.read_bytes().split(b"\0"):
                    command = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append(f"{environ.parent.name}: {command}")
        return found + (["postgres"] if self.postgres.running() else [])

    def log(self, name: str) -> str:
        return (self.base / "logs" / f"{name.replace(' ', '-')}.log").read_text(errors="replace")


def _environment(base: Path, origin: Path, postgres: Postgres, s3_port: int) -> dict[str, str]:
    """What team.env reads, for loopback: free ports, a throw-away secret, a quiet and local Prefect."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_", "PG"))}
    (base / "gitconfig").write_text("")
    return {
        **inherited,
        MARKER: str(base),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the venv's mlflow, prefect, dask, dvc
        "GIT_CONFIG_GLOBAL": str(base / "gitconfig"),  # no identity but the checkout's and the deployment's
        "CHAR_RNN_REPO": origin.as_uri(),
        "CHAR_RNN_BUCKET": "char-rnn",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": "team-key-" + secrets.token_hex(4),
        "AWS_SECRET_ACCESS_KEY": "team-secret-" + secrets.token_hex(12),
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "PGUSER": "postgres",
        "MLFLOW_PORT": str(free_port()),
        "PREFECT_PORT": str(free_port()),
        "DASK_PORT": str(free_port()),
        "PREFECT_HOME": str(base / "prefect"),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # a triggered run starts within seconds, not 10
        "DASK_TEMPORARY_DIRECTORY": str(base / "dask"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


def _readiness(team: Team, name: str) -> Callable[[], None]:
    process = team.processes[name]
    checks: dict[str, Callable[[], bool]] = {
        "mlflow server": lambda: http_ok(team.url("MLFLOW_TRACKING_URI") + "/health"),
        "prefect server start": lambda: http_ok(team.url("PREFECT_API_URL") + "/health"),
        "dask scheduler": lambda: tcp_open(int(team.env["DASK_PORT"])),
        "dask worker": lambda: _dask_workers(team.url("DASK_SCHEDULER")) >= 2,
        "prefect worker start": lambda: http_ok(
            f"{team.url('PREFECT_API_URL')}/work_pools/{team.url('CHAR_RNN_POOL')}/workers/filter", {}
        ),
    }
    return lambda: wait_for(checks[name], name, alive=process)


def _dask_workers(address: str) -> int:
    from distributed import Client

    with Client(address, timeout=10) as client:
        return len(client.scheduler_info()["workers"])


# Which server a command talks to: it waits until that server is ready.
NEEDS = {"prefect": "prefect server start", "dask worker": "dask scheduler"}


def run_readme(team: Team) -> None:
    """README's commands in order: services in the background, one-shot commands once their server is up."""
    for command in readme_commands():
        bare = re.sub(r"^(\w+=\S+ )+", "", command)
        team.ready(*(server for prefix, server in NEEDS.items() if bare.startswith(prefix)))
        if name := service_of(command):
            team.start(name, command)
            team.readiness[name] = _readiness(team, name)
        else:
            team.sh(command)
    team.ready(*list(team.readiness))


def run_nightly(team: Team, parameters: dict | None = None, timeout_s: float = 1800) -> Any:
    """README's `prefect deployment run char-rnn/nightly`, waited for until the worker's run is final;
    returns the flow run as the Prefect server has it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    params = f" --params '{json.dumps(parameters)}'" if parameters else ""
    printed = team.sh(f"prefect deployment run char-rnn/nightly{params}").stdout
    flow_run_id = re.search(r"UUID: (\S+)", printed).group(1)
    with temporary_settings({PREFECT_API_URL: team.url("PREFECT_API_URL")}), get_client(sync_client=True) as client:
        wait_for(lambda: client.read_flow_run(flow_run_id).state.is_final(), "the nightly run", timeout_s)
        return client.read_flow_run(flow_run_id)


@contextmanager
def team_services(source: Path = REPO) -> Iterator[Team]:
    """Everything README's "Team setup" starts, on loopback; stopped on exit, whatever happened."""
    base = Path(tempfile.mkdtemp(prefix="team-"))
    (base / "logs").mkdir()
    s3_port = free_port()
    postgres = Postgres.start()
    team = Team(base, make_origin(base, source), base / "checkout", {}, postgres)
    try:
        team.env = _environment(base, team.origin, postgres, s3_port)
        team.spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], base)
        subprocess.run(["git", "clone", "-q", str(team.origin), str(team.checkout)], check=True, env=team.env)
        for key, value in IDENTITY.items():  # a teammate's own identity, for the commit README asks for
            subprocess.run(["git", "config", key, value], cwd=team.checkout, check=True)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{s3_port}/moto-api/"), "moto", alive=team.processes["moto"])
        run_readme(team)
        yield team
    finally:
        team.stop()
        if not os.environ.get("TEAM_SERVICES_KEEP"):  # set it to keep logs/ and the checkout for a look
            shutil.rmtree(base, ignore_errors=True)
