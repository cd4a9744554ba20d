"""What the repository itself promises about security, read from its tracked files.

Every server it documents or starts binds 127.0.0.1 (never every interface, never MLflow's host check
turned off or gunicorn options passed through); no credential is committed; Keras models load only in
safe mode, and registered ones through the project's sha256-checked loader, with MLflow's pickle
loading off where a registered model is served.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md"))]
PYTHON_DIRS = ("src", "pipelines", "benchmarks", "tests")

# Written so that no pattern matches its own source text.
SERVER = re.compile(
    r"^(?:\S*/)?(mlflow (?:server|ui|models serve)|prefect server start|dask[ -](?:scheduler|worker)|char-rnn ui)\b"
)
LOOPBACK = re.compile(r"(?:--host[ =]|-h )127\.0\.0\.1\b")
FORBIDDEN = {
    "every interface": re.compile(r"\b0\.0\.0\.0\b"),
    "MLflow's host check off": re.compile(r"--allowed-host[s][ =]?['\"]?\*"),
    "gunicorn options": re.compile(r"--gunicorn-opt[s]"),
}


def _tracked() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True).stdout
    return [REPO / name for name in names.split("\0") if name and (REPO / name).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary: plots, .npy


def shell_commands(text: str) -> list[str]:
    """Logical lines (backslash continuations joined) of a document, with leading `$ ` and VAR=value cut."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = re.sub(r"^\s*(?:\$ )?(?:export )?(?:[A-Z_]+=\S+ +)*", "", line)
        if SERVER.match(line):
            commands.append(line)
    return commands


def python_commands(source: str) -> list[str]:
    """Argument lists built in code (`[..., "mlflow", "server", ...]`), unparsed, that start a server."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple):
            words = " ".join(
                re.sub(r"\W", " ", ast.unparse(element)).split()[-1]
                for element in node.elts
                if re.sub(r"\W", " ", ast.unparse(element)).split()
            )
            if SERVER.search(words) or re.search(r"\b(mlflow (server|ui)|models serve|prefect server start)\b", words):
                found.append(ast.unparse(node))
    return found


def _documented() -> dict[str, list[str]]:
    return {str(path.relative_to(REPO)): shell_commands(path.read_text(encoding="utf-8")) for path in DOCS}


def _coded() -> dict[str, list[str]]:
    return {
        str(path.relative_to(REPO)): python_commands(path.read_text(encoding="utf-8"))
        for folder in PYTHON_DIRS
        for path in sorted((REPO / folder).rglob("*.py"))
    }


def test_every_documented_server_command_binds_loopback():
    commands = [(where, c) for where, found in _documented().items() for c in found]
    starts = {SERVER.match(c).group(1) for _, c in commands}
    assert {"mlflow models serve", "prefect server start", "char-rnn ui"} <= starts  # the reader still finds them
    for where, command in commands:
        # `char-rnn ui` has no host option: the code that builds its command is checked below
        assert LOOPBACK.search(command) or command.startswith(("char-rnn ui", "$(BIN)/char-rnn ui")), (where, command)


def test_every_server_the_code_starts_binds_loopback():
    commands = [(where, c) for where, found in _coded().items() for c in found]
    assert any(where == "src/char_rnn/cli.py" for where, _ in commands)  # `char-rnn ui`'s mlflow server
    for where, command in commands:
        assert re.search(r"'(--host|-h)', '127\.0\.0\.1'", command), (where, command)


def test_the_parsers_find_what_they_must_refuse():
    assert shell_commands("MLFLOW_TRACKING_URI=x \\\n  mlflow models serve -m m -h 127.0.0.1 -p 1") == [
        "mlflow models serve -m m -h 127.0.0.1 -p 1"
    ]
    (exposed,) = shell_commands("$ .venv/bin/prefect server start --host 10.0.0.1")
    assert not LOOPBACK.search(exposed)
    (coded,) = python_commands('cmd = [sys.executable, "-m", "mlflow", "server", "--port", "5000"]')
    assert "127.0.0.1" not in coded


def test_no_tracked_file_opens_a_server_beyond_loopback():
    for path in _tracked():
        text = _text(path)
        for what, pattern in FORBIDDEN.items():
            assert not (text and pattern.search(text)), f"{path.relative_to(REPO)}: {what}"


# ---- credentials ------------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"^(<[^>]*>|\$\{?\w+\}?|\.\.\.|\*+|x+|(your|example|changeme|placeholder)\w*)$", re.I)
SECRETS = {
    "AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "private key": re.compile("-----BEGIN ([A-Z]+ )?PRIVATE" + " KEY-----"),
}
ASSIGNED = re.compile(
    r"\b(aws_secret_access_key|secret_access_key|password|passwd|token)\s*[=:]\s*['\"]?(<[^>]*>|[^\s'\"]+)", re.I
)
URI_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@", re.I)


def credentials(text: str) -> list[str]:
    """What in a text looks like a committed secret: a key, a key's secret, or a password in a URI."""
    found = [name for name, pattern in SECRETS.items() if pattern.search(text)]
    for match in ASSIGNED.finditer(text):
        value = match.group(2).rstrip(",;)")
        if (
            not PLACEHOLDER.match(value)
            and "(" not in value
            and "." not in value
            and value.lower() not in {"none", "null"}
        ):
            found.append(f"{match.group(1)} = {value[:4]}...")
    found += [
        f"password in a URI ({m.group(0)[:12]}...)"
        for m in URI_PASSWORD.finditer(text)
        if not PLACEHOLDER.match(m.group(1))
    ]
    return found


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key = AKIA" + "Q" * 16, True),
        ("aws_secret_access_key = " + "wJalrXUtnFEMIK7MDENGbPxRfiCY" * 2, True),
        ("url = s3://" + "backup:hunter2@bucket/path", True),
        ("-----BEGIN RSA PRIVATE" + " KEY-----", True),
        ("aws_secret_access_key = <your secret key>", False),
        ("url = https://" + "user:${PASSWORD}@example.org", False),
        ("password = os.environ['PASSWORD']", False),
    ],
)
def test_the_credential_scan_tells_secrets_from_placeholders(text: str, secret: bool):
    assert bool(credentials(text)) is secret, credentials(text)


