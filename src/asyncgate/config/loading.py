"""Loading the configuration once: the YAML file, then ASYNCGATE_* variables, then flags; validated once."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from asyncgate.config.keys import ENV_PREFIX, Key, keys_of
from asyncgate.config.routes import parse_routes
from asyncgate.config.sections import SECTIONS, Config
from asyncgate.config.values import check_webhook_url, coerce
from asyncgate.errors import ConfigError

#: Redis URL schemes: one server, Redis Cluster, a Sentinel-managed primary (store/connect.py).
#: The most hash tags a deployment's runs may be spread over: far more than a Cluster has masters.
MAX_STORE_SLOTS = 256
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel"})

# Kubernetes injects <SERVICE>_PORT* and <SERVICE>_SERVICE_* variables for a Service named
# "asyncgate"; they are not configuration and must not be mistaken for typos.
_SERVICE_LINK_ENV = re.compile(r"^ASYNCGATE_(PORT(_.*)?|SERVICE_.*)$")
#: What the client and ``asyncgate runs`` read (asyncgate.client._protocol): a shell may hold
#: them while it starts a gateway too.
_CLIENT_ENV = frozenset({"ASYNCGATE_URL", "ASYNCGATE_TOKEN"})


def declared_keys() -> dict[str, Key]:
    """Every key, by dotted name, in the order the example file and the docs show them."""
    keys = {key.name: key for key in keys_of(Config)}
    for name, section in SECTIONS.items():
        keys |= {key.name: key for key in keys_of(section, f"{name}.")}
    return keys


_KEYS = declared_keys()
_BY_ENV = {key.env: key.name for key in _KEYS.values()}


def _merge(raw: dict[str, Any], layer: Mapping[str, Any], *, from_text: bool) -> None:
    """Merge a flat ``{"section.key": value}`` layer into ``raw``, coercing each value."""
    for dotted, value in layer.items():
        if dotted == "routes" and not from_text:
            raw["routes"] = value  # parsed once every layer is in: route webhooks need webhooks.allow
            continue
        key = _KEYS.get(dotted)
        if key is None:
            raise ConfigError(dotted, "unknown key")
        raw[dotted] = coerce(key, value, from_text=from_text)


def _flatten_file(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("(file)", "the top level must be a mapping of keys")
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(str(name), "expected a mapping of keys")
            flat |= {f"{name}.{key}": inner for key, inner in value.items()}
        elif (name in _KEYS and "." not in name) or name == "routes":
            flat[str(name)] = value
        else:
            raise ConfigError(str(name), "unknown key")
    return flat


def _flatten_environ(environ: Mapping[str, str]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or _SERVICE_LINK_ENV.match(name) or name in _CLIENT_ENV:
            continue
        if name in _BY_ENV:
            flat[_BY_ENV[name]] = value
            continue
        # A section's variable with a mistyped key names the key, so the typo shows.
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(name, "unknown environment variable")
        raise ConfigError(f"{section}.{rest[len(section) + 1 :]}", f"unknown key (from the variable {name})")
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
    if store.slots > MAX_STORE_SLOTS:
        raise ConfigError("store.slots", f"must be at most {MAX_STORE_SLOTS}, got {store.slots}")
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
    if config.webhooks.default_url is not None:
        check_webhook_url("webhooks.default_url", config.webhooks.default_url, config.webhooks.allow)
    if not 0 < config.server.port < 65536:
        raise ConfigError("server.port", "must be between 1 and 65535")
    if config.runs.lease_renewal >= config.runs.lease:
        raise ConfigError("runs.lease_renewal", "must be shorter than runs.lease")


def _read(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start} cannot be decoded)") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML{_yaml_where(exc)}") from exc


def _yaml_where(exc: yaml.YAMLError) -> str:
    """Where the YAML broke and what the parser expected there; never the file's text, which may hold secrets."""
    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return f" ({exc.__class__.__name__})"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"


def _build(raw: dict[str, Any]) -> Config:
    sections = {
        name: section(**{key.partition(".")[2]: value for key, value in raw.items() if key.startswith(name + ".")})
        for name, section in SECTIONS.items()
    }
    return Config(upstream=str(raw.get("upstream", "")).rstrip("/"), deployment=raw.get("deployment"), **sections)


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
        _merge(raw, _flatten_file(_read(path)), from_text=False)
    _merge(raw, _flatten_environ(environ or {}), from_text=True)
    _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None}, from_text=False)
    config = _build(raw)
    _validate(config, require_upstream)
    config = _with_identity(config)
    return dataclasses.replace(config, routes=parse_routes(raw.get("routes"), config.webhooks.allow))


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
