"""The Dockerfile, read as Docker reads it (no Docker engine here), and its commands run locally."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Packages that mean a compiler toolchain; none may be installed in the final stage.
TOOLCHAIN = ("build-essential", "gcc", "g++", "clang", "make", "libc6-dev", "python3-dev")


@dataclasses.dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON-array form's words; fails for a shell-form instruction."""
        words = json.loads(self.arguments)
        assert isinstance(words, list) and all(isinstance(w, str) for w in words), self.arguments
        return words


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile: continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=substitute(words[0], args), name=name, instructions=[]))
        elif not stages and instruction.keyword == "ARG":
            key, _, default = instruction.arguments.partition("=")
            args[key] = default
        else:
            assert stages, f"{instruction.keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    return args, stages


def substitute(word: str, args: dict[str, str]) -> str:
    for key, value in args.items():
        word = word.replace("${" + key + "}", value).replace("$" + key, value)
    return word


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_builds_in_two_stages_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert builder.base == final.base == "python:3.11-slim"
    assert ".[speed]" in " ".join(i.arguments for i in builder.all("RUN"))


def test_final_stage_takes_only_the_virtualenv_from_the_builder(final: Stage) -> None:
    copies = final.all("COPY")
    assert [c.arguments for c in copies] == ["--from=builder /opt/asyncgate /opt/asyncgate"]
    assert any("PATH=/opt/asyncgate/bin:$PATH" in e.arguments for e in final.all("ENV"))


def test_final_stage_installs_no_compilers(final: Stage) -> None:
    for run in final.all("RUN"):
        words = shlex.split(run.arguments)
        assert not set(words) & set(TOOLCHAIN), run.arguments
        assert "apt-get" not in words or "install" not in words, f"the final stage installs packages: {run.arguments}"


def test_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    user = final.last("USER").arguments
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, user
    assert not gid or (gid.isdigit() and int(gid) > 0), user
    # Nothing after USER runs as root again.
    after = final.instructions[final.instructions.index(final.last("USER")) :]
    assert [i.keyword for i in after if i.keyword == "RUN"] == []
    assert any(uid in run.arguments for run in final.all("RUN")), "the user is not created with its UID"


def test_environment_workdir_and_port(final: Stage) -> None:
    env = " ".join(e.arguments for e in final.all("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert final.last("WORKDIR").arguments == "/var/lib/asyncgate"
    assert final.last("EXPOSE").arguments == "8080"


def test_entrypoint_and_cmd_are_exec_form(final: Stage) -> None:
    # Exec form so that SIGTERM reaches asyncgate itself, not a /bin/sh that would swallow it.
    assert final.last("ENTRYPOINT").exec_form() == ["asyncgate"]
    assert final.last("CMD").exec_form() == ["serve", "--host", "0.0.0.0"]


def test_healthcheck_probes_healthz_with_the_standard_library(final: Stage) -> None:
    healthcheck = final.last("HEALTHCHECK").arguments
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    words = json.loads(command)
    assert words[:2] == ["python", "-c"]
    assert "urllib.request" in words[2] and "/_asyncgate/healthz" in words[2]
    assert "curl" not in healthcheck and "wget" not in healthcheck


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/_asyncgate/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_command_passes_on_200_and_fails_otherwise(
    final: Stage, health_server: tuple[int, type[_Health]]
) -> None:
    port, handler = health_server
    code = json.loads(final.last("HEALTHCHECK").arguments.partition(" CMD ")[2])[2]
    env = {**os.environ, "ASYNCGATE_SERVER_PORT": str(port)}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=10).returncode == 0
    handler.status = 503
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=10).returncode != 0


def test_build_context_holds_what_the_builder_copies(stages: list[Stage]) -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context is an allowlist"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for copy in stages[0].all("COPY"):
        *sources, _destination = copy.arguments.split()
        for source in sources:
            source = source.rstrip("/")
            assert source in allowed, f"{source} is excluded from the build context by .dockerignore"
            assert (ROOT / source).exists(), f"{source} is copied but missing from the repository"


@pytest.mark.skipif(importlib.util.find_spec("asyncgate.cli") is None, reason="asyncgate.cli is not written yet")
def test_entrypoint_command_runs(final: Stage) -> None:
    # `python -m asyncgate` is the console script `asyncgate` without relying on PATH.
    command = [sys.executable, "-m", *final.last("ENTRYPOINT").exec_form()]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    serve = final.last("CMD").exec_form()
    result = subprocess.run([*command, serve[0], "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for flag in serve[1:]:
        if flag.startswith("--"):
            assert flag in result.stdout
    assert "--config" in result.stdout
