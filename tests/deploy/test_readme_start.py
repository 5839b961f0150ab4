"""The README's start command, read from README.md and run as a new user would: with Debian's own
python3 (externally managed, PEP 668), in a fresh copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import free_port
from tests.support.servers import ServerThread
from tests.support.upstream import Calls, upstream_app
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
#: The interpreter a fresh Debian or Ubuntu has, which refuses `pip install` outside a virtualenv.
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: The upstream the README's command names; the test puts its own upstream in its place.
README_UPSTREAM = "http://127.0.0.1:8000"
#: What scripts/serve says when it installs; a run that reuses .venv must not say it.
INSTALLING = "installing asyncgate"
#: Seconds a first start may take: a virtualenv, a newer pip, asyncgate and its dependencies.
FIRST_START = 300
#: Seconds a start with .venv in place may take.
START = 30
#: Seconds the gateway gets to drain and exit after SIGTERM.
STOP = 30
AUTH = {"Authorization": "Bearer readme-reader"}

debian_only = pytest.mark.skipif(
    not Path("/etc/debian_version").exists(), reason="the README promises Debian's system python3; this is not Debian"
)


def start_section(readme: str) -> str:
    """The text under README.md's "## Start it" heading, up to the next heading."""
    _, found, rest = readme.partition("\n## Start it\n")
    assert found, "README.md has no '## Start it' section"
    return rest.split("\n## ", 1)[0]


def start_command(readme: str) -> str:
    """The one command of the first ```sh block of the "Start it" section."""
    block = re.search(r"^```sh\n(.*?)^```", start_section(readme), re.MULTILINE | re.DOTALL)
    assert block, "README.md's 'Start it' section has no ```sh block"
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 1, f"README.md's start command must be one line, not {lines}"
    return lines[0]


def on_free_ports(command: str, upstream: str, port: int) -> str:
    """The README's command aimed at the test's upstream, listening on a free port.

    The README's gateway listens on 8080, which another gateway or test on this machine may hold;
    ``--port`` moves it. When the command pins no port the flag is appended, which works only
    because the command passes asyncgate's flags through, as the README says it does.
    """
    assert README_UPSTREAM in command, f"the start command does not name {README_UPSTREAM}: {command}"
    command = command.replace(README_UPSTREAM, upstream)
    if re.search(r"--port[ =]\d+", command):
        return re.sub(r"--port[ =]\d+", f"--port {port}", command)
    return f"{command} --port {port}"


def copy_checkout(destination: Path) -> None:
    """The files a clone would hold once the working tree is committed: tracked and new ones, as
    they are now, and nothing ignored (no .venv, no data directory)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)  # copy2 keeps the scripts executable


def user_environment(python3: Path, bin_dir: Path) -> dict[str, str]:
    """The environment of a shell where ``python3`` is ``python3``: first on PATH, nothing
    asyncgate- or virtualenv-specific set."""
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python3)
    dropped = ("ASYNCGATE_", "PYTHON", "VIRTUAL_ENV", "CONDA_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


class Started:
    """The README's command, running in the background with its output in a file."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float) -> None:
        wait_until(lambda: self._healthy() or self.process.poll() is not None, timeout, message="the gateway's start")
        assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.output()}"

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/_asyncgate/healthz", trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        """SIGTERM to the command's process group, as a terminal's Ctrl-C would send SIGINT."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise


@pytest.fixture
def upstream() -> Iterator[tuple[ServerThread, Calls]]:
    calls = Calls()
    with ServerThread(upstream_app(calls)) as server:
        yield server, calls


