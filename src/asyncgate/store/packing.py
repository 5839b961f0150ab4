"""Commands to Redis packed by hiredis, in C, where redis-py's asyncio client packs them in Python."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command

    _hiredis_pack = cast(Callable[[tuple[Any, ...]], bytes], pack_command)
except ImportError:  # the `speed` extra's; without it, redis-py packs commands itself
    _hiredis_pack = None


class _HiredisPacking:
    """Commands packed by hiredis, in C, as redis-py's synchronous client packs them when hiredis is
    installed. Its asyncio client packs them in Python, joining a growing buffer anew for every
    argument: an XREAD of a thousand followed runs' logs (2,000 arguments) cost about 3 ms of CPU
    per read, and the packing was an eighth of an intake's CPU under load."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        # As redis-py does: a command of several words ("CONFIG GET") is sent as separate ones.
        head = tuple(name.encode().split()) if isinstance(name, str) else tuple(name.split())
        assert _hiredis_pack is not None  # only mixed in when hiredis is there
        try:
            return [_hiredis_pack(head + args[1:])]
        except TypeError:
            pass
        # hiredis takes str, bytes, memoryviews and numbers; redis-py takes bytearrays too.
        rest = tuple(bytes(arg) if isinstance(arg, bytearray) else arg for arg in args[1:])
        try:
            return [_hiredis_pack(head + rest)]
        except TypeError as exc:
            raise DataError(f"cannot send this command to Redis: {exc}") from None  # no values: they may be secrets


def _packed_by_hiredis(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    return type(connection_class.__name__, (_HiredisPacking, connection_class), {})


def pack_with_hiredis(pool: aioredis.ConnectionPool) -> None:
    """Make the connections ``pool`` opens from now on pack their commands with hiredis."""
    if _hiredis_pack is not None:
        pool.connection_class = _packed_by_hiredis(pool.connection_class)
