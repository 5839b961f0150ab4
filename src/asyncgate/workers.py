"""Several gateway processes on one port: ``asyncgate serve --workers N`` (``server.workers``).

The parent binds the listening socket once and forks N workers; each runs the whole gateway
(its own store connections, executor, owner id and metrics registry) on the inherited socket, and
the kernel spreads new connections over them. The parent only supervises:

* SIGTERM or SIGINT is passed on to every worker, which drains exactly as a single gateway does
  (``shutdown.pre_stop_delay`` included; a second signal, passed on too, cuts it short); the
  parent closes its copy of the socket at once, so the port refuses connections as soon as the
  last worker's listener closes. It exits 0 when every worker exited 0, 1 otherwise.
* A worker that exits unasked after it has been up ``STARTUP_GRACE`` seconds (a crash, an OOM
  kill) is replaced, so one fault costs one process rather than the pod. One that exits sooner
  could not start (an unreachable store, a bad upstream certificate) and would fail again:
  the parent then stops the others and exits 1, and the orchestrator's restart policy takes over.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("asyncgate.workers")

#: A worker that exits unasked within this many seconds of its start is taken to be unable to start.
STARTUP_GRACE = 10.0
#: Exit status of a worker the parent must not replace (it could not start).
STARTUP_FAILURE = 3

#: What a worker runs: serve on the socket until drained, and return the process's exit status.
WorkerMain = Callable[[socket.socket], int]


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound once by the parent and inherited by every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Forks the workers, passes signals on to them, replaces those that crash, and waits."""

    def __init__(self, count: int, sock: socket.socket, worker_main: WorkerMain) -> None:
        self.count = count
        self.sock = sock
        self.worker_main = worker_main
        #: Each live worker's pid and the monotonic time it was started.
        self.workers: dict[int, float] = {}
        self.stopping = False
        #: The exit status: 0 unless a worker failed.
        self.status = 0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for _ in range(self.count):
            self._spawn()
        logger.info("serving with %d worker processes: %s", self.count, ", ".join(map(str, self.workers)))
        while self.workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            self._reap(pid, os.waitstatus_to_exitcode(status))
        return self.status

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(self._worker())
        self.workers[pid] = time.monotonic()

    def _worker(self) -> int:
        # The parent's handlers came along with the fork; the worker installs its own.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        try:
            return self.worker_main(self.sock)
        except SystemExit as exc:  # uvicorn exits 3 when the app cannot start
            return exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
            return 1
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()

    def _reap(self, pid: int, code: int) -> None:
        started = self.workers.pop(pid, None)
        if started is None:
            return
        if self.stopping:
            if code != 0:
                logger.warning("worker %d exited with status %d", pid, code)
                self.status = self.status or 1
            return
        uptime = time.monotonic() - started
        if uptime < STARTUP_GRACE or code == STARTUP_FAILURE:
            message = "worker %d exited with status %d %.1fs after it started; stopping the others"
            logger.error(message, pid, code, uptime)
            # A refusal at startup (status 2, configuration) is the pod's status too.
            self.status = self.status or (code if code > 0 else 1)
            self._stop(signal.SIGTERM)
            return
        logger.error("worker %d exited with status %d; starting another", pid, code)
        self._spawn()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        if not self.stopping:
            self.stopping = True
            # The workers hold their own copies: the listener stays open as long as theirs do.
            self.sock.close()
        for pid in self.workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def supervise(count: int, sock: socket.socket, worker_main: WorkerMain) -> int:
    """Serve ``sock`` (from ``bind``) with ``count`` worker processes until a signal stops them; the exit status."""
    return Supervisor(count, sock, worker_main).run()
