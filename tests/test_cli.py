"""The command line, run as a user runs it: a real process, real signals."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from asyncgate import cli
from tests.support.redis_server import free_port
from tests.support.wait import wait_until

ASYNCGATE = [sys.executable, "-m", "asyncgate"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ASYNCGATE, *args], capture_output=True, text=True, timeout=60, env=env)


def test_serve_without_upstream_is_one_line_and_exit_2() -> None:
    result = run_cli("serve", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "asyncgate: configuration error: upstream: is required (the URL of the server asyncgate fronts)"
    ]
    assert "Traceback" not in result.stderr


def test_check_config_accepts_the_example_and_names_a_bad_key(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    good = run_cli("check-config", str(example))
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: http://a:1\nlimits:\n  max_inflight: lots\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "asyncgate: configuration error: limits.max_inflight: expected an integer, got 'lots'"
    )
    missing = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "cannot read the file" in missing.stderr


def test_serve_runs_on_the_embedded_store_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    upstream = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [*ASYNCGATE, "serve", "--upstream", upstream, "--port", str(port), "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/_asyncgate/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=20, message="gateway ready")
        assert process.stderr is not None
        # The "listening on" line is written before the gateway answers; the executor's first
        # lines (its recovery grace, say) may come before or after it.
        listening = f"listening on {base} (Ctrl-C or SIGTERM drains and stops it)\n"
        says = [process.stderr.readline() for _ in range(5)]
        while not says[-1].endswith(listening) and len(says) < 8:
            says.append(process.stderr.readline())
        assert says[-1].endswith(listening), says
        assert not any("Traceback" in line for line in says), says
        anonymous = httpx.post(f"{base}/predict?async=true", content=b"{}", timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "credentials_required"
        headers = {"Authorization": "Bearer t0ken"}
        accepted = httpx.post(f"{base}/predict?async=true", content=b"{}", headers=headers, timeout=5)
        assert accepted.status_code == 202
        assert (tmp_path / "d" / "asyncgate.db").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, workers: str) -> None:
    """The port is bound before the gateway starts: no "asyncgate ready" for a gateway that cannot listen."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "ASYNCGATE_STORE_PLAINTEXT": "true"}
        flags = ["--port", str(port), "--workers", workers, "--data-dir", str(tmp_path / "d")]
        if workers != "1":
            flags += ["--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--deployment", "walk"]
        result = run_cli("serve", "--upstream", f"http://127.0.0.1:{free_port()}", *flags, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"asyncgate: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "d").exists()


def test_serve_with_an_unusable_data_dir_says_why_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    data_dir = tmp_path / "file" / "d"
    result = run_cli(
        "serve", "--upstream", "http://127.0.0.1:1", "--port", str(free_port()), "--data-dir", str(data_dir)
    )
    assert result.returncode == 2  # a configuration error, as every other
    assert result.stderr.count(f"cannot use {data_dir}") == 1, result.stderr
    assert f"asyncgate: configuration error: store.data_dir: cannot use {data_dir}" in result.stderr
    assert "Traceback" not in result.stderr


def _serve(tmp_path: Path, port: int, pre_stop_delay: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ASYNCGATE_SHUTDOWN_PRE_STOP_DELAY": pre_stop_delay}
    upstream = f"http://127.0.0.1:{free_port()}"
    return subprocess.Popen(
        [*ASYNCGATE, "serve", "--upstream", upstream, "--port", str(port), "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _readyz(port: int) -> httpx.Response | None:
    try:
        # A new connection each time, as a load balancer's probe makes.
        return httpx.get(f"http://127.0.0.1:{port}/_asyncgate/readyz", timeout=2)
    except httpx.TransportError:
        return None


def test_sigterm_fails_readiness_for_the_pre_stop_delay_before_the_listener_closes(tmp_path: Path) -> None:
    port = free_port()
    with _serve(tmp_path, port, "2s") as process:
        try:
            wait_until(lambda: (r := _readyz(port)) is not None and r.status_code == 200, timeout=20, message="ready")
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_until(lambda: (r := _readyz(port)) is not None and r.status_code == 503, timeout=5, message="503")
            probe = _readyz(port)
            assert probe is not None and (probe.status_code, probe.json()) == (503, {"status": "draining"})
            # Still serving meanwhile: liveness, and pass-through requests (here to an upstream that is down).
            assert httpx.get(f"http://127.0.0.1:{port}/_asyncgate/healthz", timeout=2).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/predict", timeout=5).status_code == 502
            assert process.wait(timeout=20) == 0
            assert time.monotonic() - signalled >= 2
            assert _readyz(port) is None  # the listener is closed
        finally:
            process.kill()
        assert process.stderr is not None
        log = process.stderr.read().decode()
    assert "/readyz answers 503 for 2.0s before the listener closes" in log
    assert "Traceback" not in log


def test_a_second_sigterm_cuts_the_pre_stop_delay_short(tmp_path: Path) -> None:
    port = free_port()
    with _serve(tmp_path, port, "60s") as process:
        try:
            wait_until(lambda: (r := _readyz(port)) is not None and r.status_code == 200, timeout=20, message="ready")
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: (r := _readyz(port)) is not None and r.status_code == 503, timeout=5, message="503")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            process.kill()
        assert process.stderr is not None
        assert "a second signal cut the pre-stop delay short" in process.stderr.read().decode()


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield command
                yield from _commands(command)


def test_every_command_and_argument_has_help() -> None:
    """A new user's `asyncgate X --help` says what X does and what each of its arguments is."""
    commands = list(_commands(cli._parser()))
    assert len(commands) == 10  # serve, check-config, runs and its seven commands
    for command in commands:
        assert command.description, command.prog
        for action in command._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{command.prog} {action.dest}"
