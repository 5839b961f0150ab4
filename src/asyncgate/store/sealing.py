"""Secrets at rest: kept apart from the rest of a run, sealed, and deleted when no longer needed.

Two things a stored run holds are secrets: its request's credentials (the secret headers) and
its webhook URL (which often carries a token). A stored request keeps its secret headers' names
with a placeholder value and its webhook URL masked; the values live in separate fields,
encrypted with Fernet (AES-CBC + HMAC-SHA256, authenticated). The first key seals; every key
opens, so keys can be rotated without losing runs. Without keys (``store.plaintext``, Redis
only) the separate fields hold the values in the clear.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from starlette.datastructures import Secret

from asyncgate.errors import StoreError
from asyncgate.headers import SECRET_HEADERS
from asyncgate.runs import RunRequest, mask_url

#: What a stored request holds in place of a secret header's value.
PLACEHOLDER = "[sealed]"
#: The embedded store's own key, in its data directory, when none is configured.
KEY_FILE = "asyncgate.key"


class Sealer:
    """Seals and opens the secret parts of stored requests."""

    def __init__(self, keys: Iterable[Secret] = (), secret_headers: Iterable[str] = ()) -> None:
        self.keys = tuple(keys)
        fernets = [Fernet(str(key).encode()) for key in self.keys]
        self._fernet = MultiFernet(fernets) if fernets else None
        self.secret_headers = frozenset(SECRET_HEADERS | {name.lower() for name in secret_headers})

    @property
    def sealing(self) -> str:
        """``"sealed"`` or ``"plaintext"``: what readyz and the startup log report."""
        return "sealed" if self._fernet is not None else "plaintext"

    def opening_also(self, key: Secret) -> Sealer:
        """This sealer, also opening with ``key``; it seals with ``key`` only if it had no key."""
        return Sealer((*self.keys, key), self.secret_headers)

    def split(self, request: RunRequest) -> tuple[RunRequest, bytes | None, bytes | None]:
        """The request to store (placeholders, the webhook URL masked), its sealed credentials
        and its sealed webhook URL (each None when it has none)."""
        url = request.webhook_url
        values = [value for name, value in request.headers if name.lower() in self.secret_headers]
        headers = tuple(
            (name, PLACEHOLDER if name.lower() in self.secret_headers else value) for name, value in request.headers
        )
        stored = dataclasses.replace(request, headers=headers, webhook_url=None if url is None else mask_url(url))
        sealed_values = self._seal(orjson.dumps(values)) if values else None
        return stored, sealed_values, None if url is None else self._seal(url.encode())

    def join(self, request: RunRequest, sealed: bytes | None) -> RunRequest:
        """The request with its secret values back, for replaying it."""
        if sealed is None:
            return request
        # Credentials stored in the clear (by a version that sealed nothing without a key, or
        # under store.plaintext) are a JSON list; a Fernet token never starts with "[".
        data = sealed if sealed.startswith(b"[") else self._open(sealed)
        try:
            values = iter(orjson.loads(data))
        except orjson.JSONDecodeError as exc:
            raise StoreError("cannot open a run's stored credentials: they are damaged") from exc
        headers = tuple(
            (name, next(values, "") if name.lower() in self.secret_headers and value == PLACEHOLDER else value)
            for name, value in request.headers
        )
        return dataclasses.replace(request, headers=headers)

    def join_webhook(self, request: RunRequest, sealed: bytes | None) -> RunRequest:
        """The request with its webhook URL back, for delivering; a run stored before webhook
        URLs were sealed (no sealed field) keeps the URL its request holds."""
        if sealed is None:
            return request
        return dataclasses.replace(request, webhook_url=self.open_url(sealed))

    def seal_url(self, url: str) -> bytes:
        return self._seal(url.encode())

    def open_url(self, sealed: bytes) -> str:
        return self._open(sealed).decode()

    def _seal(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data) if self._fernet is not None else data

    def _open(self, data: bytes) -> bytes:
        if self._fernet is None:
            return data
        try:
            return self._fernet.decrypt(data)
        except InvalidToken as exc:
            raise StoreError("cannot open a run's sealed data: is its encryption key configured?") from exc


def own_key(data_dir: Path) -> Secret:
    """The key in ``data_dir``'s key file, made on first use: readable by this user alone.

    Written to a temporary file (mode 0600 from its creation) and linked into place, so that
    the key file is either whole or absent, and an existing one is never replaced.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        temporary = data_dir / f".{KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink()
        _sync_directory(data_dir)
    key = path.read_text().strip()
    try:
        Fernet(key.encode())
    except ValueError as exc:
        raise StoreError(f"{path} does not hold a Fernet key") from exc
    return Secret(key)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
