"""Choosing the run store the configuration asks for."""

from __future__ import annotations

from asyncgate.config import Config
from asyncgate.store.base import Identity, RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from asyncgate.store.sealing import Sealer


def build_store(config: Config) -> RunStore:
    """Redis when ``store.redis_url`` is set (replicas share it), else the embedded SQLite store."""
    secret_headers = {*config.access.secret_headers, config.access.header}
    sealer = Sealer(config.store.encryption_key, secret_headers)
    identity = None
    if config.runs.execute and config.deployment:
        # Only a gateway that executes runs sends them to its upstream, so only it claims them;
        # an intake-only replica never calls the upstream for a run.
        identity = Identity(config.deployment, config.upstream, config.store.allow_upstream_change)
    if config.store.redis_url:
        strict = config.store.durability == "strict"
        prefix = config.store.key_prefix or "asyncgate"
        return RedisRunStore(config.store.redis_url, prefix, sealer=sealer, strict=strict, identity=identity)
    return EmbeddedRunStore(config.store.data_dir, config.store.sqlite_synchronous, sealer=sealer, identity=identity)
