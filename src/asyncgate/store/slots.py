"""The hash tags one deployment's runs are spread over (store.slots), and which one holds a run."""

from __future__ import annotations

import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


class SlotKeys:
    """The keys of one hash tag: the runs living there and every shared key their scripts touch.

    With one slot the tag is ``{P}`` and the keys are those the schema in store/redis.py lists;
    with more, each slot has the same keys under its own tag, so that a script touching a run and
    its queue, indexes and heartbeats still touches one Cluster slot.
    """

    def __init__(self, tag: str) -> None:
        # Names made once: the hot paths name them with every script call.
        self.tag = tag
        self.queue = f"{tag}:queue"
        self.ranked = f"{tag}:ranked"
        self.counters = f"{tag}:counters"
        self.wake = f"{tag}:wake"
        self.deadlines = f"{tag}:deadlines"
        self.shares = f"{tag}:shares"
        self.leases = f"{tag}:leases"
        self.gateways = f"{tag}:gateways"
        self.held = f"{tag}:held"
        self.cancels = f"{tag}:cancels"
        self.index = f"{tag}:index"
        self.deliveries = f"{tag}:deliveries"
        self.hookruns = f"{tag}:hookruns"
        self.alive = f"{tag}:alive"
        self.expiry = f"{tag}:expiry"
        self.probe = f"{tag}:probe"

    def __repr__(self) -> str:
        return f"SlotKeys({self.tag!r})"

    def run(self, run_id: str) -> str:
        return f"{self.tag}:run:{run_id}"

    def events(self, run_id: str) -> str:
        return f"{self.tag}:events:{run_id}"

    def hooks(self, run_id: str) -> str:
        return f"{self.tag}:hooks:{run_id}"

    def idem(self, key: str) -> str:
        return f"{self.tag}:idem:{key}"

    def caller_index(self, caller: str) -> str:
        return f"{self.index}:{caller}" if caller else self.index


def slot_tags(prefix: str, count: int) -> tuple[str, ...]:
    """The hash tags of ``count`` slots: ``{P}`` alone for one (today's layout), else for the k-th
    the first ``{P:k.j}`` (j = 0, 1, ...) whose Cluster slot lies in the k-th of ``count`` equal
    ranges of 0..16383. A Cluster's masters own contiguous, equal ranges by default, so with at
    least as many slots as masters every master holds some of the deployment's runs."""
    if count == 1:
        return (f"{{{prefix}}}",)
    tags = []
    for k in range(count):
        low, high = k * REDIS_CLUSTER_HASH_SLOTS // count, (k + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        j = 0
        while not low <= key_slot(f"{prefix}:{k}.{j}".encode()) < high:
            j += 1
        tags.append(f"{{{prefix}:{k}.{j}}}")
    return tuple(tags)


def slot_of(key: str, count: int) -> int:
    """The slot a run id (or an idempotency key's hash) belongs to: a pure function of the text,
    so that any replica finds a run from its id alone."""
    if count == 1:
        return 0
    return zlib.crc32(key.encode()) % count
