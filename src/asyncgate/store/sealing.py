"""Credentials at rest: kept apart from the rest of a run, sealed, and deleted when it ends.

A stored request keeps its secret headers' names with a placeholder value; the values live in
a separate field, encrypted with Fernet (AES-CBC + HMAC-SHA256, authenticated) when keys are
configured. The first key seals; every key opens, so keys can be rotated without losing runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from starlette.datastructures import Secret

from asyncgate.errors import StoreError
from asyncgate.headers import SECRET_HEADERS
from asyncgate.runs import RunRequest

#: What a stored request holds in place of a secret header's value.
PLACEHOLDER = "[sealed]"


class Sealer:
    """Seals and opens the secret part of stored requests."""

    def __init__(self, keys: Iterable[Secret] = (), secret_headers: Iterable[str] = ()) -> None:
        fernets = [Fernet(str(key).encode()) for key in keys]
        self._fernet = MultiFernet(fernets) if fernets else None
        self.secret_headers = frozenset(SECRET_HEADERS | {name.lower() for name in secret_headers})

    def split(self, request: RunRequest) -> tuple[RunRequest, bytes | None]:
        """The request with placeholders for secret values, and those values sealed (or None)."""
        values = [value for name, value in request.headers if name.lower() in self.secret_headers]
        if not values:
            return request, None
        headers = tuple(
            (name, PLACEHOLDER if name.lower() in self.secret_headers else value) for name, value in request.headers
        )
        data = orjson.dumps(values)
        return dataclasses.replace(request, headers=headers), self._fernet.encrypt(data) if self._fernet else data

    def join(self, request: RunRequest, sealed: bytes | None) -> RunRequest:
        """The request with its secret values back, for replaying it."""
        if sealed is None:
            return request
        try:
            data = self._fernet.decrypt(sealed) if self._fernet else sealed
            values = iter(orjson.loads(data))
        except (InvalidToken, orjson.JSONDecodeError) as exc:
            raise StoreError("cannot open a run's stored credentials: is its encryption key configured?") from exc
        headers = tuple(
            (name, next(values, "") if name.lower() in self.secret_headers and value == PLACEHOLDER else value)
            for name, value in request.headers
        )
        return dataclasses.replace(request, headers=headers)
