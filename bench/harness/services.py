"""Starting each server of the bench, pinned, on a free port, and waiting until it answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import nginx
from .procs import LOAD_CORE, SUT_CORE, BenchError, Child, Supervisor, free_port, wait_http

PEERS_DIR = Path(__file__).resolve().parent.parent / "peers"
GATEWAY_ENV = {
    "ASYNCGATE_SERVER_LOG_LEVEL": "warning",
    # A gateway on Redis seals credentials at rest with a key, and needs a key prefix (or a
    # deployment) when its upstream is on loopback; the bench's queue audit reads "{asyncgate}".
    # A fixed key made for the bench, never a real deployment's.
    "ASYNCGATE_STORE_ENCRYPTION_KEY": "3SCkBoXeoFoEEJeVeqhJ0UY5y7Ie5Ph35HZa0nvV3Yw=",
    "ASYNCGATE_STORE_KEY_PREFIX": "asyncgate",
}
START_TIMEOUT_S = 30.0
SNAPSHOT_TRIES = 6
SNAPSHOT_RETRY_S = 10.0


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    child: Child
    #: Processes that live and die with this server (the Celery pattern's worker).
    companions: tuple[Child, ...] = ()


def _uvicorn(module: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", f"{module}:app",
        "--app-dir", str(PEERS_DIR),
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools",
        "--log-level", "warning", "--no-access-log",
        "--backlog", "16384", "--timeout-keep-alive", "120",
    ]  # fmt: skip


def start_redis(sup: Supervisor, workdir: Path, *, durable: bool, core: int | None = LOAD_CORE) -> Server:
    port = free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if durable else ["--appendonly", "no"]
    # A directory of its own: with AOF, a Redis started where another left its file would load
    # that one's runs (S4 would find S3's queue).
    data = tempfile.mkdtemp(prefix="redis-", dir=workdir)
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--dir", data, "--maxclients", "20000", "--protected-mode", "no", *persistence,
    ]  # fmt: skip
    child = sup.spawn("redis", argv, core=core)
    _wait_tcp(port, child)
    return Server("redis", f"redis://127.0.0.1:{port}/0", child)


def flush_redis(redis: Server) -> None:
    port = redis.url.rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["redis-cli", "-p", port, "FLUSHALL"], check=True, capture_output=True, timeout=30)


def start_nginx_upstream(sup: Supervisor, workdir: Path) -> Server:
    port = free_port()
    conf = nginx.upstream_conf(workdir / "nginx-upstream", port)
    child = sup.spawn("nginx-upstream", nginx.argv(conf), core=LOAD_CORE)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/1k", child, START_TIMEOUT_S)
    return Server("nginx-upstream", url, child)


def start_py_upstream(sup: Supervisor, delay: float) -> Server:
    port = free_port()
    child = sup.spawn("py-upstream", _uvicorn("upstream_app", port), core=LOAD_CORE, env={"BENCH_DELAY": str(delay)})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/__stats", child, START_TIMEOUT_S)
    return Server("py-upstream", url, child)


def start_nginx_proxy(sup: Supervisor, workdir: Path, upstream: Server) -> Server:
    port = free_port()
    upstream_port = int(upstream.url.rsplit(":", 1)[1])
    conf = nginx.proxy_conf(workdir / "nginx-proxy", port, upstream_port)
    child = sup.spawn("nginx-proxy", nginx.argv(conf), core=SUT_CORE)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/1k", child, START_TIMEOUT_S)
    return Server("nginx", url, child)


def start_peer(sup: Supervisor, name: str, module: str, upstream: Server, redis: Server | None = None) -> Server:
    port = free_port()
    env = {"BENCH_UPSTREAM": upstream.url, "BENCH_REDIS_URL": redis.url if redis else ""}
    child = sup.spawn(name, _uvicorn(module, port), core=SUT_CORE, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_tcp(port, child)
    return Server(name, url, child)


def start_ws_echo(sup: Supervisor) -> Server:
    """The WebSocket scenario's upstream (peers/ws_echo.py), on the load core."""
    port = free_port()
    child = sup.spawn("ws-echo", [sys.executable, str(PEERS_DIR / "ws_echo.py"), str(port)], core=LOAD_CORE)
    _wait_tcp(port, child)
    return Server("ws-echo", f"http://127.0.0.1:{port}", child)


def start_bare_ws_relay(sup: Supervisor, upstream: Server) -> Server:
    """The WebSocket relay floor (peers/bare_ws_relay.py), on the core under test."""
    port = free_port()
    upstream_port = upstream.url.rsplit(":", 1)[1]
    argv = [sys.executable, str(PEERS_DIR / "bare_ws_relay.py"), str(port), upstream_port]
    child = sup.spawn("bare-ws-relay", argv, core=SUT_CORE)
    _wait_tcp(port, child)
    return Server("bare-ws-relay", f"http://127.0.0.1:{port}", child)


