"""Configuration: frozen dataclasses, loaded once from YAML, then ASYNCGATE_* variables, then flags.

Each key is declared once, in ``sections.py`` (type, default, unit, choices, flag, meaning);
parsing (``values.py``), loading (``loading.py``), the environment variable names and the
generated reference (``asyncgate.configdoc``: config.example.yaml, docs/configuration.md and
the Helm values schema) all derive from that declaration.
"""

from asyncgate.config.keys import ENV_PREFIX, Key, KeyInfo, Unit
from asyncgate.config.loading import REDIS_SCHEMES, declared_keys, derive_deployment, load
from asyncgate.config.routes import ROUTE_DECLARATIONS, ROUTE_KEYS, RouteKey
from asyncgate.config.sections import (
    DEFAULT_SCHEDULE,
    SECTIONS,
    AccessConfig,
    AccessMode,
    Config,
    Durability,
    LimitsConfig,
    LogFormat,
    LogLevel,
    ProxyConfig,
    RunsConfig,
    ServerConfig,
    ShutdownConfig,
    SqliteSynchronous,
    StoreConfig,
    WebhookFormat,
    WebhooksConfig,
)
from asyncgate.config.values import parse_duration, parse_size
from asyncgate.errors import ConfigError

__all__ = [
    "DEFAULT_SCHEDULE",
    "ENV_PREFIX",
    "REDIS_SCHEMES",
    "ROUTE_DECLARATIONS",
    "ROUTE_KEYS",
    "SECTIONS",
    "AccessConfig",
    "AccessMode",
    "Config",
    "ConfigError",
    "Durability",
    "Key",
    "KeyInfo",
    "LimitsConfig",
    "LogFormat",
    "LogLevel",
    "ProxyConfig",
    "RouteKey",
    "RunsConfig",
    "ServerConfig",
    "ShutdownConfig",
    "SqliteSynchronous",
    "StoreConfig",
    "Unit",
    "WebhookFormat",
    "WebhooksConfig",
    "declared_keys",
    "derive_deployment",
    "load",
    "parse_duration",
    "parse_size",
]
