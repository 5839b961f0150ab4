"""Parsing one key's value, as its declaration says: durations, sizes, secrets, lists and choices."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Secret

from asyncgate.config.keys import Key, Unit
from asyncgate.errors import BlockedDestination, ConfigError, InvalidSecret
from asyncgate.netguard import Allowlist, check_url_literal
from asyncgate.signing import secret_key

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
#: What a duration (``2.5``, ``500ms``) and a size (``16MiB``) look like as text; the Helm schema uses them too.
DURATION_TEXT = r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*"
SIZE_TEXT = r"\s*(\d+)\s*([kKmMgG][iI]?[bB]|[bB])?\s*"
_ZERO = ("0", "0s", "0.0")


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
        match = re.fullmatch(DURATION_TEXT, value)
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
        match = re.fullmatch(SIZE_TEXT, value)
        if match is None:
            raise ConfigError(key, f"expected a size such as 16MiB, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    else:
        raise ConfigError(key, f"expected a size, got {type(value).__name__}")
    if size <= 0:
        raise ConfigError(key, "must be greater than zero")
    return size


def positive_int(name: str, value: Any, *, from_text: bool = False) -> int:
    """A whole number above zero; ``from_text``: it may be written as a string (an environment variable)."""
    if from_text and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    if value <= 0:
        raise ConfigError(name, "must be greater than zero")
    return value


def fernet_key(value: str) -> Secret:
    """A Fernet key (32 url-safe base64 bytes), held as a Secret; ValueError otherwise."""
    try:
        key = base64.urlsafe_b64decode(value.encode())
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ValueError("an encryption key must be 32 url-safe base64 bytes (Fernet.generate_key())")
    return Secret(value)


def _maybe_zero_duration(name: str, value: Any) -> float:
    if not isinstance(value, bool) and str(value).strip() in _ZERO:
        return 0.0
    return parse_duration(name, value)


def _converted(key: Key, value: Any) -> Any:
    if key.info.convert is None:
        return value
    try:
        return key.info.convert(value)
    except (ValueError, InvalidSecret) as exc:
        raise ConfigError(key.name, str(exc)) from None


def _list(key: Key, value: Any, from_text: bool) -> Any:
    # A secret list is often one secret from a Kubernetes Secret, so a string is split even in YAML.
    if (from_text or key.info.unit is Unit.SECRET) and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(key.name, f"expected a list, got {type(value).__name__}")
    if key.info.unit is Unit.DURATION:
        if not value:
            raise ConfigError(key.name, "must hold at least one delay")
        return tuple(_maybe_zero_duration(key.name, item) for item in value)
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigError(key.name, "expected a list of non-empty strings")
    if key.info.unit is Unit.SECRET:
        return tuple(_converted(key, item) for item in value)
    return _converted(key, tuple(value))


def _scalar(key: Key, value: Any, from_text: bool) -> Any:
    base = key.base
    if base is int:
        return positive_int(key.name, value, from_text=from_text)
    if base is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key.name, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key.name, f"expected a number, got {value!r}")
        return _finite(key.name, value)
    if base is bool:
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        if not isinstance(value, bool):
            raise ConfigError(key.name, f"expected true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(key.name, f"expected a string, got {type(value).__name__}")
    if key.choices and value not in key.choices:
        raise ConfigError(key.name, f"expected one of {', '.join(key.choices)}, got {value!r}")
    if key.info.pattern is not None and not re.fullmatch(key.info.pattern, value):
        raise ConfigError(key.name, f"expected {key.info.shape}, got {value!r}")
    return value


def coerce(key: Key, value: Any, *, from_text: bool) -> Any:
    """The parsed value of ``key``; ``from_text``: it comes from an environment variable (lists are comma-separated)."""
    if key.info.is_list:
        return _list(key, value, from_text)
    if key.info.unit is Unit.SECRET:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or len(value) < 16:
            raise ConfigError(key.name, "expected a secret string of at least 16 characters")
        return _converted(key, value) if key.info.convert else Secret(value)
    if key.info.unit is Unit.DURATION:
        return _maybe_zero_duration(key.name, value) if key.info.zero else parse_duration(key.name, value)
    if key.info.unit is Unit.SIZE:
        return parse_size(key.name, value)
    if value is None or (from_text and key.optional and value == ""):
        if key.optional:
            return None
        raise ConfigError(key.name, "must not be empty")
    return _scalar(key, value, from_text)


_MAX_WEBHOOK_URL = 2048


def check_webhook_url(key: str, url: str, allow: Allowlist) -> None:
    """Refuse a configured webhook URL that is malformed, too long or aimed at a refused address."""
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


class SigningSecret(Secret):
    """A ``whsec_...`` secret, checked and decoded once (by the configuration); its repr is masked.

    Here rather than in signing.py, which the SDK's webhook verifier imports without the
    server's dependencies (starlette's Secret among them).
    """

    def __init__(self, value: str) -> None:
        super().__init__(value)
        #: The HMAC key bytes.
        self.key = secret_key(value)