def assert_serves_async_requests(gateway: Started, calls: Calls) -> None:
    """Alive, ready on the embedded store, and a ?async=true request runs to its result."""
    with httpx.Client(base_url=gateway.base, trust_env=False, timeout=10) as client:
        health = client.get("/_asyncgate/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = client.get("/_asyncgate/readyz")
        assert ready.status_code == 200
        assert (ready.json()["status"], ready.json()["store"]) == ("ready", "embedded")

        calls.clear()
        accepted = client.post("/echo?async=true", headers=AUTH, content=b'{"from": "the README"}')
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        assert accepted.json() == {"run_id": run_id, "status": "queued"}
        location = accepted.headers["location"]
        assert location == f"/_asyncgate/runs/{run_id}"

        def finished() -> dict[str, object] | None:
            status = client.get(location, headers=AUTH).json()
            return status if status["status"] in ("succeeded", "failed", "cancelled") else None

        status = wait_until(finished, 30, interval=0.1, message="the async run's end")
        assert (status["status"], status["upstream_status"], status["error"]) == ("succeeded", 200, None)
        result = client.get(f"{location}/result", headers=AUTH)
        assert result.status_code == 200
        assert result.headers["content-type"] == "application/json"
        echoed = result.json()
        assert (echoed["method"], echoed["path"], echoed["query"]) == ("POST", "/echo", "")
        assert echoed["body"] == '{"from": "the README"}'
        assert [call["path"] for call in calls.all()] == ["/echo"]


@pytest.mark.slow
@debian_only
def test_readme_start_command_serves_on_debian_python_and_reuses_its_virtualenv(
    tmp_path: Path, upstream: tuple[ServerThread, Calls]
) -> None:
    assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is missing: scripts/install installs Debian's python3"
    server, calls = upstream
    checkout = tmp_path / "asyncgate"
    copy_checkout(checkout)
    env = user_environment(SYSTEM_PYTHON, tmp_path / "bin")
    readme_command = start_command(README.read_text())

    for run, timeout in enumerate((FIRST_START, START), start=1):
        port = free_port()
        log = tmp_path / f"run-{run}.log"
        gateway = Started(on_free_ports(readme_command, server.url, port), checkout, env, log, port)
        try:
            gateway.wait_healthy(timeout)
            assert_serves_async_requests(gateway, calls)
        finally:
            status = gateway.stop()
        assert status == 0, gateway.output()
        installed = INSTALLING in gateway.output()
        # The first run installs into a new .venv; the second finds it and starts at once.
        assert installed == (run == 1), f"run {run}:\n{gateway.output()}"
    assert (checkout / "asyncgate-data").is_dir()
    # The virtualenv is the system interpreter's, not the one running this test.
    assert (checkout / ".venv" / "bin" / "python").resolve() == SYSTEM_PYTHON.resolve()


def test_readme_start_command_without_venv_says_what_to_install_and_exits_2(tmp_path: Path) -> None:
    """A python3 as Debian's is without python3-venv: ensurepip is missing, and the command says so."""
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('ensurepip is in python3-venv')\n")
    # A python3 that cannot import ensurepip, as on Debian without python3-venv.
    without_venv = tmp_path / "python3-without-venv"
    without_venv.write_text(f'#!/bin/sh\nPYTHONPATH={shadow.parent} exec {sys.executable} "$@"\n')
    without_venv.chmod(0o755)
    checkout = tmp_path / "asyncgate"
    copy_checkout(checkout)
    env = user_environment(without_venv, tmp_path / "bin")
    command = on_free_ports(start_command(README.read_text()), "http://127.0.0.1:9", free_port())

    done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, timeout=60)

    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr.decode() == (
        "scripts/serve: python3 cannot make a virtualenv: install python3-venv (sudo apt-get install python3-venv)\n"
    )
    assert not (checkout / ".venv").exists()


def _joined(text: str) -> str:
    """Shell text with continuation lines joined and runs of spaces made one."""
    return " ".join(text.replace("\\\n", " ").split())


def test_readme_names_the_image_and_the_chart_as_deployment_md_does() -> None:
    section = start_section(README.read_text())
    spans = re.findall(r"`((?:docker|helm) [^`]+)`", section)
    deployment = _joined(DEPLOYMENT.read_text())
    assert [span.split()[0] for span in spans] == ["docker", "helm"]
    for span in spans:
        for command in span.split(" && "):
            assert command in deployment, f"README.md's {command!r} is not as docs/deployment.md has it"
    assert "(docs/deployment.md#the-image)" in section
    assert "(docs/deployment.md#standalone-with-helm)" in section
