"""Hostile content in the dashboard runs nothing, and one caller never sees another's runs.

Every payload, if it ever ran, would set ``window.__pwned``; the page also records every
Content-Security-Policy violation from its first script on, so a payload the policy blocked
(rather than one written as text) fails the test too. Screenshots go to
$ASYNCGATE_SCREENSHOTS/hostile-<store> when that is set, else to pytest's temporary directory.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from asyncgate.config import Config
from asyncgate.principal import Access
from asyncgate.runs import (
    Delivery,
    DeliveryState,
    Outcome,
    Run,
    RunError,
    RunRequest,
    RunResult,
    RunState,
    new_run_id,
    now,
)
from asyncgate.store.factory import build_store
from asyncgate.ui import CONTENT_SECURITY_POLICY
from tests.e2e.conftest import Upstream
from tests.e2e.dashboard import ADMIN, TOKEN_A, TOKEN_B, Site, list_loaded, screenshots_dir, serving, visit, wait_page
from tests.support.browser import Browser, screenshot, structure

MARKUP = (
    '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
    '<a href="javascript:window.__pwned=3">click</a><iframe src="javascript:window.__pwned=4"></iframe>'
    "<style>body{display:none}</style>"
)
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned=6">'
    '<script>window.__pwned=7</script><circle r="9"/></svg>'
)
#: (name, content type, body): results the upstream gives back as they were sent (/mirror).
RESULTS = [
    ("html", "text/html", MARKUP),
    ("html-as-text", "text/plain", MARKUP),
    ("json", "application/json", json.dumps({"html": MARKUP, "link": "javascript:window.__pwned=5"})),
    ("svg", "image/svg+xml", SVG),
    ("html-as-png", "image/png", MARKUP),
    ("xhtml", "application/xhtml+xml", f'<html xmlns="http://www.w3.org/1999/xhtml">{MARKUP}</html>'),
    ("hostile-type", 'text/plain; charset="><img src=x onerror=window.__pwned=8>"', MARKUP),
]
#: Request targets sent raw on the socket, so that the run's path holds them as they are.
PATHS = [
    "/echo/<img/src=x/onerror=window.__pwned=9>",
    '/echo/"><svg/onload=window.__pwned=10>',
    "/echo/javascript:window.__pwned=11",
]
#: A finished run written straight into the store: what no upstream can make the gateway write.
SEEDED_PATH = "/seeded/<script>window.__pwned=12</script>"
SEEDED_ERROR = '<img src=x onerror="window.__pwned=13">'
SEEDED_WEBHOOK = "https://hooks.example/<svg onload=window.__pwned=14>?token=secret"
SEEDED_DELIVERY_ERROR = "<script>window.__pwned=15</script>"

#: Nothing in the page that could run, or show markup from data.
INVARIANTS = """
const all = [...document.querySelectorAll("*")];
return {
  pwned: window.__pwned === undefined ? null : String(window.__pwned),
  violations: window.__violations,
  handlers: all.filter((n) => [...n.attributes].some((a) => a.name.startsWith("on"))).map((n) => n.tagName),
  scripts: [...document.scripts].map((s) => s.getAttribute("src")),
  frames: document.querySelectorAll("iframe, object, embed, frame, svg, style, base, form[action]").length,
  javascriptLinks: document.querySelectorAll("a[href^='javascript' i]").length,
  images: [...document.images].map((i) => i.src.split(":")[0]),
};
"""


def seed_hostile_run(config: Config) -> str:
    """Write a finished run with a hostile path, error, result, webhook URL and delivery error."""

    async def seed() -> str:
        store = build_store(config)
        await store.open()
        try:
            caller = Access(config.access).fingerprint(TOKEN_A.encode())
            request = RunRequest("POST", SEEDED_PATH, "", (), SEEDED_WEBHOOK, 30.0)
            run = Run(new_run_id(), RunState.QUEUED, request, created_at=now(), caller=caller)
            await store.create(run, b"")
            (claimed,) = await store.claim("seeder", 1, 1.0, 30.0)
            result = RunResult(500, (("content-type", "text/html"),), MARKUP.encode())
            outcome = Outcome(RunState.FAILED, result=result, error=RunError("upstream_error", SEEDED_ERROR))
            assert await store.finish(run.run_id, claimed.attempt, outcome, 3600)
            (due,) = await store.due_deliveries(1, 30.0)
            delivery = Delivery(DeliveryState.FAILED, attempts=1, last_status=500, last_error=SEEDED_DELIVERY_ERROR)
            assert await store.record_delivery(run.run_id, due.token, delivery, 3600)
            return run.run_id
        finally:
            await store.close()

    return asyncio.run(seed())


def submit_raw(site: Site, target: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", site.gw.server.port, timeout=10)
    try:
        connection.request("POST", f"{target}?async=true", body=b"x", headers={"Authorization": TOKEN_A})
        response = connection.getresponse()
        assert response.status == 202
        return str(json.loads(response.read())["run_id"])
    finally:
        connection.close()


class Hostile:
    def __init__(self, site: Site, seeded: str) -> None:
        self.site = site
        self.seeded = seeded
        self.results = {
            name: site.submit("/mirror?async=true", body=body.encode(), **{"Content-Type": ctype})
            for name, ctype, body in RESULTS
        }
        self.paths = {target: submit_raw(site, target) for target in PATHS}
        for run_id in [*self.results.values(), *self.paths.values()]:
            site.wait_final(run_id)


@pytest.fixture(scope="module", params=["embedded", "redis"])
def hostile(
    request: pytest.FixtureRequest, browser: Browser, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hostile]:
    site = Site(request.param, upstream, request, tmp_path_factory.mktemp("data"))
    seeded = seed_hostile_run(site.config)
    with serving(site, browser):
        yield Hostile(site, seeded)


@pytest.fixture(scope="module")
def shots(hostile: Hostile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshots_dir(tmp_path_factory, f"hostile-{hostile.site.store}")


def assert_nothing_ran(browser: Browser) -> None:
    found = browser.js(INVARIANTS)
    assert found["pwned"] is None
    assert found["violations"] == []
    assert found["handlers"] == [] and found["frames"] == 0 and found["javascriptLinks"] == 0
    assert found["scripts"] == ["app.js"]
    assert set(found["images"]) <= {"blob"}


def open_run(browser: Browser, site: Site, run_id: str) -> dict[str, object]:
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    wait_page(browser, "document.querySelector('#result > :not(.muted)') || document.querySelector('#result-none')")
    wait_page(browser, "document.body.dataset.live === 'closed'")
    return structure(browser)


@pytest.mark.parametrize(("name", "content_type", "body"), RESULTS, ids=[name for name, _, _ in RESULTS])
def test_a_hostile_result_is_shown_as_text_or_not_at_all(
    browser: Browser, hostile: Hostile, shots: Path, name: str, content_type: str, body: str
) -> None:
    shown = open_run(browser, hostile.site, hostile.results[name])
    screenshot(browser, shots, f"result-{name}")
    assert_nothing_ran(browser)
    # Starlette adds a charset to text types that have none.
    assert browser.driver.find_element(By.ID, "result-type").text in (content_type, f"{content_type}; charset=utf-8")
    if name == "svg":
        assert shown["result"] == "svg"  # not previewed at all: offered as a download
        assert browser.js("return document.images.length") == 0
    elif name == "html-as-png":
        assert shown["result"] == "image"  # an <img> from a blob, which cannot run anything
        assert browser.js("return document.querySelector('#result-image').src").startswith("blob:")
    elif name == "json":
        assert shown["result"] == "json"
        assert json.loads(browser.driver.find_element(By.ID, "result-body").text) == json.loads(body)
    else:
        assert shown["result"] == "text"
        assert MARKUP in browser.driver.find_element(By.ID, "result-body").text
    download = browser.driver.find_element(By.ID, "result-download")
    assert (download.get_attribute("href") or "").startswith("blob:")


def test_hostile_paths_are_shown_as_text(browser: Browser, hostile: Hostile, shots: Path) -> None:
    for index, (target, run_id) in enumerate(hostile.paths.items()):
        open_run(browser, hostile.site, run_id)
        assert browser.driver.find_element(By.ID, "d-path").text == target
        assert_nothing_ran(browser)
        screenshot(browser, shots, f"path-{index}")
    visit(browser, hostile.site, "/?limit=200", TOKEN_A)
    list_loaded(browser)
    screenshot(browser, shots, "list")
    paths = browser.js("return [...document.querySelectorAll('#runs-body td.path')].map((td) => td.textContent)")
    assert set(PATHS) | {SEEDED_PATH} <= set(paths)
    assert_nothing_ran(browser)


def test_hostile_errors_and_webhook_details_are_shown_as_text(browser: Browser, hostile: Hostile, shots: Path) -> None:
    shown = open_run(browser, hostile.site, hostile.seeded)
    wait_page(browser, "document.querySelectorAll('#timeline li').length >= 4")
    screenshot(browser, shots, "seeded")
    assert_nothing_ran(browser)

    def text(element_id: str) -> str:
        return browser.driver.find_element(By.ID, element_id).text

    assert text("d-path") == SEEDED_PATH
    assert text("d-error") == f"upstream_error: {SEEDED_ERROR}"
    assert text("w-url") == "https://hooks.example/<svg onload=window.__pwned=14>?token=***"
    assert text("w-last-error") == SEEDED_DELIVERY_ERROR
    assert shown["status"] == "failed" and shown["result"] == "text" and shown["webhook"] == "failed"
    timeline = browser.js("return [...document.querySelectorAll('#timeline li')].map((li) => li.textContent)")
    assert any(SEEDED_ERROR in line for line in timeline) and any(SEEDED_DELIVERY_ERROR in line for line in timeline)
    assert "secret" not in browser.js("return document.body.textContent")


def test_the_policy_is_sent_and_enforced(browser: Browser, hostile: Hostile) -> None:
    site = hostile.site
    response = site.gw.client.get(f"{site.gw.prefix}/ui/")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    visit(browser, site, "/", TOKEN_A)
    list_loaded(browser)
    # Were markup ever injected, the policy would still refuse to run it, and report it.
    browser.js(
        "const s = document.createElement('script'); s.textContent = 'window.__pwned = 99'; document.body.append(s);"
        "const i = document.createElement('img'); i.setAttribute('src', 'x');"
        "i.setAttribute('onerror', 'window.__pwned = 98'); document.body.append(i);"
    )
    wait_page(browser, "window.__violations.length >= 2")
    assert browser.js("return window.__pwned") is None
    assert all(v.startswith("script-src") for v in browser.js("return window.__violations"))


def test_a_second_caller_sees_none_of_the_first_callers_runs(browser: Browser, hostile: Hostile, shots: Path) -> None:
    site = hostile.site
    theirs = [hostile.seeded, *hostile.results.values(), *hostile.paths.values()]
    mine = site.submit("/echo/mine?async=true", token=TOKEN_B)
    site.wait_final(mine, TOKEN_B)
    visit(browser, site, "/?limit=200", TOKEN_B)
    list_loaded(browser)
    shown = screenshot(browser, shots, "second-caller-list")
    assert shown["rows"] == [[mine, "succeeded"]]
    assert shown["counts"] == {
        "all": "1",
        "queued": "0",
        "running": "0",
        "succeeded": "1",
        "failed": "0",
        "cancelled": "0",
        "expired": "0",
    }

    visit(browser, site, f"/runs/{theirs[0]}", TOKEN_B)
    wait_page(browser, "document.querySelector('#run-error') && !document.querySelector('#run-error').hidden")
    shown = screenshot(browser, shots, "second-caller-their-run")
    assert shown["error"] == "No run with this id, or not one of yours."
    assert shown["status"] is None and shown["events"] == [] and shown["result"] is None
    page = browser.js("return document.body.textContent")
    assert SEEDED_PATH not in page and "upstream_error" not in page

    visit(browser, site, "/?limit=200", ADMIN)
    list_loaded(browser)
    listed = {run_id for run_id, _ in structure(browser)["rows"]}
    assert {*theirs, mine} <= listed
