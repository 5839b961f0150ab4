"""Choosing the run store the configuration asks for."""

from __future__ import annotations

from asyncgate.config import StoreConfig
from asyncgate.store.base import RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore


def build_store(config: StoreConfig) -> RunStore:
    """Redis when ``redis_url`` is set (replicas share it), else the embedded SQLite store."""
    if config.redis_url:
        return RedisRunStore(config.redis_url, config.key_prefix)
    return EmbeddedRunStore(config.data_dir, config.sqlite_synchronous)
