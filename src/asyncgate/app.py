"""The app factory: one Gateway per Config, owning every resource it uses. Wiring only."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from asyncgate import endpoints, openapi, ui
from asyncgate.config import Config
from asyncgate.errors import BadRequest, ConfigError, HTTPError, ServerError, StoreUnavailable
from asyncgate.eventstream import RunEvents
from asyncgate.executor import Executor
from asyncgate.intake import Intake
from asyncgate.metrics import Metrics
from asyncgate.netguard import Resolver
from asyncgate.principal import Access
from asyncgate.progress import redacted_path
from asyncgate.proxy import Proxy
from asyncgate.responses import error_body, error_response, send_error
from asyncgate.services import Services
from asyncgate.store.base import RunStore
from asyncgate.store.factory import build_store
from asyncgate.tracing import NO_TRACING, Tracing
from asyncgate.upstream import Upstream
from asyncgate.webhooks import WebhookDispatcher

logger = logging.getLogger("asyncgate")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    # Starlette's own refusals (no such route, wrong method) in the gateway's error shape.
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = error_body(code, exc.detail)
    return Response(body, status_code=exc.status_code, headers=exc.headers, media_type="application/json")


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A progress URL's last segment is a capability: never logged.
    logger.error("unhandled error in %s %s", request.method, redacted_path(request.url.path), exc_info=exc)
    return error_response(ServerError("the gateway failed to handle the request"))


def control_app(config: Config, services: Services) -> Starlette:
    """The gateway's own API, mounted under its prefix."""
    app = Starlette(
        routes=[Mount(config.server.prefix, routes=[*endpoints.routes(), *openapi.routes(), *ui.routes(config)])],
        exception_handlers={HTTPError: _gateway_error, HTTPException: _starlette_error, Exception: _internal_error},
    )
    app.state.services = services
    return app


class Gateway:
    """The ASGI app: the gateway's API under its prefix; every other request goes to the intake,
    which accepts it as a run or passes it through.

    Dispatched here, before any framework code, because the pass-through is the hot path.
    """

    def __init__(
        self,
        config: Config,
        store: RunStore | None = None,
        resolver: Resolver | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.config = config
        self.tracing = tracing
        store = store if store is not None else build_store(config)
        metrics = Metrics()
        upstream = Upstream(config)
        webhooks = WebhookDispatcher(config, store, metrics, resolver, tracing)
        executor = Executor(config, store, upstream, webhooks, metrics, tracing, webhooks.wake_hooks)
        access = Access(config.access)
        self.services = Services(config, store, upstream, webhooks, executor, access, metrics)
        self.proxy = Proxy(upstream, metrics)
        self.intake = Intake(config, store, access, metrics, self.proxy, tracing)
        self.control = control_app(config, self.services)
        self.run_events = RunEvents(self.services)
        self._prefix = config.server.prefix
        self._prefix_slash = config.server.prefix + "/"
        #: Why the store refused this gateway at startup (its deployment's runs are another
        #: upstream's); the CLI prints it as a configuration error.
        self.refused: ConfigError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            raw: bytes | None = scope.get("raw_path")
            if raw is not None and not raw.startswith(b"/") and not (raw == b"*" and scope["method"] == "OPTIONS"):
                # An absolute-form, authority-form (CONNECT) or "*" target: the upstream is fixed
                # by configuration, so such a target names nothing this gateway serves.
                await send_error(send, BadRequest("the request target must be a path", code="invalid_target"))
            elif path == self._prefix or path.startswith(self._prefix_slash):
                # A run's event stream skips starlette: its listeners stay, and so would its layers.
                if (run_id := self.run_events.run_id(scope)) is not None:
                    await self.run_events(scope, receive, send, run_id)
                else:
                    await self.control(scope, receive, send)
            else:
                await self.intake(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            # Served with server.uvicorn_options, WebSocket upgrades are spliced to the upstream
            # before any app sees them (websocket.py); under another server, refuse rather than hang.
            await send({"type": "websocket.close", "code": 1008})

    async def startup(self) -> None:
        svc = self.services
        try:
            await svc.lifecycle.open()
        except StoreUnavailable as exc:
            # Redis down at start: serve anyway (not ready, submissions get 503) and let the
            # executor retry, rather than crash-loop until Redis is back.
            logger.warning("the store is unavailable at startup, retrying in the background: %s", exc)
        await svc.upstream.open()
        svc.webhooks.start()
        if self.config.runs.execute:
            await svc.executor.prepare()
            svc.executor.start()
        role = "" if self.config.runs.execute else " (runs.execute false: other replicas execute the runs)"
        store = self.config.store
        where = f"key prefix {store.key_prefix}" if store.redis_url else f"data dir {store.data_dir}"
        logger.info(
            "asyncgate ready: upstream %s, deployment %s, %s store (%s), credentials and webhook URLs %s at rest%s",
            self.config.upstream,
            self.config.deployment,
            svc.store_kind,
            where,
            svc.lifecycle.sealer.sealing,
            role,
        )

    def listening(self, port: int) -> None:
        """The server bound ``port``; for a server started on port 0 (tests, embedding)."""
        self.services.executor.listening(port)

    def begin_drain(self) -> None:
        """SIGTERM arrived: report not-ready and take no new runs at once; held runs go on."""
        self.services.draining = True
        self.services.executor.stop_claiming()
        logger.info("draining: no new runs; in-flight runs have %ss", self.config.shutdown.drain_timeout)

    async def shutdown(self) -> None:
        svc = self.services
        svc.draining = True
        await svc.executor.stop(self.config.shutdown.drain_timeout)
        await svc.webhooks.stop()
        await svc.feeds.close()
        await svc.upstream.close()
        await svc.lifecycle.close()
        await self.tracing.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.startup()
        except ConfigError as exc:
            # Said once, by the CLI, as any configuration error: one line, exit status 2.
            self.refused = exc
            await self.services.lifecycle.close()
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        except Exception as exc:
            logger.error("startup failed: %s", exc)
            # Said once, here: uvicorn logs a non-empty message again.
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})


def create_app(config: Config, tracing: Tracing = NO_TRACING) -> Gateway:
    """Build a gateway for ``config``; its lifespan opens and closes everything it owns."""
    return Gateway(config, tracing=tracing)
