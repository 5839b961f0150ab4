"""The webhook client over real sockets: checked addresses, the original Host, kept-alive connections."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from asyncgate.errors import BlockedDestination
from asyncgate.hookclient import WebhookClient
from asyncgate.netguard import Allowlist, Resolver
from tests.support.receiver import Deliveries, receiver_app
from tests.support.servers import ServerThread

LOOPBACK = Allowlist.parse(("127.0.0.0/8",))


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries()


@pytest.fixture
def receiver(deliveries: Deliveries) -> Iterator[ServerThread]:
    with ServerThread(receiver_app(deliveries)) as server:
        yield server


def answering(*addresses: str) -> tuple[list[tuple[str, int]], Resolver]:
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        calls.append((host, port))
        return list(addresses)

    return calls, resolve


def test_a_refused_address_is_skipped_and_the_name_goes_in_host(receiver: ServerThread, deliveries: Deliveries) -> None:
    # 127.0.0.2 answers on loopback but nothing listens there on the receiver's port.
    calls, resolve = answering("127.0.0.2", "127.0.0.1")
    deliveries.script = [(429, {"Retry-After": "7"})]

    async def go() -> list[tuple[int, str | None]]:
        client = WebhookClient(LOOPBACK, resolve, limit=4, timeout=5)
        try:
            url = f"http://hooks.test:{receiver.port}/in?x=1"
            answers = [await client.post(url, b"one", {"webhook-id": "msg_1"}) for _ in range(2)]
        finally:
            await client.close()
        return [(a.status, a.retry_after) for a in answers]

    assert asyncio.run(go()) == [(429, "7"), (200, None)]
    assert calls == [("hooks.test", receiver.port)] * 2
    sent = deliveries.all()
    assert [(d["path"], d["body"]) for d in sent] == [("/in", b"one"), ("/in", b"one")]
    assert {d["headers"]["host"] for d in sent} == {f"hooks.test:{receiver.port}"}
    assert {d["headers"]["webhook-id"] for d in sent} == {"msg_1"}


def test_a_name_answering_a_refused_address_sends_nothing(receiver: ServerThread, deliveries: Deliveries) -> None:
    _, resolve = answering("127.0.0.1", "169.254.169.254")

    async def go() -> None:
        client = WebhookClient(LOOPBACK, resolve, limit=4, timeout=5)
        try:
            await client.post(f"http://hooks.test:{receiver.port}/", b"x", {})
        finally:
            await client.close()

    with pytest.raises(BlockedDestination):
        asyncio.run(go())
    assert deliveries.all() == []
