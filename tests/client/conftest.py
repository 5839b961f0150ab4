"""The e2e fixtures (gateways over both stores, the fake upstream, the webhook receiver), re-exported."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.forwarder import Forwarder
from tests.e2e.conftest import Gateway, gateway, make_gateway, receiver, store_kind, upstream

__all__ = ["forwarder", "gateway", "make_gateway", "receiver", "store_kind", "upstream"]


@pytest.fixture
def forwarder(gateway: Gateway) -> Iterator[Forwarder]:
    """A TCP relay in front of ``gateway`` whose connections a test can cut."""
    relay = Forwarder(gateway.server.port).start()
    yield relay
    relay.close()
