"""Who is calling: a fingerprint of the caller's credentials, never the credentials themselves."""

from __future__ import annotations

import hashlib

from starlette.types import Scope

#: Domain separation, so the fingerprint of a token is not a plain hash of it.
_CONTEXT = b"asyncgate-caller-v1\x00"


def caller_of(scope: Scope) -> str:
    """A stable fingerprint of the request's Authorization header; "" for anonymous callers."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hashlib.sha256(_CONTEXT + value).hexdigest()[:32]
    return ""
