"""Every command in the docs is run by a test, so the docs cannot rot.

Conventions of ``docs/*.md`` (see ``docs/README.md``):

* a fenced ```` ```sh ```` block is run, one command at a time, in a fresh directory per page;
  ``uvicorn ...`` and ``asyncgate serve ...`` start servers in the background (stopped after the
  page), everything else must exit 0;
* ``127.0.0.1:8000`` is the upstream, ``127.0.0.1:8080`` the gateway and ``127.0.0.1:9000`` a
  webhook receiver: each page gets free ports in their place (also ``%3A8000`` and ``--port N``);
* a comment ``# HTTP/1.1 202 Accepted`` under a command is the status its ``curl -i`` must show;
  a comment holding a JSON object is a response body: the real one must have the same keys;
* ``$RUN_ID`` is the ``run_id`` of the last response that named one, or what a command of the
  form ``RUN_ID=$(...)`` set it to (any ``NAME=$(...)`` alone on a line carries on so);
* a ```` ```python ```` block whose first line is ``# file: NAME`` is saved as NAME; any other is
  executed, in order, in one namespace per page;
* ```` ```shell ```` blocks are not run: they install or operate machines, and may hold only the
  commands in ``NOT_RUN``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from asyncgate.config import Config, declared_keys
from tests.support.redis_server import free_port
from tests.support.wait import wait_until

DOCS = Path(__file__).resolve().parent.parent / "docs"
REPO = DOCS.parent
PAGES = sorted(path.name for path in DOCS.glob("*.md"))
#: Pages whose sh blocks are run here; deployment.md builds images and charts, which tests/deploy checks.
RUN_PAGES = [name for name in PAGES if name != "deployment.md"]
#: Ports the docs use, each replaced by a free port on every page.
PORTS = (8000, 8080, 9000)
#: What a ```shell block (shown, not run) may hold: installing, and operating real machines.
NOT_RUN = ("python3 -m pip install", "pip install", "redis-cli", "kill ", "docker ", "helm ", "kubectl ")
SERVERS = ("uvicorn ", "asyncgate serve")
#: Seconds a server of the docs gets to stop after SIGTERM.
STOP_GRACE = 3
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
STATUS = re.compile(r"^HTTP/1\.1 (\d{3})")
#: A command that only sets a shell variable, which the page's later commands then use.
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=\$\(")


@dataclasses.dataclass
class Block:
    lang: str
    text: str


@dataclasses.dataclass
class Command:
    line: str
    #: The status shown under it (``# HTTP/1.1 NNN ...``), if any.
    status: int | None = None
    #: JSON bodies shown under it.
    bodies: list[Any] = dataclasses.field(default_factory=list)


def blocks(page: str) -> list[Block]:
    return [Block(match.group(1), match.group(2)) for match in FENCE.finditer((DOCS / page).read_text())]


def commands(text: str) -> list[Command]:
    """The commands of a ```sh block, with continuation lines and heredocs joined."""
    found: list[Command] = []
    lines = text.splitlines()
    shown: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if line.startswith("#"):
            if found:
                shown.append(line[1:].strip())
                _attach(found[-1], shown)
            continue
        shown = []
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            end = heredoc.group(1)
            body = []
            while i < len(lines) and lines[i].strip() != end:
                body.append(lines[i])
                i += 1
            i += 1
            line = "\n".join([line, *body, end])
        found.append(Command(line))
    return found


def _attach(command: Command, shown: list[str]) -> None:
    """Read what the docs show under a command: its status line, and JSON bodies."""
    last = shown[-1]
    if match := STATUS.match(last):
        command.status = int(match.group(1))
        shown.clear()
        return
    text = " ".join(shown)
    if not text.startswith(("{", "[")):
        shown.clear()
        return
    try:
        command.bodies.append(json.loads(text))
    except json.JSONDecodeError:
        return  # a body shown over several lines: wait for its end
    shown.clear()


class Page:
    """One page's run: its directory, ports, servers, and the last run id seen."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {port: free_port() for port in PORTS}
        self.servers: list[subprocess.Popen[bytes]] = []
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCGATE_")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}

    def local(self, text: str) -> str:
        for port, free in self.ports.items():
            for template in ("127.0.0.1:{}", "127.0.0.1%3A{}", "--port {}"):
                text = text.replace(template.format(port), template.format(free))
        return text

    def run(self, command: Command) -> None:
        line = self.local(command.line)
        if any(line.startswith(server) or f" {server}" in line.split("\n")[0] for server in SERVERS):
            self.start(line)
            return
        assigned = ASSIGNMENT.match(line)
        if assigned:
            # Each command runs in a shell of its own: hand the variable on through the environment.
            line += f'\nprintf "\\n%s" "${assigned.group(1)}"'
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", line],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            timeout=60,
        )
        out = done.stdout.decode(errors="replace")
        assert done.returncode == 0, f"{command.line}\nexit {done.returncode}\n{out}\n{done.stderr.decode()}"
        if assigned:
            value = out.rsplit("\n", 1)[-1]
            assert value, f"{command.line}\nset {assigned.group(1)} to nothing"
            self.env[assigned.group(1)] = value
            return
        self.check(command, out)
        if ids := re.findall(r'"run_id":\s*"([A-Za-z0-9_-]+)"', out):
            self.env["RUN_ID"] = ids[0]

    def check(self, command: Command, out: str) -> None:
        if command.status is not None:
            statuses = [int(m.group(1)) for m in map(STATUS.match, out.splitlines()) if m]
            assert statuses and statuses[-1] == command.status, f"{command.line}\nshown {command.status}, got:\n{out}"
        for shown in command.bodies:
            assert _same_shape(shown, _last_json(out)), f"{command.line}\nshown {shown}, got:\n{out}"

    def start(self, line: str) -> None:
        env = dict(self.env)
        if line.lstrip().split()[0] != "uvicorn" and "--port" not in line:
            env["ASYNCGATE_SERVER_PORT"] = str(self.ports[8080])
        process = subprocess.Popen(
            ["bash", "-c", line],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.servers.append(process)
        port = int(match.group(1)) if (match := re.search(r"--port (\d+)", line)) else self.ports[8080]
        wait_until(lambda: _listening(port) or process.poll() is not None, 20, message=line)
        if process.poll() is not None:
            assert process.stderr is not None
            raise AssertionError(f"{line}\nexited {process.returncode}\n{process.stderr.read().decode()}")
        if "asyncgate serve" in line:
            ready = f"http://127.0.0.1:{port}/_asyncgate/readyz"
            wait_until(lambda: httpx.get(ready, trust_env=False).status_code == 200, 20, message=ready)

    def execute(self, block: Block) -> None:
        code = self.local(block.text)
        first = code.splitlines()[0] if code else ""
        if match := re.match(r"# file: (\S+)", first):
            (self.workdir / match.group(1)).write_text(code)
            return
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            # dont_inherit: the page's code runs as a reader's would, without this module's __future__ imports.
            exec(compile(code, f"docs:{block.text[:40]!r}", "exec", dont_inherit=True), self.namespace)
        finally:
            os.chdir(cwd)

    def stop(self) -> None:
        # The gateways first, so they need not wait on upstreams that are going away.
        for process in reversed(self.servers):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                # An upstream still sleeping in a cancelled call: nothing left to lose.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _same_shape(shown: Any, real: Any) -> bool:
    """An object with the same keys (nested objects too), or a list whose first items are so."""
    if isinstance(shown, list):
        return isinstance(real, list) and (not shown or (bool(real) and _same_shape(shown[0], real[0])))
    if isinstance(shown, dict) and shown:
        return (
            isinstance(real, dict)
            and set(real) == set(shown)
            and all(_same_shape(shown[key], real[key]) for key in shown if isinstance(shown[key], dict))
        )
    return True


def _last_json(out: str) -> Any:
    for line in reversed(out.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    assert shutil.which("curl"), "the docs use curl, which is not installed (scripts/install installs it)"
    # Pages run from the top of a checkout, where config.example.yaml is.
    shutil.copy(REPO / "config.example.yaml", tmp_path)
    running = Page(tmp_path)
    yield running
    running.stop()


@pytest.mark.parametrize("name", RUN_PAGES)
def test_every_command_of_the_page_runs(name: str, page: Page) -> None:
    for block in blocks(name):
        if block.lang == "sh":
            for command in commands(block.text):
                page.run(command)
        elif block.lang == "python":
            page.execute(block)


@pytest.mark.parametrize("name", RUN_PAGES)
def test_every_shell_block_is_run_or_only_installs(name: str) -> None:
    for block in blocks(name):
        assert block.lang not in {"bash", "console", "shell-session", "zsh"}, f"{name}: use sh (run) or shell"
        if block.lang == "shell":
            for command in commands(block.text):
                assert command.line.startswith(NOT_RUN), f"{name}: {command.line!r} is not run: put it in an sh block"


def config_keys() -> set[str]:
    keys = {"upstream", "deployment"}
    for section in dataclasses.fields(Config):
        if section.name not in keys | {"routes"}:  # routes have their own table
            section_type = type(getattr(Config(), section.name))
            keys |= {f"{section.name}.{field.name}" for field in dataclasses.fields(section_type)}
    return keys


def example_values() -> dict[str, str]:
    """Every key of config.example.yaml with its value as written there."""
    values: dict[str, str] = {}
    section = ""
    for line in (REPO / "config.example.yaml").read_text().splitlines():
        match = re.match(r"^(\s*)(\w+):\s*(.*?)\s*(?:#.*)?$", line)
        if line.lstrip().startswith("#") or match is None:
            continue
        indent, key, value = match.groups()
        if not indent and not value:
            section = key
        else:
            values[f"{section}.{key}" if indent else key] = value
    return values


def test_configuration_reference_has_every_key_with_the_example_files_value() -> None:
    rows = re.findall(
        r"^\| `([a-z_]+(?:\.[a-z_]+)?)` \| `([^`]*)` \| `(\w+)` \|", (DOCS / "configuration.md").read_text(), re.M
    )
    documented = {key: value for key, value, _ in rows}
    assert set(documented) == config_keys()
    assert documented == example_values()
    for key, _, variable in rows:
        assert variable == "ASYNCGATE_" + key.replace(".", "_").upper()
    # The example file is itself a valid configuration.
    assert yaml.safe_load((REPO / "config.example.yaml").read_text())["upstream"]


def test_docs_link_to_pages_that_exist() -> None:
    for name in PAGES:
        for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", (DOCS / name).read_text()):
            assert (DOCS / target).resolve().exists() or (REPO / target).exists(), f"{name} links to {target}"


def test_shell_quoting_of_the_docs_is_valid() -> None:
    for name in PAGES:
        for block in blocks(name):
            if block.lang == "sh":
                for command in commands(block.text):
                    shlex.split(command.line.split("\n")[0], comments=True)


def test_a_curl_piped_to_another_command_is_silent() -> None:
    """Without -s, curl draws its progress meter over the page's output when its own output is a pipe."""
    for name in PAGES:
        for block in blocks(name):
            if block.lang == "sh":
                for command in commands(block.text):
                    for piped in re.findall(r"\bcurl\b([^|]*)\|(?!\|)", command.line):
                        assert re.search(r"\s-[a-zA-Z]*s", piped), f"{name}: curl{piped}| shows a progress meter"


def test_the_configuration_page_lists_every_flag_of_serve() -> None:
    layers = (DOCS / "configuration.md").read_text().partition("3. the flags of `asyncgate serve`:")[2]
    listed = re.findall(r"`(--[a-z-]+)`", layers.partition("\n\n")[0])
    assert sorted(listed) == sorted(str(key.info.flag) for key in declared_keys().values() if key.info.flag)
