"""Child processes of the bench: pinned to a core, in their own process group, always reaped."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The system under test runs here...
SUT_CORE = 0
#: ...and the load generator, the upstream and Redis here.
LOAD_CORE = 1
STOP_GRACE_S = 5.0
POLL_S = 0.05

#: Session ids of every process this harness started (each child leads its own session): the
#: processes that are the bench's, as opposed to other work on a shared machine.
OUR_SESSIONS: set[int] = set()

# urllib would otherwise honour *_proxy variables; the bench only ever talks to loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(Exception):
    """A peer, the gateway or a tool did not behave; the message says which and why."""


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Each live process: its pid and the fields of /proc/<pid>/stat after its name ([2] is its
    process group, [3] its session, [11] and [12] its user and system CPU in clock ticks)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        yield int(entry), stat[stat.rfind(")") + 2 :].split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile_limit() -> None:
    """Children inherit it: 10,000 held runs need more than the usual 1,024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin_self(core: int) -> None:
    os.sched_setaffinity(0, {core})


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def pinned(core: int | None, argv: Sequence[str]) -> list[str]:
    """``argv`` on one core, or on every core for None: the harness pins itself to LOAD_CORE and a
    child inherits its parent's affinity, so an unpinned child must be given every core."""
    cores = str(core) if core is not None else f"0-{(os.cpu_count() or 1) - 1}"
    return ["taskset", "-c", cores, *argv]


class Supervisor:
    """Owns every child it starts; `close()` stops them all, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.spawned = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        self.spawned += 1
        log = self.log_dir / f"{self.spawned:03d}-{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                pinned(core, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        OUR_SESSIONS.add(popen.pid)
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        _stop_group(child.popen)
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        while self.children:
            self.stop(self.children[-1])

    @contextlib.contextmanager
    def running(self, *args: object, **kwargs: object) -> Iterator[Child]:
        child = self.spawn(*args, **kwargs)  # type: ignore[arg-type]
        try:
            yield child
        finally:
            self.stop(child)


def _stop_group(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of the group (nginx workers, celery pool children) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=STOP_GRACE_S)


def run_bounded(
    argv: Sequence[str], *, core: int | None, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a load tool to completion in its own group; killed whole if it overruns `timeout`."""
    popen = subprocess.Popen(
        pinned(core, argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    OUR_SESSIONS.add(popen.pid)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate(timeout=STOP_GRACE_S)
        raise BenchError(f"{argv[0]} overran its {timeout:.0f} s bound") from None
    finally:
        if popen.poll() is None:
            _stop_group(popen)  # type: ignore[arg-type]
    return subprocess.CompletedProcess(list(argv), popen.returncode, stdout, stderr)


def wait_http(url: str, child: Child | None, timeout: float = 30.0, status: int = 200) -> None:
    """Wait until `url` answers `status`, the child dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child is not None and child.popen.poll() is not None:
            raise BenchError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        try:
            code, _ = http_get(url, timeout=1.0)
            if code == status:
                return
            last = f"HTTP {code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(POLL_S)
    tail = child.log_tail() if child is not None else ""
    raise BenchError(f"{url} not ready after {timeout:.0f} s ({last})\n{tail}")
