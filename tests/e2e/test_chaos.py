"""Chaos: three gateway processes on one Redis (AOF, fsync always) under steady mixed load, while a
seeded schedule SIGKILLs, SIGSTOPs past the lease, SIGTERMs gateways and restarts Redis (#22).

``ASYNCGATE_CHAOS_SECONDS`` (30, and at least one of each fault) and ``ASYNCGATE_CHAOS_SEED`` (22)
set its length and schedule; ``python bench/chaos.py --seconds 600 --seed 7`` runs it longer. At the end every 202 is
accounted for: the run exists and is final, no plain POST reached the upstream twice, no 202 was
answered while Redis was down, no gateway logged a traceback, and every run whose holder was
neither killed nor paused past its lease succeeded.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.support.clients import client_for
from tests.support.gateway_process import FAST_LEASES, GatewayProcess, start_replica
from tests.support.redis_server import RedisServer
from tests.support.servers import ServerThread
from tests.support.upstream import Calls, upstream_app
from tests.support.wait import wait_until

SECONDS = float(os.environ.get("ASYNCGATE_CHAOS_SECONDS", "30"))
SEED = int(os.environ.get("ASYNCGATE_CHAOS_SEED", "22"))
LEASE = float(FAST_LEASES["ASYNCGATE_RUNS_LEASE"])
#: Longer than any upstream call below: a graceful stop lets every held run finish.
DRAIN = 3.0
# Each gateway has an upstream of its own (to tell who sent a call), all serving one deployment:
# as in a rolling change of the upstream's URL, which the operator must allow (docs/fleets.md).
SETTINGS = {
    "ASYNCGATE_SHUTDOWN_DRAIN_TIMEOUT": str(DRAIN),
    "ASYNCGATE_SERVER_LOG_LEVEL": "info",
    "ASYNCGATE_STORE_ALLOW_UPSTREAM_CHANGE": "true",
}
#: Submissions per second, and the slowest upstream answer.
RATE = 10
MAX_DELAY = 1.0
KINDS = ("get", "post", "idem")
FAULTS = ("kill", "stop", "term", "redis")
#: Faults that take a holder away: its runs may be re-sent (GET, Idempotency-Key) or lost (POST).
HOLDER_LOST = {"kill", "stop"}
FINAL = {"succeeded", "failed", "cancelled"}


@dataclasses.dataclass
class Submission:
    kind: str
    tag: str
    sent: float
    answered: float
    status: int | None
    run_id: str | None


@dataclasses.dataclass
class Fault:
    kind: str
    slot: int
    start: float
    end: float


class Slot:
    """One gateway's place: an upstream of its own, so each call shows which gateway sent it."""

    def __init__(self, index: int, redis_url: str, prefix: str, logs: Path) -> None:
        self.index = index
        self.redis_url = redis_url
        self.prefix = prefix
        self.logs = logs
        self.calls = Calls()
        self.upstream = ServerThread(upstream_app(self.calls)).start()
        self.incarnations: list[GatewayProcess] = []
        #: Set while the gateway takes submissions (not killed, paused or draining).
        self.up = threading.Event()

    @property
    def replica(self) -> GatewayProcess:
        return self.incarnations[-1]

    def start(self) -> None:
        log = self.logs / f"gateway-{self.index}-{len(self.incarnations)}.log"
        self.incarnations.append(start_replica(self.upstream.url, self.redis_url, self.prefix, SETTINGS, log))
        self.up.set()

    def stop(self) -> None:
        for replica in self.incarnations:
            replica.stop()
        self.upstream.stop()


