"""A Python client for asyncgate: submit a request as a run, follow it, fetch its result.

    from asyncgate.client import Client

    with Client("http://127.0.0.1:8080") as client:
        run = client.submit("POST", "/predict", json={"param": "hello world"})
        run.wait(timeout=600)          # RunFailed, RunCancelled or WaitTimeout if not succeeded
        print(run.result().json())

``AsyncClient`` is the same for asyncio. Both share one implementation of the protocol
(``asyncgate.client._protocol``); only the sending differs.
"""

from asyncgate.client._async import AsyncClient, AsyncRun
from asyncgate.client._models import (
    ErrorDetail,
    QueuePlace,
    Result,
    RunEvent,
    RunPage,
    RunProgress,
    RunStatus,
    WebhookStatus,
)
from asyncgate.client._sync import Client, Run
from asyncgate.client.errors import (
    APIError,
    AsyncgateClientError,
    ProtocolError,
    RunCancelled,
    RunError,
    RunFailed,
    TransportError,
    WaitTimeout,
)
from asyncgate.client.webhook import WebhookDelivery, verify_webhook
from asyncgate.errors import InvalidSecret, InvalidSignature
from asyncgate.runs import RunState

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncRun",
    "AsyncgateClientError",
    "Client",
    "ErrorDetail",
    "InvalidSecret",
    "InvalidSignature",
    "ProtocolError",
    "QueuePlace",
    "Result",
    "Run",
    "RunCancelled",
    "RunError",
    "RunEvent",
    "RunFailed",
    "RunPage",
    "RunProgress",
    "RunState",
    "RunStatus",
    "TransportError",
    "WaitTimeout",
    "WebhookDelivery",
    "WebhookStatus",
    "verify_webhook",
]
