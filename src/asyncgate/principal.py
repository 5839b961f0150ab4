"""Who is calling: a fingerprint of the caller's credentials, never the credentials themselves.

Runs belong to the caller who submitted them. Anyone else is told a run does not exist, with
the very answer an unknown id gets, so that existence does not leak.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import time

from starlette.types import Scope

from asyncgate.config import AccessConfig
from asyncgate.errors import TooManyRequests, Unauthenticated
from asyncgate.headers import AUTHORIZATION_RAW, PROXY_AUTHORIZATION_RAW
from asyncgate.runs import Run

#: Domain separation, so the fingerprint of a token is not a plain hash of it.
_CONTEXT = b"asyncgate-caller-v1\x00"
#: Callers tracked at once by the unknown-id limiter; the least recent are forgotten first.
_TRACKED_CALLERS = 10_000
_WINDOW = 60.0
#: Headers whose values are ``auth-scheme [ 1*SP credentials ]`` (RFC 9110 section 11.4).
_SCHEMED_HEADERS = frozenset({AUTHORIZATION_RAW, PROXY_AUTHORIZATION_RAW})


def canonical_credentials(value: bytes) -> bytes:
    """``Bearer x``, ``bearer x`` and ``BEARER  x`` as one value: the scheme is case-insensitive.

    The scheme is written as its registration does (``Bearer``, ``Basic``), so the common
    spelling keeps the fingerprint it had before; the credentials themselves are left alone.
    """
    scheme, space, rest = value.partition(b" ")
    if not space:
        return value  # no scheme to speak of: a bare token, whose case matters
    return scheme[:1].upper() + scheme[1:].lower() + b" " + rest.lstrip(b" ")


@dataclasses.dataclass(frozen=True)
class Principal:
    #: The caller's fingerprint; runs are stored with it.
    caller: str
    #: Whether this principal may see every run (the admin token, or access.mode: open).
    sees_all: bool = False

    def can_see(self, run: Run) -> bool:
        return self.sees_all or hmac.compare_digest(run.caller, self.caller)


class Access:
    """Tells who a request comes from, and limits how many unknown run ids one caller may try."""

    def __init__(self, config: AccessConfig) -> None:
        self.config = config
        self._header = config.header.lower().encode("latin-1")
        #: The header's value starts with an authentication scheme, which is case-insensitive.
        self._schemed = self._header in _SCHEMED_HEADERS
        self._key = str(config.key).encode() if config.key is not None else None
        self._admin = str(config.admin_token).encode() if config.admin_token is not None else None
        self._misses: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        #: In access.mode open, everyone is the same principal.
        self._everyone = Principal("", sees_all=True) if config.mode == "open" else None

    def principal(self, scope: Scope) -> Principal:
        if self._everyone is not None:
            return self._everyone
        value = None
        for name, candidate in scope["headers"]:
            if name == self._header:
                value = candidate
                break
        if not value:
            raise Unauthenticated(f"send the {self.config.header} header: runs belong to the caller that submits them")
        if self._schemed:
            value = canonical_credentials(value)
        if self._admin is not None and hmac.compare_digest(value.removeprefix(b"Bearer "), self._admin):
            return Principal(self.fingerprint(value), sees_all=True)
        return Principal(self.fingerprint(value))

    def fingerprint(self, credential: bytes) -> str:
        if self._key is not None:
            return hmac.new(self._key, _CONTEXT + credential, hashlib.sha256).hexdigest()[:32]
        return hashlib.sha256(_CONTEXT + credential).hexdigest()[:32]

    def missed(self, principal: Principal) -> None:
        """Count a lookup of an unknown run id; raise 429 past access.unknown_run_limit a minute."""
        at = time.monotonic()
        misses = self._misses.pop(principal.caller, None) or collections.deque()
        self._misses[principal.caller] = misses
        while misses and misses[0] < at - _WINDOW:
            misses.popleft()
        misses.append(at)
        while len(self._misses) > _TRACKED_CALLERS:
            self._misses.popitem(last=False)
        if len(misses) > self.config.unknown_run_limit:
            raise TooManyRequests(
                "too many lookups of unknown runs; slow down", code="too_many_unknown_runs", retry_after=int(_WINDOW)
            )