def test_no_credentials_in_tracked_files():
    found = {str(p.relative_to(REPO)): credentials(t) for p in _tracked() if (t := _text(p)) and credentials(t)}
    assert not found


def test_dvc_credentials_have_a_git_ignored_home():
    """`dvc remote modify --local` writes them to .dvc/config.local, which git must never pick up."""
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO, check=False)
    assert ignored.returncode == 0


# ---- loading models ---------------------------------------------------------------------------------


def _calls(folders: tuple[str, ...]) -> list[tuple[str, ast.Call]]:
    return [
        (f"{path.relative_to(REPO)}:{node.lineno}", node)
        for folder in folders
        for path in sorted((REPO / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
    ]


def test_keras_models_load_only_in_safe_mode():
    loads = [
        (where, call)
        for where, call in _calls(PYTHON_DIRS)
        if re.search(r"\b(keras|saving|models)\.load_model$", ast.unparse(call.func))
        and "mlflow" not in ast.unparse(call.func)
    ]
    assert loads  # char_rnn.model.load_model's own call
    for where, call in loads:
        safe = [k.value for k in call.keywords if k.arg == "safe_mode"]
        assert not safe or not (isinstance(safe[0], ast.Constant) and safe[0].value is False), where


def test_code_never_loads_a_registered_model_around_its_sha256_check():
    """mlflow.pyfunc.load_model would run the stored code before any hash is checked: the project uses
    `char_rnn.bundle.load_registered` (files checked against the version's sha256 tags, then read)."""
    bypass = [
        where
        for where, call in _calls(("src", "pipelines"))
        if re.search(r"(^|\.)(pyfunc|keras|tensorflow)\.load_model$", ast.unparse(call.func))
    ]
    assert not bypass


def test_every_documented_model_server_refuses_pickled_models():
    """MLflow 3 unpickles a cloudpickled pyfunc unless this is false; ours are models-from-code."""
    serves = [c for path in DOCS for c in _logical(path) if "mlflow models serve" in c]
    assert serves
    for command in serves:
        assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" in command, command


def _logical(path: Path) -> list[str]:
    """Fenced code blocks' logical lines, each with the `export`s earlier in its block prepended."""
    lines, exported, fenced = [], "", path.suffix != ".md"
    for line in re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8")).splitlines():
        if line.startswith("```"):
            exported, fenced = "", not fenced
        elif line.startswith("export "):
            exported += line + " "
        elif fenced:
            lines.append(exported + line)
    return lines
