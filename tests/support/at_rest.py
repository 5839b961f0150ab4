"""What a store holds at rest, read behind its back: for the tests that no secret rests in the clear."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import redis

from asyncgate.store.embedded import DATABASE_FILE


def redis_key(client: redis.Redis, key: bytes) -> bytes:
    """The key, its DUMP (Redis's own encoding of it) and its values as Redis answers them."""
    return key + (client.dump(key) or b"") + repr(_values(client, key)).encode()


def _values(client: redis.Redis, key: bytes) -> object:
    kind = client.type(key)
    if kind == b"hash":
        return client.hgetall(key)
    if kind == b"stream":
        return client.xrange(key)
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    return client.get(key) if kind == b"string" else None


def sqlite_files(data_dir: Path) -> bytes:
    """Every file of the embedded store's database (its WAL too), and every row of every table."""
    files = b"".join(path.read_bytes() for path in sorted(data_dir.glob(f"{DATABASE_FILE}*")))
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = [db.execute(f'SELECT * FROM "{table}"').fetchall() for table in tables]
    db.close()
    return files + repr(rows).encode()
