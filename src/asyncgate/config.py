"""Configuration: frozen dataclasses, loaded once from YAML, then ASYNCGATE_* variables, then flags.

Every key is documented, with its default, in the top-level ``config.example.yaml``.
Durations accept seconds (``30``) or a unit suffix (``500ms``, ``5s``, ``10m``, ``12h``, ``1d``);
sizes accept bytes (``1024``) or a unit (``16MiB``, ``64KiB``, ``1GB``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from starlette.datastructures import Secret

from asyncgate.errors import ConfigError
from asyncgate.netguard import Allowlist, BlockedDestination, check_url_literal
from asyncgate.policies import WEBHOOK_EVENTS, AsyncMode, RoutePolicy, compile_pattern
from asyncgate.runs import WEBHOOK_EVENTS as RUN_WEBHOOK_EVENTS
from asyncgate.signing import InvalidSecret, secret_key

ENV_PREFIX = "ASYNCGATE_"
#: Redis URL schemes: one server, Redis Cluster, a Sentinel-managed primary (store/connect.py).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel"})

# Kubernetes injects <SERVICE>_PORT* and <SERVICE>_SERVICE_* variables for a Service named
# "asyncgate"; they are not configuration and must not be mistaken for typos.
_SERVICE_LINK_ENV = re.compile(r"^ASYNCGATE_(PORT(_.*)?|SERVICE_.*)$")
#: What the client and ``asyncgate runs`` read (asyncgate.client._protocol): a shell may hold
#: them while it starts a gateway too.
_CLIENT_ENV = frozenset({"ASYNCGATE_URL", "ASYNCGATE_TOKEN"})


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Path prefix of the gateway's own API; everything else goes to the upstream.
    prefix: str = "/_asyncgate"
    log_format: str = "text"
    log_level: str = "info"
    #: Gateway processes serving the one port (asyncgate.workers); more than one needs Redis.
    workers: int = 1


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    #: redis:// or rediss:// URL; without one the embedded SQLite store is used.
    redis_url: str | None = None
    #: Where the embedded store keeps its database.
    data_dir: str = "./asyncgate-data"
    #: Prefix of every Redis key; None derives it from the deployment (asyncgate:<deployment>).
    key_prefix: str | None = None
    #: SQLite's synchronous pragma for the embedded store: "full" survives power loss.
    sqlite_synchronous: str = "full"
    #: "strict": with Redis, a run must reach a replica (WAIT 1) before its 202.
    durability: str = "default"
    #: Fernet keys sealing stored credentials and webhook URLs; the first seals, all open (rotation).
    encryption_key: tuple[Secret, ...] = ()
    #: True: with Redis and no encryption_key, store credentials and webhook URLs in the clear.
    plaintext: bool = False
    #: True: take over the deployment's stored runs although they were accepted for another upstream.
    allow_upstream_change: bool = False


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 16 * 1024 * 1024
    max_result_bytes: int = 64 * 1024 * 1024
    #: Runs executed at once by one gateway.
    max_inflight: int = 64
    #: Upstream connections the synchronous pass-through may hold at once.
    max_connections: int = 1024
    #: Runs accepted and not yet started, across every gateway sharing the store; past it, 429.
    max_queued: int = 10_000
    #: Longest a client may ask to wait (?wait=N, Prefer: wait=N), in seconds.
    max_wait: float = 60.0
    #: A request head must arrive within this; a body must keep a minimum rate after it.
    request_timeout: float = 30.0
    #: Largest request head (request line and headers); past it, 431.
    max_header_bytes: int = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    connect_timeout: float = 5.0
    #: Longest silence from the upstream on a synchronous request before a 504.
    read_timeout: float = 300.0
    #: Largest WebSocket message relayed either way; past it both sides get close code 1009.
    websocket_max_message_bytes: int = 16 * 1024 * 1024
    #: A WebSocket connection with no frame either way for this long is closed (code 1001).
    websocket_idle_timeout: float = 600.0


@dataclasses.dataclass(frozen=True)
class RunsConfig:
    #: Longest an upstream call of an async run may take.
    timeout: float = 12 * 3600.0
    #: How long finished runs and their results are kept.
    retention: float = 24 * 3600.0
    #: A run whose holder has not renewed its lease for this long is reclaimed.
    lease: float = 30.0
    lease_renewal: float = 5.0
    #: How often a gateway looks for runs whose lease expired.
    recovery_interval: float = 10.0
    #: Attempts (first send plus re-sends after a lost holder) before a run fails.
    max_attempts: int = 3
    #: Upper bound on how long an idle executor waits before looking for work again.
    poll_interval: float = 1.0
    #: The Retry-After of a 202 and of an unfinished run's status: how long pollers wait.
    retry_after: float = 1.0
    #: Output events of a streaming upstream a run keeps (live listeners get the rest too).
    output_max_events: int = 10_000
    #: Bytes of output data a run keeps.
    output_max_bytes: int = 1024 * 1024
    #: Where the upstream reaches this gateway to report progress (progress.py), e.g. its Service
    #: URL; None: its loopback address, and no progress URL for an upstream on another host.
    progress_base_url: str | None = None
    #: False: this gateway accepts runs, answers for them and delivers their webhooks, but
    #: executes none; other replicas sharing its Redis do (an intake-only replica).
    execute: bool = True


#: Delays before each webhook attempt: the first at once, the last past a day after the run.
DEFAULT_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


@dataclasses.dataclass(frozen=True)
class WebhooksConfig:
    #: One delivery attempt, connect to last byte.
    timeout: float = 15.0
    #: Where to deliver when a request names no webhook; None delivers nothing.
    default_url: str | None = None
    #: "body": the upstream's body as it is; "envelope": a JSON envelope with the run's outcome.
    format: str = "body"
    #: Standard Webhooks signing secrets (whsec_...); several during a rotation.
    signing_secrets: tuple[Secret, ...] = ()
    #: Delay before each attempt, in seconds; the number of entries is the number of attempts.
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    #: Deliveries in flight at once per gateway; the rest wait their turn in the store.
    max_concurrency: int = 128
    #: Networks (CIDR) or host names webhooks may reach although they are private.
    allow: tuple[str, ...] = ()
    #: A run's ``output`` webhook delivery is cut this long after its first output event...
    output_batch_interval: float = 1.0
    #: ...or once it holds this many bytes of output data, whichever comes first.
    output_batch_bytes: int = 64 * 1024
    #: Lifecycle deliveries (start, output, progress) a run may have waiting; past it, later
    #: output and progress deliveries are dropped, and the next delivery says how many.
    max_pending_events: int = 1000


@dataclasses.dataclass(frozen=True)
class AccessConfig:
    #: "header": runs belong to the caller named by ``header``; "open": anyone may see any run.
    mode: str = "header"
    #: The request header naming the caller (its value is fingerprinted, never stored).
    header: str = "Authorization"
    #: Key of the HMAC that fingerprints callers; without one, a plain SHA-256 is used.
    key: Secret | None = None
    #: A bearer token that sees and controls every run (operators, dashboards).
    admin_token: Secret | None = None
    #: Lookups of unknown run ids one caller may make per minute before 429.
    unknown_run_limit: int = 60
    #: Headers whose values are credentials besides Authorization, Cookie and X-Api-Key.
    secret_headers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ShutdownConfig:
    #: How long in-flight runs may go on after SIGTERM before they are handed back.
    drain_timeout: float = 30.0
    #: After SIGTERM, how long the listener stays open while /readyz answers 503, so that a load
    #: balancer's probes see the drain before connections are refused.
    pre_stop_delay: float = 0.0


@dataclasses.dataclass(frozen=True)
class Config:
    upstream: str = ""
    #: The deployment this gateway belongs to; None derives it from the upstream URL (see derive_deployment).
    deployment: str | None = None
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    proxy: ProxyConfig = dataclasses.field(default_factory=ProxyConfig)
    runs: RunsConfig = dataclasses.field(default_factory=RunsConfig)
    webhooks: WebhooksConfig = dataclasses.field(default_factory=WebhooksConfig)
    shutdown: ShutdownConfig = dataclasses.field(default_factory=ShutdownConfig)
    access: AccessConfig = dataclasses.field(default_factory=AccessConfig)
    #: Per-route policies (policies.py), in order; only the file (or overrides) sets them.
    routes: tuple[RoutePolicy, ...] = ()


#: Keys outside any section.
_TOP_LEVEL = frozenset({"upstream", "deployment"})
#: A deployment name: it becomes part of Redis keys and Kubernetes-derived names fit it.
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Config)
    if f.name not in _TOP_LEVEL | {"routes"}
}

# Keys whose values are durations or sizes, so strings with units are accepted.
_DURATIONS = {
    "proxy.connect_timeout",
    "proxy.read_timeout",
    "proxy.websocket_idle_timeout",
    "runs.timeout",
    "runs.retention",
    "runs.lease",
    "runs.lease_renewal",
    "runs.recovery_interval",
    "runs.poll_interval",
    "runs.retry_after",
    "webhooks.timeout",
    "webhooks.output_batch_interval",
    "shutdown.drain_timeout",
    "shutdown.pre_stop_delay",
    "limits.max_wait",
    "limits.request_timeout",
}
_DURATION_LISTS = {"webhooks.schedule"}
#: Durations for which zero means "none": no pre-stop delay.
_MAYBE_ZERO_DURATIONS = {"shutdown.pre_stop_delay"}
_SECRET_LISTS = {"webhooks.signing_secrets", "store.encryption_key"}
_SECRETS = {"access.key", "access.admin_token"}
_SIZES = {
    "limits.max_body_bytes",
    "limits.max_result_bytes",
    "limits.max_header_bytes",
    "proxy.websocket_max_message_bytes",
    "runs.output_max_bytes",
    "webhooks.output_batch_bytes",
}
_CHOICES = {
    "server.log_format": {"text", "json"},
    "server.log_level": {"critical", "error", "warning", "info", "debug"},
    "store.sqlite_synchronous": {"full", "normal"},
    "webhooks.format": {"body", "envelope"},
    "access.mode": {"header", "open"},
    "store.durability": {"default", "strict"},
}

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def _finite(key: str, value: int | float) -> float:
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return number


def parse_duration(key: str, value: Any) -> float:
    """Seconds from ``30``, ``2.5`` or ``"500ms"``/``"5s"``/``"10m"``/``"12h"``/``"1d"``."""
    if isinstance(value, bool):
        raise ConfigError(key, "expected a duration such as 30s, not a boolean")
    if isinstance(value, int | float):
        seconds = _finite(key, value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if match is None:
            raise ConfigError(key, f"expected a duration such as 30s or 12h, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ConfigError(key, f"expected a duration, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ConfigError(key, f"expected a finite duration such as 30s, got {value!r}")
    if seconds <= 0:
        raise ConfigError(key, "must be greater than zero")
    return seconds


def parse_size(key: str, value: Any) -> int:
    """Bytes from ``1024`` or ``"16MiB"``/``"64KiB"``/``"1GB"``."""
    if isinstance(value, bool):
        raise ConfigError(key, "expected a size such as 16MiB, not a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(key, f"expected a size such as 16MiB, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    else:
        raise ConfigError(key, f"expected a size, got {type(value).__name__}")
    if size <= 0:
        raise ConfigError(key, "must be greater than zero")
    return size


def _coerce_list(key: str, value: Any, from_text: bool) -> tuple[Any, ...]:
    if (from_text or key in _SECRET_LISTS) and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list, got {type(value).__name__}")
    if key in _DURATION_LISTS:
        # Zero is a valid delay here: the first attempt goes at once.
        if not value:
            raise ConfigError(key, "must hold at least one delay")
        return tuple(0.0 if item in (0, "0", "0s") else parse_duration(key, item) for item in value)
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigError(key, "expected a list of non-empty strings")
    if key in _SECRET_LISTS:
        check = _check_fernet_key if key == "store.encryption_key" else secret_key
        for item in value:
            try:
                check(item)
            except (InvalidSecret, ValueError) as exc:
                raise ConfigError(key, str(exc)) from None
        return tuple(Secret(item) for item in value)
    return tuple(value)


def _check_fernet_key(value: str) -> None:
    try:
        key = base64.urlsafe_b64decode(value.encode())
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ValueError("an encryption key must be 32 url-safe base64 bytes (Fernet.generate_key())")


def _coerce(key: str, field_type: str, value: Any, from_text: bool) -> Any:
    if key in _SECRETS and value not in (None, ""):
        if not isinstance(value, str) or len(value) < 16:
            raise ConfigError(key, "expected a secret string of at least 16 characters")
        return Secret(value)
    if field_type.startswith("tuple"):
        return _coerce_list(key, value, from_text)
    if key in _DURATIONS:
        if key in _MAYBE_ZERO_DURATIONS and not isinstance(value, bool) and str(value).strip() in ("0", "0s", "0.0"):
            return 0.0
        return parse_duration(key, value)
    if key in _SIZES:
        return parse_size(key, value)
    optional = "None" in field_type
    if value is None or (from_text and optional and value == ""):
        if optional:
            return None
        raise ConfigError(key, "must not be empty")
    if field_type.startswith("int"):
        if from_text and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        if value <= 0:
            raise ConfigError(key, "must be greater than zero")
        return value
    if field_type.startswith("float"):
        if from_text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return _finite(key, value)
    if field_type.startswith("bool"):
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__}")
    choices = _CHOICES.get(key)
    if choices is not None and value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(sorted(choices))}, got {value!r}")
    return value


def _field_types(section: type[Any]) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(section)}


def _merge(raw: dict[str, Any], layer: Mapping[str, Any], *, from_text: bool) -> None:
    """Merge a flat ``{"section.key": value}`` layer into ``raw``, coercing each value."""
    for dotted, value in layer.items():
        if dotted in _TOP_LEVEL:
            raw[dotted] = _coerce(dotted, "str | None" if dotted == "deployment" else "str", value, from_text)
            continue
        if dotted == "routes" and not from_text:
            raw["routes"] = value  # parsed once every layer is in: route webhooks need webhooks.allow
            continue
        section_name, _, key = dotted.partition(".")
        section = _SECTIONS.get(section_name)
        if section is None or not key:
            raise ConfigError(dotted, "unknown key")
        types = _field_types(section)
        if key not in types:
            raise ConfigError(dotted, "unknown key")
        raw.setdefault(section_name, {})[key] = _coerce(dotted, types[key], value, from_text)


def _flatten_file(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("(file)", "the top level must be a mapping of keys")
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in _TOP_LEVEL or name == "routes":
            flat[str(name)] = value
        elif name in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(str(name), "expected a mapping of keys")
            for key, inner in value.items():
                flat[f"{name}.{key}"] = inner
        else:
            raise ConfigError(str(name), "unknown key")
    return flat


def _flatten_environ(environ: Mapping[str, str]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or _SERVICE_LINK_ENV.match(name) or name in _CLIENT_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest in _TOP_LEVEL:
            flat[rest] = value
            continue
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(name, "unknown environment variable")
        flat[f"{section}.{rest[len(section) + 1 :]}"] = value
    return flat


def _validate_upstream(config: Config, required: bool) -> None:
    if not config.upstream:
        if required:
            raise ConfigError("upstream", "is required (the URL of the server asyncgate fronts)")
        return
    upstream = urlsplit(config.upstream)
    if upstream.scheme not in {"http", "https"} or not upstream.hostname:
        raise ConfigError("upstream", f"expected an http:// or https:// URL, got {config.upstream!r}")
    if upstream.query or upstream.fragment:
        raise ConfigError("upstream", "must not carry a query or fragment")
    try:
        upstream.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ConfigError("upstream", f"bad port in {config.upstream!r}") from exc


def _validate_store(config: Config, complete: bool) -> None:
    store = config.store
    if complete and not config.runs.execute and store.redis_url is None:
        # Only once complete: a file checked on its own may leave the Redis URL to a variable.
        message = "false needs store.redis_url: the embedded store serves one process, so no run would execute"
        raise ConfigError("runs.execute", message)
    if complete and config.server.workers > 1 and store.redis_url is None:
        message = "more than 1 needs store.redis_url: the embedded store (one SQLite file) serves one process"
        raise ConfigError("server.workers", message)
    if store.redis_url is not None:
        redis = urlsplit(store.redis_url)
        if redis.scheme not in REDIS_SCHEMES:
            expected = ", ".join(f"{scheme}://" for scheme in sorted(REDIS_SCHEMES))
            raise ConfigError("store.redis_url", f"expected one of {expected}, got {redis.scheme!r}")
    if store.key_prefix is not None and ("{" in store.key_prefix or "}" in store.key_prefix):
        raise ConfigError("store.key_prefix", "must not contain { or } (it becomes a Redis Cluster hash tag)")
    if complete and store.redis_url is not None and not store.encryption_key and not store.plaintext:
        # Every replica must hold the same key, so a gateway cannot make one up as the
        # embedded store does; and storing credentials in the clear must be a choice.
        message = (
            "is required with store.redis_url, so that credentials and webhook URLs are sealed at rest "
            "(every replica needs the same key); or set store.plaintext: true to store them in the clear"
        )
        raise ConfigError("store.encryption_key", message)


def _validate(config: Config, complete: bool) -> None:
    _validate_upstream(config, complete)
    _validate_store(config, complete)
    if config.deployment is not None and not _DEPLOYMENT.fullmatch(config.deployment):
        rule = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise ConfigError("deployment", f"expected {rule}, got {config.deployment!r}")
    try:
        allow = Allowlist.parse(config.webhooks.allow)
    except ValueError as exc:
        raise ConfigError("webhooks.allow", str(exc)) from None
    if config.webhooks.default_url is not None:
        _check_webhook_url("webhooks.default_url", config.webhooks.default_url, allow)
    prefix = config.server.prefix
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix):
        raise ConfigError("server.prefix", f"expected a path such as /_asyncgate, got {prefix!r}")
    if not 0 < config.server.port < 65536:
        raise ConfigError("server.port", "must be between 1 and 65535")
    base = config.runs.progress_base_url
    if base is not None and (urlsplit(base).scheme not in {"http", "https"} or not urlsplit(base).hostname):
        raise ConfigError("runs.progress_base_url", f"expected an http:// or https:// URL, got {base!r}")
    if config.runs.lease_renewal >= config.runs.lease:
        raise ConfigError("runs.lease_renewal", "must be shorter than runs.lease")


def _check_webhook_url(key: str, url: str, allow: Allowlist) -> None:
    try:
        hook = urlsplit(url)
        hook.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(key, "expected an http:// or https:// URL") from None
    if hook.scheme not in {"http", "https"} or not hook.hostname or len(url) > _MAX_WEBHOOK_URL:
        raise ConfigError(key, f"expected an http:// or https:// URL of at most {_MAX_WEBHOOK_URL} characters")
    try:
        check_url_literal(url, allow)
    except BlockedDestination as exc:
        raise ConfigError(key, f"refused destination ({exc}); see webhooks.allow") from None


_MAX_WEBHOOK_URL = 2048
#: The keys a route takes (docs/configuration.md, "Routes"); any other is refused.
ROUTE_KEYS = ("name", "methods", "path", "async", "idempotent", "timeout", "max_attempts", "max_body_bytes", "webhook")
#: Route settings that only runs use, so a route that never makes runs cannot hold them.
_RUN_ONLY_KEYS = ("idempotent", "timeout", "max_attempts", "max_body_bytes", "webhook")


def _route_methods(key: str, value: Any) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(m, str) and m.isalpha() for m in items):
        raise ConfigError(key, "expected a method such as POST, or a list of them")
    return frozenset(method.upper() for method in items)


def _route_webhook(key: str, value: Any, allow: Allowlist) -> tuple[str, tuple[str, ...]]:
    """A route's default webhook: a URL, or a mapping of ``url`` and ``events``."""
    spec = {"url": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or set(spec) - {"url", "events"} or not isinstance(spec.get("url"), str):
        raise ConfigError(key, "expected a URL, or a mapping with url and events")
    _check_webhook_url(f"{key}.url" if isinstance(value, dict) else key, spec["url"], allow)
    events = spec.get("events", ["completed"])
    if not isinstance(events, list) or not events or not all(e in WEBHOOK_EVENTS for e in events):
        raise ConfigError(f"{key}.events", f"expected a list of {', '.join(sorted(WEBHOOK_EVENTS))}")
    return spec["url"], tuple(event for event in RUN_WEBHOOK_EVENTS if event in events)


def _route(index: int, entry: Any, allow: Allowlist) -> RoutePolicy:
    where = f"routes[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(where, "expected a mapping with at least a path")
    for name in entry:
        if name not in ROUTE_KEYS:
            raise ConfigError(f"{where}.{name}", f"unknown key (a route takes {', '.join(ROUTE_KEYS)})")
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{where}.path", "expected a path pattern starting with /, such as /v1/batch/**")
    try:
        mode = AsyncMode(entry.get("async", AsyncMode.CLIENT))
    except ValueError:
        raise ConfigError(f"{where}.async", f"expected one of {', '.join(m.value for m in AsyncMode)}") from None
    if mode is AsyncMode.NEVER and (given := [key for key in _RUN_ONLY_KEYS if key in entry]):
        raise ConfigError(f"{where}.{given[0]}", "has no effect on a route whose async is never (it makes no runs)")
    idempotent = entry.get("idempotent")
    if idempotent is not None and not isinstance(idempotent, bool):
        raise ConfigError(f"{where}.idempotent", f"expected true or false, got {idempotent!r}")
    name = entry.get("name", str(index))
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", name):
        raise ConfigError(f"{where}.name", "expected 1 to 64 letters, digits, '.', '_', '~' or '-'")
    webhook_url: str | None = None
    events: tuple[str, ...] = ("completed",)
    if entry.get("webhook") is not None:
        webhook_url, events = _route_webhook(f"{where}.webhook", entry["webhook"], allow)
    return RoutePolicy(
        name=name,
        path=path,
        methods=_route_methods(f"{where}.methods", entry["methods"]) if "methods" in entry else frozenset(),
        mode=mode,
        idempotent=idempotent,
        timeout=parse_duration(f"{where}.timeout", entry["timeout"]) if "timeout" in entry else None,
        max_attempts=_coerce(f"{where}.max_attempts", "int", entry["max_attempts"], False)
        if "max_attempts" in entry
        else None,
        max_body_bytes=parse_size(f"{where}.max_body_bytes", entry["max_body_bytes"])
        if "max_body_bytes" in entry
        else None,
        webhook_url=webhook_url,
        webhook_events=events,
        pattern=compile_pattern(path),
    )


def _routes(value: Any, config: Config) -> tuple[RoutePolicy, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError("routes", "expected a list of routes")
    allow = Allowlist.parse(config.webhooks.allow)
    routes = tuple(_route(index, entry, allow) for index, entry in enumerate(value))
    seen: set[str] = set()
    for index, route in enumerate(routes):
        if route.name in seen:
            raise ConfigError(f"routes[{index}].name", f"{route.name!r} names an earlier route too")
        seen.add(route.name)
    return routes


def load(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_upstream: bool = True,
) -> Config:
    """Build the configuration: the YAML file, then ``ASYNCGATE_*`` variables, then ``overrides``.

    ``overrides`` maps dotted keys (``"limits.max_inflight"``) to values, as the CLI's flags do.
    Raises ``ConfigError`` naming the first offending key. ``require_upstream=False`` checks a
    file that leaves the upstream (and the Redis URL) to a flag or variable.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start} cannot be decoded)") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML ({exc.__class__.__name__})") from exc
        _merge(raw, _flatten_file(data), from_text=False)
    _merge(raw, _flatten_environ(environ or {}), from_text=True)
    _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None}, from_text=False)
    sections = {name: _SECTIONS[name](**raw.get(name, {})) for name in _SECTIONS}
    config = Config(upstream=str(raw.get("upstream", "")).rstrip("/"), deployment=raw.get("deployment"), **sections)
    _validate(config, require_upstream)
    config = _with_identity(config)
    return dataclasses.replace(config, routes=_routes(raw.get("routes"), config))


def derive_deployment(upstream: str) -> str:
    """The default deployment name: the upstream's host and port, and a digest of its whole URL.

    Two gateways fronting different upstreams never derive the same name, so they never share
    runs by accident; the host keeps the name readable in ``redis-cli --scan``.
    """
    parts = urlsplit(upstream)
    host = re.sub(r"[^a-z0-9.-]+", "-", (parts.hostname or "upstream").lower()).strip(".-")[:60] or "upstream"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    digest = hashlib.sha256(f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}{parts.path}".encode())
    return f"{host}-{port}-{digest.hexdigest()[:10]}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_identity(config: Config) -> Config:
    """The configuration with its deployment and key prefix filled in, once the upstream is known."""
    if config.deployment is None and not config.upstream:
        return config
    shared = config.store.redis_url is not None and config.store.key_prefix is None
    if shared and config.deployment is None and _is_loopback(urlsplit(config.upstream).hostname or ""):
        # A sidecar's http://127.0.0.1:8000 names another server in every pod: sidecars of two
        # models would derive one deployment, and run each other's requests.
        message = (
            f"is required with store.redis_url when the upstream is a loopback address ({config.upstream} "
            "is another server in every pod, so it cannot tell deployments apart); set --deployment NAME"
        )
        raise ConfigError("deployment", message)
    deployment = config.deployment or derive_deployment(config.upstream)
    key_prefix = config.store.key_prefix or f"asyncgate:{deployment}"
    store = dataclasses.replace(config.store, key_prefix=key_prefix)
    return dataclasses.replace(config, deployment=deployment, store=store)
