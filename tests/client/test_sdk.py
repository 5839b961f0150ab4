"""The Python client against a real gateway over real sockets, on both stores, sync and async."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Generic, TypeVar

import pytest

from asyncgate.client import (
    APIError,
    AsyncClient,
    AsyncRun,
    Client,
    ProtocolError,
    Result,
    RunCancelled,
    RunEvent,
    RunFailed,
    RunState,
    RunStatus,
    WaitTimeout,
    verify_webhook,
)
from tests.client.forwarder import Forwarder
from tests.e2e.conftest import Gateway, GatewayFactory, Receiver, Upstream
from tests.support.redis_server import free_port
from tests.support.wait import wait_until

T = TypeVar("T")
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Background(Generic[T]):
    """``fn()`` in a thread; ``join()`` returns its value or raises its exception."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc

    def join(self, timeout: float = 30) -> T:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not return"
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Client]:
    with Client(gateway.url, prefix=gateway.prefix, trust_env=False) as sdk:
        yield sdk


def test_submit_wait_result_returns_the_upstream_response(client: Client, gateway: Gateway) -> None:
    run = client.submit("POST", "/echo", json={"param": "hello world"}, params={"x": 1}, headers={"X-Trace": "t1"})
    assert run.location == f"{gateway.prefix}/runs/{run.run_id}"
    assert run.replayed is False

    status = run.wait(timeout=15)
    assert status.run_id == run.run_id
    assert status.state is RunState.SUCCEEDED
    assert (status.upstream_status, status.error, status.attempt) == (200, None, 1)
    assert (status.method, status.path) == ("POST", "/echo")
    assert isinstance(status.finished_at, datetime) and status.created_at is not None
    assert status.created_at <= status.finished_at
    assert status.raw == gateway.run(run.run_id)
    assert status.urls["result"] == f"{run.location}/result"
    assert gateway.client.get(status.urls["result"]).json()["body"] == '{"param":"hello world"}'

    result = run.result()
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    call = result.json()
    assert (call["method"], call["path"], call["query"]) == ("POST", "/echo", "x=1")
    assert call["body"] == '{"param":"hello world"}'
    headers = dict(call["headers"])
    assert headers["x-trace"] == "t1"
    assert headers["content-type"] == "application/json"
    assert headers["asyncgate-run-id"] == run.run_id
    assert "prefer" not in headers


def test_client_run_submits_waits_and_returns_the_result(client: Client) -> None:
    result = client.run("PUT", "/echo/a%20b", content=b"\x00raw", wait_timeout=15)
    assert result.status_code == 200
    call = result.json()
    assert (call["method"], call["raw_path"]) == ("PUT", "/echo/a%20b")
    assert call["body_sha256"] == hashlib.sha256(b"\x00raw").hexdigest()


def test_failed_run_raises_run_failed_with_upstream_status_and_code(client: Client) -> None:
    run = client.submit("GET", "/status/503")
    with pytest.raises(RunFailed) as caught:
        run.wait(timeout=15)
    error = caught.value
    assert error.run is run and error.run_id == run.run_id
    assert (error.upstream_status, error.error_code) == (503, "upstream_error")
    assert error.status is not None and error.status.state is RunState.FAILED
    assert error.upstream_headers is not None and error.upstream_headers["content-type"] == "application/json"
    assert error.upstream_body == b'{"status":503}'
    assert str(error).endswith("""the upstream answered 503: '{"status":503}'"""), str(error)
    # The upstream's answer is kept whatever the outcome.
    result = error.run.result()
    assert (result.status_code, result.json()) == (503, {"status": 503})


def test_client_run_raises_run_failed(client: Client) -> None:
    with pytest.raises(RunFailed) as caught:
        client.run("POST", "/status/404", wait_timeout=15)
    assert (caught.value.upstream_status, caught.value.error_code) == (404, "upstream_error")


def test_unreachable_upstream_fails_without_a_result(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"upstream": f"http://127.0.0.1:{free_port()}"})
    with Client(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
        run = client.submit("GET", "/echo")
        with pytest.raises(RunFailed) as caught:
            run.wait(timeout=15)
        assert (caught.value.upstream_status, caught.value.error_code) == (None, "upstream_unreachable")
        assert (caught.value.upstream_headers, caught.value.upstream_body) == (None, b"")
        with pytest.raises(APIError) as refused:
            run.result()
    assert (refused.value.status_code, refused.value.code) == (409, "no_upstream_response")


def test_the_client_finds_the_gateway_and_the_caller_in_the_environment(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"access.mode": "header"})
    environ = {"ASYNCGATE_URL": gateway.url, "ASYNCGATE_TOKEN": "sdk-user"}
    with Client(prefix=gateway.prefix, trust_env=False, environ=environ) as client:
        run = client.submit("POST", "/echo", content=b"x")
        assert run.wait(timeout=15).state is RunState.SUCCEEDED
        assert [status.run_id for status in client.list_runs().runs] == [run.run_id]
    # Another caller's token does not see it: the token was what named the caller.
    with Client(gateway.url, token="someone-else", prefix=gateway.prefix, trust_env=False, environ=environ) as other:
        assert other.list_runs().runs == []


