"""Which requests the event stream answers below starlette (eventstream.RunEvents)."""

from __future__ import annotations

from typing import Any

import pytest

from asyncgate.app import Gateway
from asyncgate.config import load


@pytest.fixture
def gateway(tmp_path: Any) -> Gateway:
    config = load(None, environ={}, overrides={"upstream": "http://127.0.0.1:1", "store.data_dir": str(tmp_path)})
    return Gateway(config)


@pytest.mark.parametrize(
    ("method", "path", "run_id"),
    [
        ("GET", "/_asyncgate/runs/r5qyy8xi0yz18RAbB5Rjr8s/events", "r5qyy8xi0yz18RAbB5Rjr8s"),
        ("HEAD", "/_asyncgate/runs/r5qyy8xi0yz18RAbB5Rjr8s/events", None),  # starlette's route answers
        ("POST", "/_asyncgate/runs/r5qyy8xi0yz18RAbB5Rjr8s/events", None),  # starlette's 405
        ("GET", "/_asyncgate/runs//events", None),
        ("GET", "/_asyncgate/runs/a/b/events", None),
        ("GET", "/_asyncgate/runs/r5qyy8xi0yz18RAbB5Rjr8s", None),
        ("GET", "/_asyncgate/runs/r5qyy8xi0yz18RAbB5Rjr8s/events/", None),
        ("GET", "/elsewhere/runs/r5qyy8xi0yz18RAbB5Rjr8s/events", None),
    ],
)
def test_only_a_get_of_one_runs_events_skips_starlette(
    gateway: Gateway, method: str, path: str, run_id: str | None
) -> None:
    assert gateway.run_events.run_id({"type": "http", "method": method, "path": path}) == run_id
