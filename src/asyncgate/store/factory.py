"""Choosing the run store the configuration asks for."""

from __future__ import annotations

from asyncgate.config import Config
from asyncgate.store.base import Identity, RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import STALE_ENTRY_IDLE, RedisRunStore
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
        # A queue entry read and not claimed within a lease lost its reader (killed between the
        # two): its run waits no longer than a lost holder's would (#22).
        idle = min(STALE_ENTRY_IDLE, config.runs.lease)
        ranked = any(route.highest_priority > 0 for route in config.routes)
        return RedisRunStore(
            config.store.redis_url,
            prefix,
            sealer=sealer,
            strict=strict,
            identity=identity,
            stale_entry_idle=idle,
            ranked=ranked,
            slots=config.store.slots,
        )
    return EmbeddedRunStore(config.store.data_dir, config.store.sqlite_synchronous, sealer=sealer, identity=identity)
