"""Every configuration key, declared once: its type, default, unit, choices, flag and meaning.

To add a key, add a field to its section below with one of the helpers of ``keys.py``, then run
``python -m asyncgate.configdoc`` to regenerate ``config.example.yaml``, the key tables of
docs/configuration.md and the chart's ``values.schema.json`` (docs/configuration.md, "Adding a key").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from starlette.datastructures import Secret

from asyncgate.config.keys import duration, durations, secret, secrets, setting, size, strings
from asyncgate.config.values import SigningSecret, fernet_key
from asyncgate.netguard import Allowlist
from asyncgate.policies import RoutePolicy

LogFormat = Literal["text", "json"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
SqliteSynchronous = Literal["full", "normal"]
Durability = Literal["default", "strict"]
WebhookFormat = Literal["body", "envelope"]
AccessMode = Literal["header", "open"]

#: Delays before each webhook attempt: the first at once, the last past a day after the run.
DEFAULT_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = setting("127.0.0.1", "address to listen on", flag="--host", chart="containerPort")
    port: int = setting(8080, "port to listen on", flag="--port", chart="containerPort")
    prefix: str = setting(
        "/_asyncgate",
        "path prefix of the gateway's own API; never forwarded upstream",
        pattern=r"(/[A-Za-z0-9._~-]+)+",
        shape="a path such as /_asyncgate",
    )
    log_format: LogFormat = setting("text", "text: lines for people; json: one JSON object a line", flag="--log-format")
    log_level: LogLevel = setting("info", "least severe level logged", flag="--log-level")
    workers: int = setting(
        1,
        "gateway processes serving the one port, to use every core of a pod; more than 1 needs `store.redis_url`",
        flag="--workers",
        chart="workers",
        see="operations.md#workers-every-core-of-a-pod",
    )


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    redis_url: str | None = setting(
        None,
        "redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL; null = embedded SQLite store",
        flag="--redis-url",
        chart="redis",
        more=("redis://host:6379/0, redis+cluster://host:7000,host:7001 or redis+sentinel://host:26379/NAME/0",),
    )
    data_dir: str = setting(
        "./asyncgate-data", "where the embedded store keeps its database", flag="--data-dir", chart="persistence"
    )
    key_prefix: str | None = setting(
        None,
        "prefix of every Redis key; null = `asyncgate:<deployment>` (it used to be `asyncgate`)",
        see="fleets.md#upgrading",
    )
    slots: int = setting(
        1,
        "Redis hash tags one deployment's runs are spread over, so that a Redis Cluster's masters share them "
        "(at most 256); 1 keeps every key under `{<key_prefix>}`; set it before the first run and leave it",
        see="scaling.md#slots",
    )
    sqlite_synchronous: SqliteSynchronous = setting(
        "full", "embedded store: full survives power loss, normal only process crashes"
    )
    durability: Durability = setting(
        "default",
        "default: as the Redis server's own settings promise; strict: with Redis, each run must reach a replica "
        "(WAIT 1) before its 202",
    )
    encryption_key: tuple[Secret, ...] = secrets(
        "Fernet keys sealing credentials and webhook URLs at rest; first seals, all open (rotation); "
        "`[]`: the embedded store makes its own, Redis refuses to start",
        fernet_key,
    )
    plaintext: bool = setting(
        False, "true: with Redis and no `encryption_key`, store credentials and webhook URLs in the clear"
    )
    allow_upstream_change: bool = setting(
        False,
        "true: take over the deployment's runs although they were accepted for another upstream",
        flag="--allow-upstream-change",
    )


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = size(
        16 * 1024 * 1024, "largest async request body; larger ones get 413 before anything is stored"
    )
    max_result_bytes: int = size(
        64 * 1024 * 1024, "largest upstream response kept for a run; larger fails it (result_too_large)"
    )
    max_inflight: int = setting(64, "async runs one gateway executes at once")
    max_connections: int = setting(1024, "upstream connections the synchronous pass-through may hold at once")
    max_queued: int = setting(10_000, "runs accepted and not started, across all gateways; past it 429 + Retry-After")
    max_per_caller: int | None = setting(
        None,
        "runs one caller may hold queued or running, across all gateways; past it 429 `share_exceeded` + "
        "Retry-After (null: no cap)",
        see="configuration.md#priorities-queue-deadlines-and-shares",
    )
    max_wait: float = duration(60.0, "longest ?wait=N or Prefer: wait=N a client may ask for")
    request_timeout: float = duration(
        30.0, "a request head must arrive within this; bodies must keep >= 500 B/s after it"
    )
    max_header_bytes: int = size(64 * 1024, "largest request head; past it 431")


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    connect_timeout: float = duration(5.0, "connecting to the upstream; past it a sync request gets 504")
    read_timeout: float = duration(300.0, "longest upstream silence on a synchronous request before a 504")
    websocket_max_message_bytes: int = size(
        16 * 1024 * 1024,
        "largest WebSocket message relayed either way; past it both sides get close code 1009",
        see="passthrough.md#websockets",
    )
    websocket_idle_timeout: float = duration(
        600.0, "a WebSocket connection with no frame either way for this long is closed, code 1001"
    )


@dataclasses.dataclass(frozen=True)
class RunsConfig:
    timeout: float = duration(12 * 3600.0, "longest an async run's upstream call may take (failed / timeout past it)")
    retention: float = duration(24 * 3600.0, "how long finished runs and their results are kept")
    lease: float = duration(30.0, "a run whose holder has not renewed its lease for this long is recovered")
    lease_renewal: float = duration(5.0, "how often a holder renews its leases (must be shorter than lease)")
    recovery_interval: float = duration(10.0, "how often a gateway looks for runs whose lease expired")
    max_attempts: int = setting(3, "attempts before a run whose holder keeps dying fails (max_attempts)")
    poll_interval: float = duration(1.0, "longest an idle executor waits before looking for queued runs again")
    retry_after: float = duration(
        1.0, "Retry-After of a 202 and of an unfinished run's status (whole seconds, rounded up)"
    )
    output_max_events: int = setting(
        10_000,
        "output events of a streaming upstream a run keeps for replay; live listeners get the rest too",
        see="async-flow.md#live-output",
    )
    output_max_bytes: int = size(1024 * 1024, "bytes of output data a run keeps for replay")
    progress_base_url: str | None = setting(
        None,
        "where the upstream reaches the gateway to report progress, e.g. its Service URL; null: "
        "http://127.0.0.1:{server.port}, and no progress URL for an upstream on another host",
        see="progress.md",
        pattern=r"https?://[^\s/?#]+(/\S*)?",
        shape="an http:// or https:// URL",
    )
    execute: bool = setting(True, "false: accept runs, answer for them, deliver webhooks, execute none (needs Redis)")


@dataclasses.dataclass(frozen=True)
class WebhooksConfig:
    timeout: float = duration(15.0, "one delivery attempt, connect to last byte")
    default_url: str | None = setting(None, "where to deliver when a request names no webhook (null: nowhere)")
    format: WebhookFormat = setting(
        "body", "body: the upstream body as is; envelope: JSON with run_id, status, result..."
    )
    signing_secrets: tuple[SigningSecret, ...] = secrets(
        "Standard Webhooks secrets (whsec_...); several during a rotation", SigningSecret
    )
    schedule: tuple[float, ...] = durations(
        DEFAULT_SCHEDULE,
        "delay before each attempt; the number of delays is the number of attempts",
        see="webhooks.md#retries",
    )
    max_concurrency: int = setting(128, "deliveries in flight at once per gateway; the rest wait in the store")
    allow: Allowlist = strings(
        "networks (CIDR) or host names webhooks may reach although private", convert=Allowlist.parse
    )
    output_batch_interval: float = duration(
        1.0,
        "an output webhook delivery is cut this long after its first output event...",
        see="webhooks.md#lifecycle-events",
    )
    output_batch_bytes: int = size(64 * 1024, "...or once it holds this much output data, whichever comes first")
    max_pending_events: int = setting(
        1000,
        "lifecycle deliveries (start, output, progress) a run may have waiting; past it output and progress "
        "deliveries are dropped, and the next says how many",
    )


@dataclasses.dataclass(frozen=True)
class AccessConfig:
    mode: AccessMode = setting(
        "header", "header: runs belong to the caller named by `header`; open: anyone sees any run"
    )
    header: str = setting("Authorization", "the header naming the caller (its value is fingerprinted, never stored)")
    key: Secret | None = secret("HMAC key for caller fingerprints (without one: SHA-256)")
    admin_token: Secret | None = secret("a bearer token that sees and controls every run")
    unknown_run_limit: int = setting(60, "unknown run ids one caller may look up per minute before 429")
    secret_headers: tuple[str, ...] = strings("more headers whose values are credentials (sealed, never logged)")


@dataclasses.dataclass(frozen=True)
class ShutdownConfig:
    drain_timeout: float = duration(
        30.0,
        "after SIGTERM, how long in-flight runs may finish before being handed back",
        chart="shutdown.drainTimeoutSeconds",
    )
    pre_stop_delay: float = duration(
        0.0,
        "after SIGTERM, how long /readyz answers 503 before the listener closes",
        zero=True,
        chart="shutdown.preStopSleepSeconds",
        see="operations.md#stopping-sigterm-drains",
    )


@dataclasses.dataclass(frozen=True)
class Config:
    upstream: str = setting(
        "",
        "the server asyncgate fronts (required); a request goes to this base URL + its path",
        example="http://127.0.0.1:8000",
        flag="--upstream",
        chart="upstream.url",
    )
    deployment: str | None = setting(
        None,
        "the deployment this gateway belongs to: its runs, keys and replicas; null = derived from `upstream`",
        flag="--deployment",
        chart="deployment",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}",
        shape="1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        see="fleets.md",
    )
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    proxy: ProxyConfig = dataclasses.field(default_factory=ProxyConfig)
    runs: RunsConfig = dataclasses.field(default_factory=RunsConfig)
    webhooks: WebhooksConfig = dataclasses.field(default_factory=WebhooksConfig)
    shutdown: ShutdownConfig = dataclasses.field(default_factory=ShutdownConfig)
    access: AccessConfig = dataclasses.field(default_factory=AccessConfig)
    #: Per-route policies (policies.py; their keys are declared in config/routes.py), in order.
    routes: tuple[RoutePolicy, ...] = ()


#: The sections, in the order the example file and the docs show them.
SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "limits": LimitsConfig,
    "proxy": ProxyConfig,
    "runs": RunsConfig,
    "webhooks": WebhooksConfig,
    "access": AccessConfig,
    "shutdown": ShutdownConfig,
}