class Chaos:
    """The gateways, their Redis, the load and the fault schedule, with what each one saw."""

    def __init__(self, redis: RedisServer, slots: list[Slot]) -> None:
        self.redis = redis
        self.slots = slots
        self.rng = random.Random(SEED)
        self.submissions: list[Submission] = []
        self.faults: list[Fault] = []
        self.done = threading.Event()

    def pause(self, seconds: float) -> None:
        # How long a fault lasts, or the quiet between faults: the behaviour under test.
        self.done.wait(seconds)

    def submit_steadily(self) -> None:
        rng = random.Random(SEED + 1)
        clients = {slot.index: client_for(slot.replica.url, timeout=2) for slot in self.slots}
        try:
            while not self.done.wait(1 / RATE):
                live = [slot for slot in self.slots if slot.up.is_set()]
                if live:
                    slot = rng.choice(live)
                    clients[slot.index].base_url = slot.replica.url  # a restarted gateway has a new port
                    self.submissions.append(self.submit_one(clients[slot.index], rng))
        finally:
            for client in clients.values():
                client.close()

    def submit_one(self, client: httpx.Client, rng: random.Random) -> Submission:
        kind = KINDS[len(self.submissions) % len(KINDS)]
        tag = f"c{len(self.submissions)}"
        path = f"/echo?delay={rng.uniform(0.05, MAX_DELAY):.2f}&tag={tag}&async=true"
        headers = {"Idempotency-Key": f"{tag}-{uuid.uuid4().hex}"} if kind == "idem" else {}
        sent = time.time()
        try:
            if kind == "get":
                response = client.get(path)
            else:
                response = client.post(path, content=b"charge", headers=headers)
        except httpx.HTTPError:
            return Submission(kind, tag, sent, time.time(), None, None)
        run_id = response.json()["run_id"] if response.status_code == 202 else None
        return Submission(kind, tag, sent, time.time(), response.status_code, run_id)

    def run_schedule(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        order: list[str] = []
        actions = {"kill": self.kill, "stop": self.stop, "term": self.term, "redis": self.restart_redis}
        # A round once begun is finished, so however short the run, every kind of fault happens.
        while time.monotonic() < deadline or order:
            self.pause(self.rng.uniform(1.0, 3.0))
            if not order:
                order = self.rng.sample(FAULTS, len(FAULTS))  # every kind of fault, in turn
            kind, slot = order.pop(), self.rng.choice(self.slots)
            start = time.time()
            actions[kind](slot)
            self.faults.append(Fault(kind, slot.index, start, time.time()))

    def kill(self, slot: Slot) -> None:
        slot.up.clear()
        slot.replica.process.kill()
        slot.replica.process.wait(timeout=10)
        slot.start()

    def stop(self, slot: Slot) -> None:
        slot.up.clear()
        slot.replica.process.send_signal(signal.SIGSTOP)
        self.pause(LEASE + self.rng.uniform(0.5, 1.5))
        slot.replica.process.send_signal(signal.SIGCONT)
        slot.up.set()

    def term(self, slot: Slot) -> None:
        slot.up.clear()
        slot.replica.process.send_signal(signal.SIGTERM)
        assert slot.replica.process.wait(timeout=DRAIN + 15) == 0, "a drained gateway exits 0"
        slot.start()

    def restart_redis(self, slot: Slot) -> None:
        self.redis.stop()
        down = time.time()
        self.pause(self.rng.uniform(0.5, 2 * LEASE))
        self.faults.append(Fault("redis-down", -1, down, time.time()))
        self.redis.start()


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    redis = RedisServer(appendonly=True)
    redis.start()
    prefix = f"c{uuid.uuid4().hex[:10]}"
    slots = [Slot(index, redis.url, prefix, tmp_path) for index in range(3)]
    try:
        for slot in slots:
            slot.start()
        yield Chaos(redis, slots)
    finally:
        for slot in slots:
            slot.stop()
        redis.cleanup()


def moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def overlaps(fault: Fault, start: float, end: float) -> bool:
    return fault.start <= end and start <= fault.end


@pytest.mark.slow
def test_chaos_accounts_for_every_accepted_run(chaos: Chaos) -> None:
    load = threading.Thread(target=chaos.submit_steadily, name="chaos-load")
    load.start()
    try:
        chaos.run_schedule(SECONDS)
    finally:
        chaos.done.set()
        load.join(timeout=30)
    assert {fault.kind for fault in chaos.faults} >= {*FAULTS[:-1], "redis-down"}, chaos.faults
    accepted = [s for s in chaos.submissions if s.status == 202 and s.run_id]
    assert len(accepted) >= SECONDS * RATE / 4, f"too little load: {len(accepted)} runs accepted"
    statuses = final_statuses(chaos, accepted)
    arrivals = arrivals_by_tag(chaos.slots)

    # No 202 while Redis was down: every request sent after it stopped and answered before it
    # started again was refused.
    for down in (f for f in chaos.faults if f.kind == "redis-down"):
        during = [s for s in accepted if down.start <= s.sent and s.answered <= down.end]
        assert during == [], f"202 while the store was down: {during}"
    # No plain POST reached the upstream twice.
    twice = {s.tag: arrivals[s.tag] for s in accepted if s.kind == "post" and len(arrivals[s.tag]) > 1}
    assert twice == {}, f"plain POSTs sent more than once: {twice}"
    # Every run whose holders all lived (and whose every attempt was sent) succeeded.
    failed = {}
    for submission in accepted:
        status = statuses[submission.tag]
        if status["status"] != "succeeded" and not disturbed(chaos, status, arrivals[submission.tag]):
            failed[submission.tag] = (status, arrivals[submission.tag])
    assert failed == {}, f"runs failed though no holder of theirs was lost: {failed}"
    logs = {path.name: path.read_text(errors="replace") for path in sorted(chaos.slots[0].logs.glob("*.log"))}
    tracebacks = {name: text for name, text in logs.items() if "Traceback" in text}
    assert tracebacks == {}
    print(summary(chaos, accepted, statuses, arrivals))  # shown with -s (bench/chaos.py)


def summary(
    chaos: Chaos,
    accepted: list[Submission],
    statuses: dict[str, dict[str, Any]],
    arrivals: dict[str, list[tuple[int, str]]],
) -> str:
    def outcome(submission: Submission) -> str:
        status = statuses[submission.tag]
        return " ".join([submission.kind, status["status"], *([status["error"]["code"]] if status["error"] else [])])

    resent = sum(1 for s in accepted if len(arrivals[s.tag]) > 1)
    refused = Counter(s.status for s in chaos.submissions if s.status != 202)
    return (
        f"\nchaos: seed {SEED}, {SECONDS:.0f} s, faults {dict(Counter(f.kind for f in chaos.faults))}\n"
        f"submitted {len(chaos.submissions)}, accepted {len(accepted)}, refused {dict(refused)}, re-sent {resent}\n"
        f"outcomes {dict(sorted(Counter(outcome(s) for s in accepted).items()))}"
    )


def final_statuses(chaos: Chaos, accepted: list[Submission]) -> dict[str, dict[str, Any]]:
    """Every accepted run's final status, read through a live gateway, waiting (bounded) for each."""
    final: dict[str, dict[str, Any]] = {}
    client = chaos.slots[0].replica.client

    def all_final() -> bool:
        for submission in accepted:
            if submission.tag in final:
                continue
            response = client.get(f"/_asyncgate/runs/{submission.run_id}")
            assert response.status_code == 200, f"an accepted run is unknown: {submission}, {response.text}"
            if response.json()["status"] in FINAL:
                final[submission.tag] = response.json()
        return len(final) == len(accepted)

    wait_until(all_final, timeout=45, interval=0.5, message="every accepted run final")
    return final


def arrivals_by_tag(slots: list[Slot]) -> dict[str, list[tuple[int, str]]]:
    """Which gateway (slot) sent each run's calls, and as which attempt."""
    arrivals: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for slot in slots:
        for call in slot.calls.all():
            if call.get("event") == "arrived":
                tag = parse_qs(call["query"])["tag"][0]
                arrivals[tag].append((slot.index, call["attempt"]))
    return arrivals


def disturbed(chaos: Chaos, status: dict[str, Any], arrivals: list[tuple[int, str]]) -> bool:
    """Whether a gateway that held the run was killed or paused past its lease while it lived."""
    start, end = moment(status["created_at"]), moment(status["finished_at"])
    losses = [f for f in chaos.faults if f.kind in HOLDER_LOST and overlaps(f, start, end)]
    if len(arrivals) < status["attempt"]:
        return bool(losses)  # an attempt never sent: its holder is unknown, so any loss may be it
    holders = {slot for slot, _ in arrivals}
    return any(f.slot in holders for f in losses)
