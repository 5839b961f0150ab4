"""What the dashboard's browser tests share: a gateway with callers, and moving about the page."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncgate.config import load
from tests.e2e.conftest import Gateway, Receiver, Upstream
from tests.support.browser import Browser
from tests.support.sealing import ENCRYPTION_KEY
from tests.support.wait import wait_until

TOKEN_A = "Bearer tenant-a-token"
TOKEN_B = "Bearer tenant-b-token"
ADMIN = "Bearer dashboard-admin-0123456789"
FINAL = {"succeeded", "failed", "cancelled"}


def screenshots_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """Where screenshots go: $ASYNCGATE_SCREENSHOTS/<name> when set, else a pytest temporary directory."""
    root = os.environ.get("ASYNCGATE_SCREENSHOTS")
    if not root:
        return tmp_path_factory.mktemp(f"screenshots-{name}")
    directory = Path(root) / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Site:
    """A gateway in access.mode header (two callers and an admin), a webhook receiver, and its dashboard."""

    def __init__(self, store: str, upstream: Upstream, request: pytest.FixtureRequest, data_dir: Path) -> None:
        self.store = store
        self.receiver = Receiver()
        settings: dict[str, Any] = {
            "upstream": upstream.url,
            "runs.poll_interval": 0.2,
            "shutdown.drain_timeout": 2,
            "access.mode": "header",
            "access.admin_token": ADMIN.removeprefix("Bearer "),
            "webhooks.allow": ["127.0.0.0/8"],
        }
        if store == "redis":
            settings["store.redis_url"] = request.getfixturevalue("redis_server").url
            settings["store.key_prefix"] = f"ui{uuid.uuid4().hex[:10]}"
            settings["store.encryption_key"] = [ENCRYPTION_KEY]
        else:
            settings["store.data_dir"] = str(data_dir)
        self.config = load(None, environ={}, overrides=settings)
        self.gateway: Gateway | None = None

    def start(self) -> Site:
        self.gateway = Gateway(self.config)
        return self

    @property
    def gw(self) -> Gateway:
        assert self.gateway is not None
        return self.gateway

    @property
    def ui(self) -> str:
        return f"{self.gw.url}{self.gw.prefix}/ui/"

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.receiver.server.stop()

    def submit(self, path: str, token: str = TOKEN_A, body: bytes = b'{"x": 1}', **headers: str) -> str:
        response = self.gw.client.post(path, content=body, headers={"Authorization": token, **headers})
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    def api(self, path: str, token: str = TOKEN_A) -> Any:
        response = self.gw.client.get(f"{self.gw.prefix}{path}", headers={"Authorization": token})
        assert response.status_code == 200, response.text
        return response.json()

    def wait_final(self, run_id: str, token: str = TOKEN_A) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            lambda: (r := self.api(f"/runs/{run_id}", token))["status"] in FINAL and r, 15, message=run_id
        )
        return found


@contextlib.contextmanager
def serving(site: Site, browser: Browser) -> Iterator[Site]:
    """``site`` started, then stopped once ``browser`` has left it."""
    site.start()
    try:
        yield site
    finally:
        browser.driver.get("about:blank")  # closes any event stream the page holds
        site.stop()


def visit(browser: Browser, site: Site, fragment: str = "/", token: str | None = None) -> None:
    """Load the dashboard afresh at ``#fragment``, signed in with ``token`` (in this tab's sessionStorage)."""
    driver = browser.driver
    driver.get(site.ui)
    if token is None:
        browser.js("sessionStorage.clear()")
    else:
        browser.js("sessionStorage.setItem('asyncgate.token', arguments[0])", token)
    driver.get("about:blank")
    driver.get(f"{site.ui}#{fragment}")


def wait_page(browser: Browser, script: str, timeout: float = 10, message: str = "") -> Any:
    """Wait until ``script`` (a JS expression) is truthy in the page; return its value."""
    return wait_until(lambda: browser.js(f"return {script}"), timeout, interval=0.05, message=message or script)


def list_loaded(browser: Browser) -> None:
    wait_page(browser, "document.body.dataset.loaded === 'list'")
