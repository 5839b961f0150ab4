"""Leases that never lie (#22): one record per held attempt, claims a drain cannot orphan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from asyncgate.config import Config, load
from asyncgate.executor import Executor
from asyncgate.metrics import Metrics
from asyncgate.runs import Outcome, Run, RunRequest, RunState, new_run_id, now
from asyncgate.store.base import Finished
from asyncgate.store.redis import RedisRunStore
from asyncgate.upstream import Upstream as UpstreamPool
from tests.e2e.conftest import GatewayFactory, Upstream
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

T = TypeVar("T")


@pytest.fixture
def store_kind() -> str:
    return "redis"


def arrivals(upstream: Upstream, tag: str) -> list[dict[str, Any]]:
    return [c for c in upstream.calls.all() if c.get("event") == "arrived" and tag in c["query"]]


def behind_the_back(url: str, prefix: str | None, step: Callable[[RedisRunStore], Awaitable[T]]) -> T:
    """Run ``step(store)`` on a store of its own, as another gateway (or an operator) would."""

    async def go() -> T:
        assert prefix is not None  # load() fills it in
        store = RedisRunStore(url, key_prefix=prefix)
        try:
            return await step(store)
        finally:
            await store.close()

    return asyncio.run(go())


class Woken:
    """The executor's dispatcher: it records each wake and takes no delivery with a finish."""

    def __init__(self) -> None:
        self.woken: list[str] = []

    def wake(self) -> None:
        self.woken.append("webhooks")

    def take_lease(self, run: Run) -> float | None:
        return None

    def hand(self, run: Run, outcome: Outcome, finished: Finished) -> None:
        raise AssertionError("no delivery was taken")