def start_celery_pattern(sup: Supervisor, upstream: Server, redis: Server) -> Server:
    """The Celery pattern's API with its worker beside it, both on the SUT core."""
    worker = start_celery_worker(sup, upstream, redis)
    try:
        api = start_peer(sup, "celery-api", "celery_pattern", upstream, redis)
    except BaseException:
        sup.stop(worker)
        raise
    return Server(api.name, api.url, api.child, companions=(worker,))


def start_celery_worker(sup: Supervisor, upstream: Server, redis: Server) -> Child:
    """The worker with Celery's defaults (prefork, one process per core), on the SUT core."""
    env = {"BENCH_UPSTREAM": upstream.url, "BENCH_REDIS_URL": redis.url}
    argv = [sys.executable, "-m", "celery", "-A", "celery_pattern:celery", "worker", "--loglevel=WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    child = sup.spawn("celery-worker", argv, core=SUT_CORE, env=env, cwd=PEERS_DIR)
    _wait_celery(child, env)
    return child


@dataclass(frozen=True)
class GatewayCommand:
    """How to start `asyncgate serve`: the command and the environment it needs."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    origin: str


def installed_gateway() -> tuple[GatewayCommand | None, str]:
    """The `asyncgate` command on PATH, as installed (an editable install follows the live tree)."""
    exe = shutil.which("asyncgate")
    if exe is None:
        return None, "the asyncgate command is not installed (pip install -e .)"
    command = GatewayCommand((exe,), (), f"installed: {exe}")
    problem = _check(command)
    return (None, problem) if problem else (command, command.origin)


def snapshot_gateway(src: Path, workdir: Path) -> tuple[GatewayCommand | None, str]:
    """A copy of the source tree taken now, so edits made while the bench runs do not reach it.

    The copy is retried a few times: a tree caught in the middle of an edit may not import.
    """
    problem = f"no package at {src}"
    for _ in range(SNAPSHOT_TRIES):
        if not (src / "asyncgate").is_dir():
            break
        dest = workdir / "gateway-src"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src / "asyncgate", dest / "asyncgate", ignore=shutil.ignore_patterns("__pycache__"))
        command = GatewayCommand(
            (sys.executable, "-m", "asyncgate"), (("PYTHONPATH", str(dest)),), f"snapshot of {src}"
        )
        failure = _check(command, must_import_from=dest)
        if failure is None:
            return command, command.origin
        problem = failure
        time.sleep(SNAPSHOT_RETRY_S)
    return None, problem


def _check(command: GatewayCommand, must_import_from: Path | None = None) -> str | None:
    env = _env(dict(command.env))
    probe = [sys.executable, "-c", "import asyncgate.app, asyncgate.cli; print(asyncgate.__file__)"]
    try:
        where = subprocess.run(probe, capture_output=True, text=True, timeout=60, env=env)
        helped = subprocess.run([*command.argv, "serve", "--help"], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"asyncgate could not be started: {exc}"
    if where.returncode != 0:
        return f"asyncgate does not import: {where.stderr.strip().splitlines()[-1:]}"
    if must_import_from is not None and not where.stdout.strip().startswith(str(must_import_from)):
        return f"asyncgate imported from {where.stdout.strip()}, not from the snapshot"
    if helped.returncode != 0:
        return f"asyncgate serve --help exited {helped.returncode}: {helped.stderr.strip()[-300:]}"
    return None


def start_gateway(
    sup: Supervisor,
    command: GatewayCommand,
    upstream: Server,
    *,
    redis: Server | None,
    core: int | None = SUT_CORE,
    env: dict[str, str] | None = None,
    name: str = "gateway",
    workers: int = 1,
) -> Server:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="asyncgate-bench-"))
    argv = [*command.argv, "serve", "--upstream", upstream.url, "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir)]  # fmt: skip
    if redis is not None:
        argv += ["--redis-url", redis.url]
    if workers > 1:
        argv += ["--workers", str(workers)]
    child = sup.spawn(name, argv, core=core, env={**dict(command.env), **GATEWAY_ENV, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/_asyncgate/healthz", child, START_TIMEOUT_S)
    return Server(name, url, child)


def _wait_tcp(port: int, child: Child) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise BenchError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{child.name} did not listen on {port} within {START_TIMEOUT_S:.0f} s\n{child.log_tail()}")


def _wait_celery(child: Child, env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "celery_pattern:celery", "inspect", "ping", "--timeout", "2"]
    deadline = time.monotonic() + START_TIMEOUT_S * 2
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise BenchError(f"celery worker exited with {child.popen.returncode}:\n{child.log_tail()}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=PEERS_DIR, env=_env(env))
        if done.returncode == 0 and "pong" in done.stdout:
            return
        time.sleep(0.5)
    raise BenchError(f"celery worker not ready within {START_TIMEOUT_S * 2:.0f} s\n{child.log_tail()}")


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
