"""Choosing the run store the configuration asks for."""

from __future__ import annotations

from asyncgate.config import Config
from asyncgate.store.base import RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from asyncgate.store.sealing import Sealer


def build_store(config: Config) -> RunStore:
    """Redis when ``store.redis_url`` is set (replicas share it), else the embedded SQLite store."""
    secret_headers = {*config.access.secret_headers, config.access.header}
    sealer = Sealer(config.store.encryption_key, secret_headers)
    if config.store.redis_url:
        strict = config.store.durability == "strict"
        return RedisRunStore(config.store.redis_url, config.store.key_prefix, sealer=sealer, strict=strict)
    return EmbeddedRunStore(config.store.data_dir, config.store.sqlite_synchronous, sealer=sealer)