def test_wait_timeout_raises_with_the_run_attached_and_the_run_goes_on(client: Client) -> None:
    run = client.submit("GET", "/sleep", params={"seconds": 2})
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        run.wait(timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.run is run and caught.value.timeout == 0.5
    assert caught.value.status is not None and caught.value.status.state in (RunState.QUEUED, RunState.RUNNING)
    assert run.wait(timeout=15).state is RunState.SUCCEEDED


def test_wait_long_polls_instead_of_polling(forwarder: Forwarder, gateway: Gateway) -> None:
    with Client(forwarder.url, prefix=gateway.prefix, trust_env=False) as client:
        run = client.submit("GET", "/sleep", params={"seconds": 2.5})
        assert run.wait(timeout=15).state is RunState.SUCCEEDED
    # One held status call answered when the run ended; polling at Retry-After would have made three.
    assert forwarder.requests(f"/runs/{run.run_id}?wait=".encode()) == 1
    assert forwarder.requests(f"/runs/{run.run_id}".encode()) == 1


def test_result_before_the_end_is_an_api_error(client: Client) -> None:
    run = client.submit("GET", "/sleep", params={"seconds": 2})
    with pytest.raises(APIError) as caught:
        run.result()
    assert (caught.value.status_code, caught.value.code, caught.value.retry_after) == (409, "run_not_finished", 1)
    run.cancel()


def test_unknown_run_is_an_api_error(client: Client) -> None:
    run = client.attach("doesnotexist")
    for call in (run.status, run.result, run.cancel, lambda: run.wait(timeout=5), lambda: next(run.events())):
        with pytest.raises(APIError) as caught:
            call()
        assert (caught.value.status_code, caught.value.code) == (404, "run_not_found")


def test_cancel_makes_wait_raise_run_cancelled(client: Client, upstream: Upstream) -> None:
    run = client.submit("GET", "/sleep", params={"seconds": 60})
    waiting = Background(lambda: run.wait(timeout=30))
    wait_until(lambda: run.status().state is RunState.RUNNING, message="run started")
    status = run.cancel()
    assert status.state is RunState.CANCELLED
    assert status.error is not None and status.error.code == "cancelled"
    with pytest.raises(RunCancelled) as caught:
        waiting.join()
    assert caught.value.run is run
    assert caught.value.status is not None and caught.value.status.state is RunState.CANCELLED
    with pytest.raises(APIError) as again:
        run.cancel()
    assert (again.value.status_code, again.value.code) == (409, "run_finished")


def test_idempotency_key_replay_gives_the_same_run(client: Client) -> None:
    first = client.submit("POST", "/echo", json={"order": 123}, idempotency_key="order-123")
    second = client.submit("POST", "/echo", json={"order": 123}, idempotency_key="order-123")
    assert second.run_id == first.run_id
    assert (first.replayed, second.replayed) == (False, True)
    with pytest.raises(APIError) as caught:
        client.submit("POST", "/echo", json={"order": 124}, idempotency_key="order-123")
    assert (caught.value.status_code, caught.value.code) == (422, "idempotency_key_reused")
    assert first.wait(timeout=15).state is RunState.SUCCEEDED


def test_timeout_shortens_the_run_on_the_gateway(client: Client) -> None:
    run = client.submit("GET", "/sleep", params={"seconds": 30}, timeout=0.5)
    with pytest.raises(RunFailed) as caught:
        run.wait(timeout=15)
    assert caught.value.error_code == "timeout"


def test_events_yield_every_state_change_and_end(client: Client) -> None:
    run = client.submit("GET", "/sleep", params={"seconds": 0.5})
    events = list(run.events())
    assert [event.event for event in events] == ["queued", "running", "succeeded"]
    assert [event.state for event in events] == [RunState.QUEUED, RunState.RUNNING, RunState.SUCCEEDED]
    assert all(isinstance(event.at, datetime) and event.id for event in events)
    assert events[-1].is_final and events[-1].upstream_status == 200
    assert events[1].attempt == 1


def test_events_of_a_finished_run_replay_its_history(client: Client) -> None:
    run = client.submit("GET", "/status/500")
    with pytest.raises(RunFailed):
        run.wait(timeout=15)
    events = list(run.events())
    assert [event.event for event in events] == ["queued", "running", "failed"]
    final = events[-1]
    assert final.upstream_status == 500
    assert final.error is not None and final.error.code == "upstream_error"


def test_listing_runs(client: Client) -> None:
    runs = [client.submit("GET", "/echo", params={"n": n}) for n in range(3)]
    for run in runs:
        run.wait(timeout=15)
    page = client.list_runs(limit=2)
    assert [status.run_id for status in page.runs] == [runs[2].run_id, runs[1].run_id]
    assert page.next_cursor is not None
    assert [status.run_id for status in client.iter_runs(page_size=2)] == [run.run_id for run in reversed(runs)]
    assert client.list_runs(status="running").runs == []
    with pytest.raises(APIError) as caught:
        client.list_runs(limit=100_000)
    assert (caught.value.status_code, caught.value.code) == (400, "invalid_parameter")


def delivered(status: RunStatus) -> RunStatus | None:
    return status if status.webhook is not None and status.webhook.state == "delivered" else None


def test_webhook_delivery_verifies_with_one_call(make_gateway: GatewayFactory, receiver: Receiver) -> None:
    gateway = make_gateway({"webhooks.signing_secrets": [SECRET], "webhooks.allow": ["127.0.0.1"]})
    with Client(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
        run = client.submit("POST", "/echo", content=b"payload", webhook=f"{receiver.url}/hook")
        run.wait(timeout=15)
        delivery = wait_until(lambda: receiver.deliveries.for_run(run.run_id), message="webhook delivered")[0]
        status = wait_until(lambda: delivered(run.status()), message="delivery recorded")
        # Re-sent by hand: the same message id, so the receiver can tell it is the same delivery.
        # The URL left the gateway with the final delivery, so the resend names it again.
        with pytest.raises(APIError) as deleted:
            run.resend_webhook()
        assert (deleted.value.status_code, deleted.value.code) == (409, "webhook_url_deleted")
        assert run.resend_webhook(f"{receiver.url}/hook").run_id == run.run_id
        again = wait_until(lambda: receiver.deliveries.for_run(run.run_id)[1:], message="webhook re-sent")[0]
        assert again["headers"]["webhook-id"] == delivery["headers"]["webhook-id"]
        plain = client.submit("GET", "/echo")
        plain.wait(timeout=15)
        with pytest.raises(APIError) as caught:
            plain.resend_webhook()
        assert (caught.value.status_code, caught.value.code) == (409, "no_webhook")
    verified = verify_webhook(SECRET, delivery["headers"], delivery["body"])
    assert (verified.run_id, verified.status, verified.upstream_status) == (run.run_id, RunState.SUCCEEDED, 200)
    assert verified.webhook_id == delivery["headers"]["webhook-id"]
    assert verified.content_type == "application/json"
    assert verified.body == delivery["body"] and b'"payload"' in verified.body
    assert status is not None and status.webhook is not None
    assert (status.webhook.attempts, status.webhook.last_status) == (1, 200)


def test_a_custom_prefix(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway({"server.prefix": "/ops/gate"})
    with Client(gateway.url + "/", prefix="/ops/gate/", trust_env=False) as client:
        run = client.submit("GET", "/echo")
        assert run.location == f"/ops/gate/runs/{run.run_id}"
        assert run.wait(timeout=15).state is RunState.SUCCEEDED


def test_submitting_to_something_that_is_not_a_gateway_is_a_protocol_error(upstream: Upstream) -> None:
    with Client(upstream.url, trust_env=False) as client, pytest.raises(ProtocolError, match="expected 202"):
        client.submit("GET", "/echo")


# The network drops mid-wait ---------------------------------------------------------------------


def _drop_the_network_mid_wait(forwarder: Forwarder, gateway: Gateway, wait: Callable[[], RunStatus]) -> None:
    waiting = Background(wait)
    # The SDK's long poll is in flight through the relay while the upstream call goes on.
    wait_until(lambda: forwarder.connections() > 0 and forwarder.requests(b"?wait=") > 0, message="long poll sent")
    forwarder.refuse()
    forwarder.cut()
    wait_until(lambda: forwarder.refused >= 2, message="the client tried again and again")
    assert waiting.thread.is_alive(), "wait() gave up when the network dropped"
    forwarder.refuse(False)
    status = waiting.join()
    assert status.state is RunState.SUCCEEDED and status.upstream_status == 200


def test_wait_resumes_when_the_network_drops(forwarder: Forwarder, gateway: Gateway) -> None:
    with Client(forwarder.url, prefix=gateway.prefix, trust_env=False) as client:
        run = client.submit("GET", "/sleep", params={"seconds": 3})
        _drop_the_network_mid_wait(forwarder, gateway, lambda: run.wait(timeout=30))


def test_async_wait_resumes_when_the_network_drops(forwarder: Forwarder, gateway: Gateway) -> None:
    async def submit_and_wait() -> RunStatus:
        async with AsyncClient(forwarder.url, prefix=gateway.prefix, trust_env=False) as client:
            run = await client.submit("GET", "/sleep", params={"seconds": 3})
            return await run.wait(timeout=30)

    _drop_the_network_mid_wait(forwarder, gateway, lambda: asyncio.run(submit_and_wait()))


def test_events_resume_after_the_network_drops(forwarder: Forwarder, gateway: Gateway) -> None:
    with Client(forwarder.url, prefix=gateway.prefix, trust_env=False) as client:
        run = client.submit("GET", "/sleep", params={"seconds": 2})
        seen: list[RunEvent] = []

        def follow() -> list[RunEvent]:
            for event in run.events():
                seen.append(event)
            return seen

        following = Background(follow)
        wait_until(lambda: [e.event for e in seen] == ["queued", "running"], message="running seen")
        forwarder.cut()
        events = following.join()
    # Resumed with Last-Event-ID: nothing missed, nothing twice.
    assert [event.event for event in events] == ["queued", "running", "succeeded"]
    assert forwarder.requests(b"/events") == 2


# The async flavour ------------------------------------------------------------------------------


def test_async_submit_wait_result_and_events(gateway: Gateway) -> None:
    async def scenario() -> tuple[AsyncRun, AsyncRun, RunStatus, Result, list[str]]:
        async with AsyncClient(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
            run = await client.submit("POST", "/echo", json={"a": 1}, idempotency_key="k-async")
            replay = await client.submit("POST", "/echo", json={"a": 1}, idempotency_key="k-async")
            status = await run.wait(timeout=15)
            result = await run.result()
            events = [event.event async for event in run.events()]
            return run, replay, status, result, events

    run, replay, status, result, events = asyncio.run(scenario())
    assert replay.run_id == run.run_id and replay.replayed and not run.replayed
    assert status.state is RunState.SUCCEEDED and status.run_id == run.run_id
    assert result.status_code == 200 and result.json()["body"] == '{"a":1}'
    assert events == ["queued", "running", "succeeded"]


def test_async_run_failed_and_cancelled(gateway: Gateway) -> None:
    async def scenario() -> tuple[RunFailed, RunCancelled, AsyncRun, Result]:
        async with AsyncClient(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
            direct = await client.run("GET", "/echo", wait_timeout=15)
            with pytest.raises(RunFailed) as failed:
                await client.run("GET", "/status/500", wait_timeout=15)
            hanging = await client.submit("GET", "/sleep", params={"seconds": 60})
            await hanging.cancel()
            with pytest.raises(RunCancelled) as cancelled:
                await hanging.wait(timeout=15)
            return failed.value, cancelled.value, hanging, direct

    failed, cancelled, hanging, direct = asyncio.run(scenario())
    assert direct.json()["method"] == "GET"
    assert (failed.upstream_status, failed.error_code, failed.upstream_body) == (
        500,
        "upstream_error",
        b'{"status":500}',
    )
    assert failed.upstream_headers is not None and failed.upstream_headers["content-type"] == "application/json"
    assert cancelled.run is hanging
    assert cancelled.status is not None and cancelled.status.state is RunState.CANCELLED


def test_async_listing(gateway: Gateway) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with AsyncClient(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
            runs = [await client.submit("GET", "/echo", params={"n": n}) for n in range(3)]
            page = await client.list_runs(limit=10)
            listed = [item.run_id async for item in client.iter_runs(page_size=2)]
            return [run.run_id for run in runs], [item.run_id for item in page.runs], listed

    submitted, page, listed = asyncio.run(scenario())
    assert page == listed == list(reversed(submitted))


def test_async_wait_timeout(gateway: Gateway) -> None:
    async def scenario() -> WaitTimeout:
        async with AsyncClient(gateway.url, prefix=gateway.prefix, trust_env=False) as client:
            run = await client.submit("GET", "/sleep", params={"seconds": 2})
            with pytest.raises(WaitTimeout) as caught:
                await run.wait(timeout=0.5)
            await run.cancel()
            return caught.value

    error = asyncio.run(scenario())
    assert error.status is not None and not error.status.is_final
