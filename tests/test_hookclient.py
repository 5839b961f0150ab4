"""The webhook client over real sockets: checked addresses, the original Host, kept-alive connections."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from asyncgate.errors import BlockedDestination
from asyncgate.hookclient import HookAnswer, WebhookClient
from asyncgate.netguard import Allowlist, Resolver
from tests.support.receiver import Deliveries
from tests.support.servers import ServerThread

LOOPBACK = Allowlist.parse(("127.0.0.0/8",))


def answering(*addresses: str) -> tuple[list[tuple[str, int]], Resolver]:
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        calls.append((host, port))
        return list(addresses)

    return calls, resolve


def test_a_refused_address_is_skipped_and_the_name_goes_in_host(
    hook_server: ServerThread, deliveries: Deliveries
) -> None:
    # 127.0.0.2 answers on loopback but nothing listens there on the receiver's port.
    calls, resolve = answering("127.0.0.2", "127.0.0.1")
    deliveries.script = [(429, {"Retry-After": "7"})]

    async def go() -> list[tuple[int, str | None]]:
        client = WebhookClient(LOOPBACK, resolve, limit=4, timeout=5)
        try:
            url = f"http://hooks.test:{hook_server.port}/in?x=1"
            answers = [await client.post(url, b"one", {"webhook-id": "msg_1"}) for _ in range(2)]
        finally:
            await client.close()
        return [(a.status, a.retry_after) for a in answers]

    assert asyncio.run(go()) == [(429, "7"), (200, None)]
    assert calls == [("hooks.test", hook_server.port)] * 2
    sent = deliveries.all()
    assert [(d["path"], d["body"]) for d in sent] == [("/in", b"one"), ("/in", b"one")]
    assert {d["headers"]["host"] for d in sent} == {f"hooks.test:{hook_server.port}"}
    assert {d["headers"]["webhook-id"] for d in sent} == {"msg_1"}


def post_once(allow: Allowlist, resolve: Resolver, url: str) -> HookAnswer:
    """One delivery by a client of its own."""

    async def go() -> HookAnswer:
        client = WebhookClient(allow, resolve, limit=4, timeout=5)
        try:
            return await client.post(url, b"{}", {})
        finally:
            await client.close()

    return asyncio.run(go())


def test_a_name_answering_a_refused_address_sends_nothing(hook_server: ServerThread, deliveries: Deliveries) -> None:
    _, resolve = answering("127.0.0.1", "169.254.169.254")
    with pytest.raises(BlockedDestination):
        post_once(LOOPBACK, resolve, f"http://hooks.test:{hook_server.port}/")
    assert deliveries.all() == []


def test_a_redirect_is_an_answer_and_never_followed(hook_server: ServerThread, deliveries: Deliveries) -> None:
    _, resolve = answering("127.0.0.1")
    deliveries.script = [(302, {"Location": "http://169.254.169.254/latest/meta-data/"})]
    assert post_once(LOOPBACK, resolve, f"http://hooks.test:{hook_server.port}/done").status == 302
    assert [d["path"] for d in deliveries.all()] == ["/done"]


def test_the_name_is_looked_up_once_so_it_cannot_rebind_after_the_check(
    hook_server: ServerThread, deliveries: Deliveries
) -> None:
    # A second lookup would answer the metadata service: there is none.
    calls: list[tuple[str, int]] = []
    answers = [["127.0.0.1"], ["169.254.169.254"]]

    async def rebinding(host: str, port: int) -> Sequence[str]:
        calls.append((host, port))
        return answers[len(calls) - 1]

    assert post_once(LOOPBACK, rebinding, f"http://hooks.test:{hook_server.port}/done").status == 200
    assert calls == [("hooks.test", hook_server.port)]
    [delivery] = deliveries.all()
    assert delivery["headers"]["host"] == f"hooks.test:{hook_server.port}"


def test_loopback_is_refused_without_the_allowlist(hook_server: ServerThread, deliveries: Deliveries) -> None:
    _, resolve = answering("127.0.0.1")
    with pytest.raises(BlockedDestination) as caught:
        post_once(Allowlist(), resolve, f"http://hooks.test:{hook_server.port}/done")
    assert caught.value.reason == "loopback"
    assert deliveries.all() == []


def test_checked_urls_are_kept_parsed_up_to_a_bound_and_refused_ones_are_refused_again(
    hook_server: ServerThread, deliveries: Deliveries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("asyncgate.hookclient.MAX_TARGETS", 3)
    urls = [f"http://127.0.0.1:{hook_server.port}/in/{n}?token=t{n}" for n in range(5)]

    async def go() -> tuple[list[int], list[str], int]:
        client = WebhookClient(LOOPBACK, None, limit=4, timeout=5)
        refusals = 0
        try:
            statuses = [(await client.post(url, b"x", {})).status for url in [*urls, urls[-1]]]
            for _ in range(2):
                with pytest.raises(BlockedDestination):
                    await client.post("http://10.0.0.1/in", b"x", {})
                refusals += 1
            kept = list(client._targets)
        finally:
            await client.close()
        return statuses, kept, refusals

    statuses, kept, refusals = asyncio.run(go())
    assert statuses == [200] * 6
    assert kept == urls[2:]  # the three used last, the one used twice last of all
    assert refusals == 2
    assert [d["path"] for d in deliveries.all()] == [f"/in/{n}" for n in range(5)] + ["/in/4"]