def test_a_gateway_reclaiming_its_own_stale_attempt_records_the_newer_answer(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    # A long lease: nothing but the requeue below makes the run change hands.
    gateway = make_gateway({"runs.lease": 30, "runs.lease_renewal": 0.2})
    store = gateway.config.store
    tag = uuid.uuid4().hex[:8]
    run_id = gateway.client.get(f"/echo?delay=1&tag={tag}&async=true").json()["run_id"]
    wait_until(lambda: arrivals(upstream, tag), message="attempt 1 reached the upstream")
    # The store takes attempt 1 back while it is still in flight here (as a recovery pass would
    # after a pause past the lease); this very gateway then claims attempt 2.
    with caplog.at_level(logging.WARNING, logger="asyncgate"):
        assert behind_the_back(str(store.redis_url), store.key_prefix, lambda s: s.requeue(run_id, 1)) is True
        wait_until(lambda: len(arrivals(upstream, tag)) == 2, message="attempt 2 reached the upstream")
        done = gateway.wait_final(run_id)
    assert done["status"] == "succeeded"
    assert done["attempt"] == 2
    result = gateway.client.get(f"{gateway.prefix}/runs/{run_id}/result").json()
    assert dict(result["headers"])["asyncgate-attempt"] == "2"
    assert [a["attempt"] for a in arrivals(upstream, tag)] == ["1", "2"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a run task failed"
    assert f"run {run_id}: attempt 2 replaces stale attempt 1" in caplog.text


class SlowReply(RedisRunStore):
    """A Redis store whose claims take their runs at once but answer only when told to."""

    def __init__(self, url: str, key_prefix: str) -> None:
        super().__init__(url, key_prefix)
        self.claimed = asyncio.Event()
        self.answer = asyncio.Event()

    async def claim(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        runs = await super().claim(owner, limit, wait, lease)
        if runs:
            self.claimed.set()
            await self.answer.wait()
        return runs


def test_a_claim_cut_by_a_drain_hands_its_runs_back_unsent(redis_server: RedisServer, upstream: Upstream) -> None:
    config = load(
        None,
        environ={},
        overrides={"upstream": upstream.url, "runs.poll_interval": 0.2, "runs.lease": 30, "access.mode": "open"},
    )
    tag = uuid.uuid4().hex[:8]
    # With a webhook, a run that finished here would wake the dispatcher.
    hook = "http://hooks.example/done"
    request = RunRequest(method="POST", path="/echo", query=f"tag={tag}", headers=(), webhook_url=hook, timeout=60)
    run = Run(run_id=new_run_id(), state=RunState.QUEUED, request=request, created_at=now())
    webhooks = Woken()

    async def scenario() -> Run | None:
        store = SlowReply(redis_server.url, f"t{uuid.uuid4().hex[:12]}")
        pool = UpstreamPool(config)
        await store.open()
        await pool.open()
        try:
            await store.create(run, b"charge")
            executor = Executor(config, store, pool, webhooks, Metrics())
            executor.start()
            await asyncio.wait_for(store.claimed.wait(), timeout=10)
            # SIGTERM in the moment between the store's claim and its reply.
            executor.stop_claiming()
            store.answer.set()
            await asyncio.wait_for(executor.stop(drain_timeout=1), timeout=10)
            return await store.get(run.run_id)
        finally:
            await pool.close()
            await store.close()

    after = asyncio.run(scenario())
    assert after is not None
    # Queued again at once, even though a POST without an Idempotency-Key is never re-sent:
    # this one was never sent.
    assert after.state is RunState.QUEUED
    assert after.attempt == 1
    assert webhooks.woken == []
    assert [c for c in upstream.calls.all() if tag in c.get("query", "")] == []


def test_a_finished_run_with_a_webhook_wakes_the_dispatcher_and_one_without_does_not(
    redis_server: RedisServer, upstream: Upstream
) -> None:
    config = load(
        None, environ={}, overrides={"upstream": upstream.url, "runs.poll_interval": 0.2, "access.mode": "open"}
    )
    tag = uuid.uuid4().hex[:8]

    def queued(webhook_url: str | None) -> Run:
        request = RunRequest("GET", "/echo", f"tag={tag}", (), webhook_url=webhook_url, timeout=60)
        return Run(run_id=new_run_id(), state=RunState.QUEUED, request=request, created_at=now())

    with_hook, without = queued("http://hooks.example/done"), queued(None)
    webhooks = Woken()

    async def scenario() -> list[RunState]:
        store = RedisRunStore(redis_server.url, f"t{uuid.uuid4().hex[:12]}")
        pool = UpstreamPool(config)
        await store.open()
        await pool.open()
        try:
            for run in (with_hook, without):
                await store.create(run, b"")
            executor = Executor(config, store, pool, webhooks, Metrics())
            executor.start()
            states: list[RunState] = []
            async with asyncio.timeout(10):  # wait_until's deadline, for a loop that awaits
                while not all(state.is_final for state in states) or not states:
                    await asyncio.sleep(0.01)
                    states = [stored.state for run in (with_hook, without) if (stored := await store.get(run.run_id))]
            # Stopped, the executor has no task left that could still wake anything.
            await asyncio.wait_for(executor.stop(drain_timeout=1), timeout=10)
            return states
        finally:
            await pool.close()
            await store.close()

    assert asyncio.run(scenario()) == [RunState.SUCCEEDED, RunState.SUCCEEDED]
    assert webhooks.woken == ["webhooks"]


class FailsFirstCall(RedisRunStore):
    """A store whose first call of one method fails with an error that is no StoreError, as
    redis-py 8.1's Cluster client raised in a failover (a connection closed under a command);
    counts the calls of that method."""

    def __init__(self, method: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.called_thrice = asyncio.Event()
        real = getattr(self, method)

        async def failing_once(*call_args: Any, **call_kwargs: Any) -> Any:
            self.calls += 1
            if self.calls >= 3:
                self.called_thrice.set()
            if self.calls == 1:
                raise AttributeError("'NoneType' object has no attribute 'writelines'")
            return await real(*call_args, **call_kwargs)

        setattr(self, method, failing_once)


@contextlib.asynccontextmanager
async def executing(store: RedisRunStore, config: Config) -> AsyncIterator[RedisRunStore]:
    """An executor running over ``store`` (opened, then closed with its upstream pool)."""
    pool = UpstreamPool(config)
    await store.open()
    await pool.open()
    try:
        executor = Executor(config, store, pool, Woken(), Metrics())
        executor.start()
        try:
            yield store
        finally:
            await asyncio.wait_for(executor.stop(drain_timeout=1), timeout=10)
    finally:
        await pool.close()
        await store.close()


def logged_failures(caplog: pytest.LogCaptureFixture, messages: set[str]) -> list[logging.LogRecord]:
    """The executor's records of the injected failure: one, with its traceback."""
    failures = [r for r in caplog.records if r.getMessage() in messages]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], AttributeError)
    return failures


def test_a_claim_failing_on_an_unexpected_error_is_logged_and_claiming_goes_on(
    redis_server: RedisServer, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    config = load(
        None, environ={}, overrides={"upstream": upstream.url, "runs.poll_interval": 0.2, "access.mode": "open"}
    )
    request = RunRequest("GET", "/echo", f"tag={uuid.uuid4().hex[:8]}", (), webhook_url=None, timeout=60)
    queued = Run(run_id=new_run_id(), state=RunState.QUEUED, request=request, created_at=now())

    async def scenario() -> RunState | None:
        async with executing(FailsFirstCall("claim", redis_server.url, f"t{uuid.uuid4().hex[:12]}"), config) as store:
            await store.create(queued, b"")
            stored = None
            async with asyncio.timeout(10):  # wait_until's deadline, for a loop that awaits
                while stored is None or not stored.state.is_final:
                    await asyncio.sleep(0.01)
                    stored = await store.get(queued.run_id)
            return stored.state

    with caplog.at_level(logging.ERROR, logger="asyncgate.executor"):
        assert asyncio.run(scenario()) is RunState.SUCCEEDED
    logged_failures(caplog, {"claiming runs failed; trying again"})


RENEWING = "renewing leases failed; trying again"
RECOVERING = "looking for lost runs failed; trying again"


# A recovery pass beats first (keep_alive), so a failing heartbeat is met by either loop.
@pytest.mark.parametrize(("method", "messages"), [("keep_alive", {RENEWING, RECOVERING}), ("expired", {RECOVERING})])
def test_the_heartbeat_and_recovery_go_on_after_an_unexpected_error(
    redis_server: RedisServer, upstream: Upstream, caplog: pytest.LogCaptureFixture, method: str, messages: set[str]
) -> None:
    overrides = {
        "upstream": upstream.url,
        "access.mode": "open",
        "runs.lease": 1.5,
        "runs.lease_renewal": 0.1,
        "runs.recovery_interval": 0.1,
    }
    config = load(None, environ={}, overrides=overrides)

    async def scenario() -> int:
        failing = FailsFirstCall(method, redis_server.url, f"t{uuid.uuid4().hex[:12]}")
        async with executing(failing, config):
            await asyncio.wait_for(failing.called_thrice.wait(), timeout=10)
        return failing.calls

    with caplog.at_level(logging.ERROR, logger="asyncgate.executor"):
        assert asyncio.run(scenario()) >= 3
    logged_failures(caplog, messages)
