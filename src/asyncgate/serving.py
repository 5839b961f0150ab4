"""Running a gateway process: bind, start, drain on a signal, exit with a status.

``asyncgate serve`` lands here (cli.py parses the command line and loads the configuration);
the rest of the command line (``runs``, ``check-config``) never imports this module, so a client
command pays for none of the server's imports.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn

from asyncgate import collector, logs, workers
from asyncgate.app import Gateway, create_app
from asyncgate.config import Config
from asyncgate.errors import ConfigError
from asyncgate.server import uvicorn_options
from asyncgate.tracing import NO_TRACING, Tracing

logger = logging.getLogger("asyncgate")


def serve(config: Config, tracing: Tracing = NO_TRACING) -> int:
    """Run the gateway until a signal drains it; the exit status. ConfigError if the store refused it at startup."""
    logs.configure(config.server.log_format, config.server.log_level)
    # Bound before the gateway starts, so a port in use is one line, not a gateway that says it
    # is ready and then fails to listen.
    try:
        sock = workers.bind(config.server.host, config.server.port)
    except OSError as exc:
        print(f"asyncgate: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}", file=sys.stderr)
        return 2
    if config.server.workers > 1:
        # OpenTelemetry's span processors restart their export thread in each forked worker.
        worker = functools.partial(_serve_worker, config, tracing)
        return workers.supervise(config.server.workers, sock, worker)
    return _serve_on(config, tracing, sock)


def _serve_worker(config: Config, tracing: Tracing, sock: socket.socket) -> int:
    """One of several workers: a refusal at startup is one line and status 2, as for one gateway."""
    try:
        return _serve_on(config, tracing, sock)
    except ConfigError as exc:
        print(f"asyncgate: configuration error: {exc}", file=sys.stderr)
        return 2


def _serve_on(config: Config, tracing: Tracing, sock: socket.socket) -> int:
    """One gateway process, on ``sock``, bound by ``serve`` (with workers, by the parent)."""
    gateway = create_app(config, tracing)
    collector.tune()
    server_config = uvicorn.Config(
        gateway,
        host=config.server.host,
        port=config.server.port,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(config.shutdown.drain_timeout) + 1,
        # Bounded heads and bodies, strict framing, no trusted forwarding headers.
        **uvicorn_options(config),
    )
    # uvicorn re-raises the signal that stopped it once it has shut down, so that the default
    # handler kills the process; a drained gateway has done its job and should exit 0 instead.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_quietly)
    try:
        DrainingServer(server_config, gateway).run(sockets=[sock])
    except SystemExit:
        # uvicorn exits with status 3 when the app's startup fails.
        if gateway.refused is not None:
            raise gateway.refused from None
        raise
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also starts the gateway's drain the moment a signal arrives.

    uvicorn alone would first wait for open connections to close and only then run the
    lifespan shutdown, so runs would drain after synchronous requests instead of alongside.
    With ``shutdown.pre_stop_delay``, the listener stays open that long after the first signal
    while /readyz answers 503, so a load balancer stops sending before connections are refused;
    a second signal closes it at once.
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self._signalled = False
        self._pre_stop: asyncio.TimerHandle | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            # uvicorn says where it listens only on sockets it bound itself.
            host, port = sockets[0].getsockname()[:2]
            where = f"[{host}]" if ":" in host else host
            logger.info("listening on http://%s:%d (Ctrl-C or SIGTERM drains and stops it)", where, port)
        # Everything alive now (modules, the app, its pools) lives as long as the process.
        # Freezing it keeps the collector's full passes from rescanning it all while
        # requests wait: under the S3 bench this halved the p99 of a 202 (about 48 ms
        # to 22 ms at 64 connections) and did not lower throughput.
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Signal handlers run on the main thread, between the event loop's steps.
        loop = asyncio.get_event_loop()
        delay = self.gateway.config.shutdown.pre_stop_delay
        if self._signalled:
            if self._pre_stop is not None:
                self._pre_stop.cancel()
                self._pre_stop = None
                logger.info("closing the listener now: a second signal cut the pre-stop delay short")
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        loop.call_soon(self.gateway.begin_drain)
        if delay <= 0:
            super().handle_exit(sig, frame)
            return
        logger.info("/readyz answers 503 for %ss before the listener closes (signal again to close it now)", delay)
        self._pre_stop = loop.call_later(delay, self._close_listener, sig, frame)

    def _close_listener(self, sig: int, frame: FrameType | None) -> None:
        self._pre_stop = None
        super().handle_exit(sig, frame)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    """The handler uvicorn's re-raised signal lands on after a graceful shutdown."""
