"""The dashboard in a real headless Chromium, against a real gateway on both stores.

Screenshots of each view are kept (with what each shows, as JSON beside it) under
$ASYNCGATE_SCREENSHOTS/flows-<store> when that is set, else under pytest's temporary directory.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.alert import Alert
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from asyncgate.config import load
from tests.e2e.conftest import Gateway, Upstream
from tests.e2e.dashboard import (
    TOKEN_A,
    Site,
    list_loaded,
    screenshots_dir,
    serving,
    visit,
    wait_page,
)
from tests.support.browser import Browser, screenshot, structure
from tests.support.wait import wait_until

#: The issue's budgets: the first view's bytes on the wire, and rendering a list of 100 runs.
FIRST_VIEW_BYTES = 100 * 1024
RENDER_100_MS = 200


@pytest.fixture(scope="module", params=["embedded", "redis"])
def site(
    request: pytest.FixtureRequest, browser: Browser, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with serving(Site(request.param, upstream, request, tmp_path_factory.mktemp("data")), browser) as started:
        yield started


@pytest.fixture(scope="module")
def shots(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshots_dir(tmp_path_factory, f"flows-{site.store}")


def listed(site: Site, query: str = "", token: str = TOKEN_A) -> list[list[str]]:
    runs = site.api(f"/runs?limit=50{query}", token)["runs"]
    return [[run["run_id"], run["status"]] for run in runs]


def api_counts(site: Site, token: str = TOKEN_A) -> dict[str, str]:
    body = site.api("/runs/counts", token)
    return {"all": str(body["total"]), **{state: str(n) for state, n in body["counts"].items()}}


def test_sign_in_then_see_the_runs_newest_first_with_counts(browser: Browser, site: Site, shots: Path) -> None:
    for path in ("/echo/first?async=true", "/status/500?async=true", "/echo/third?async=true"):
        site.wait_final(site.submit(path))
    visit(browser, site, "/", token=None)
    wait_page(browser, "document.body.dataset.view === 'signin'")
    shown = screenshot(browser, shots, "sign-in")
    assert shown["heading"] == "Sign in to see your runs" and shown["rows"] == []

    field = browser.driver.find_element(By.ID, "token")
    assert browser.driver.switch_to.active_element == field
    field.send_keys(TOKEN_A, Keys.ENTER)
    list_loaded(browser)
    shown = screenshot(browser, shots, "list")
    assert shown["view"] == "list" and shown["heading"] == "Runs"
    assert shown["rows"] == listed(site)
    assert [status for _, status in shown["rows"][:3]] == ["succeeded", "failed", "succeeded"]
    assert shown["counts"] == api_counts(site)
    assert shown["buttons"] == {"sign-out": True, "refresh": True, "newer": False, "older": False}
    # The token is kept in the tab, and never put in a URL.
    assert browser.js("return sessionStorage.getItem('asyncgate.token')") == TOKEN_A
    urls = browser.js("return performance.getEntries().map((e) => e.name)")
    assert not [url for url in [browser.driver.current_url, *urls] if "tenant" in url]


def test_the_first_page_shows_new_runs_by_itself(browser: Browser, site: Site) -> None:
    visit(browser, site, "/", TOKEN_A)
    list_loaded(browser)
    browser.js("window.__samePage = true")
    run_id = site.submit("/echo/new?async=true")
    wait_page(browser, f"document.querySelector('#runs-body tr[data-run-id=\"{run_id}\"]')", timeout=12)
    assert browser.js("return window.__samePage") is True
    assert structure(browser)["rows"][0][0] == run_id


def test_filters_narrow_the_list(browser: Browser, site: Site, shots: Path) -> None:
    site.wait_final(site.submit("/status/404?async=true"))
    visit(browser, site, "/", TOKEN_A)
    list_loaded(browser)
    browser.driver.find_element(By.CSS_SELECTOR, '#counts [data-status="failed"]').click()
    list_loaded(browser)
    shown = screenshot(browser, shots, "list-failed")
    assert shown["rows"] == listed(site, "&status=failed") and len(shown["rows"]) >= 2
    assert browser.js("return location.hash") == "#/?status=failed"

    path = browser.driver.find_element(By.ID, "f-path")
    path.clear()
    path.send_keys("/status/404", Keys.ENTER)
    list_loaded(browser)
    shown = structure(browser)
    expected = [r for r in site.api("/runs?status=failed&limit=200")["runs"] if "/status/404" in r["path"]]
    assert shown["rows"] == [[r["run_id"], "failed"] for r in expected] and len(expected) >= 1

    # "Created before" pages from that time, "created after" stops there: the year 2000 is
    # before every run.
    visit(browser, site, "/?until=2000-01-01T00:00", TOKEN_A)
    list_loaded(browser)
    assert structure(browser)["rows"] == []
    visit(browser, site, "/?since=2000-01-01T00:00", TOKEN_A)
    list_loaded(browser)
    assert structure(browser)["rows"] == listed(site)
    visit(browser, site, "/?since=2100-01-01T00:00", TOKEN_A)
    list_loaded(browser)
    assert structure(browser)["rows"] == []


def test_a_run_is_watched_to_its_end_live(browser: Browser, site: Site, shots: Path, upstream: Upstream) -> None:
    hook = quote(f"{site.receiver.url}/live", safe="")
    gate = f"live-{site.store}"
    run_id = site.submit(f"/echo/slow?gate={gate}&async=true&webhookEndpoint={hook}")
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    wait_page(browser, "document.querySelector('#run-status')?.dataset.status === 'running'")
    browser.js("window.__samePage = true")
    shown = screenshot(browser, shots, "run-running")
    assert shown["view"] == "run" and shown["live"] == "open"
    assert shown["buttons"] == {"sign-out": True, "cancel": True, "redeliver": False, "copy-curl": True}
    assert shown["events"] == ["queued", "running"]

    assert httpx.post(f"{upstream.url}/gates/{gate}").status_code == 204
    wait_page(browser, "document.querySelector('#result-body') && document.body.dataset.live === 'closed'")
    assert browser.js("return window.__samePage") is True, "the page reloaded instead of updating live"
    shown = screenshot(browser, shots, "run-succeeded")
    final = site.api(f"/runs/{run_id}")
    assert shown["status"] == final["status"] == "succeeded"
    assert shown["events"][:3] == ["queued", "running", "succeeded"]
    assert set(shown["events"][3:]) == {"webhook"} and shown["webhook"] == final["webhook"]["state"] == "delivered"
    assert shown["deliveries"][-1] == "delivered"
    assert shown["result"] == "json"
    assert shown["buttons"] == {"sign-out": True, "cancel": False, "redeliver": True, "copy-curl": True}
    text = browser.driver.find_element(By.ID, "result-body").text
    assert '"path": "/echo/slow"' in text
    details = {key: browser.driver.find_element(By.ID, f"d-{key}").text for key in ("method", "path", "attempt")}
    assert details == {"method": "POST", "path": "/echo/slow", "attempt": "1"}
    assert browser.driver.find_element(By.ID, "d-upstream").text == "200"


def test_a_run_asking_only_for_lifecycle_webhooks_settles_with_no_delivery(browser: Browser, site: Site) -> None:
    hook = quote(f"{site.receiver.url}/lifecycle", safe="")
    run_id = site.submit(f"/echo/lifecycle?async=true&webhookEndpoint={hook}&webhookEvents=start")
    assert site.wait_final(run_id)["webhook"]["state"] is None
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    # The page stops following the run: no delivery at its end is left to wait for.
    wait_page(browser, "document.querySelector('#result-body') && document.body.dataset.live === 'closed'")
    assert browser.driver.find_element(By.ID, "webhook").get_attribute("data-state") == "none"
    assert browser.driver.find_element(By.ID, "w-events").text == "start"
    assert browser.js("return document.querySelector('#redeliver').disabled") is True


def test_cancel_a_running_run_from_its_page(browser: Browser, site: Site, shots: Path) -> None:
    run_id = site.submit("/sleep?seconds=60&async=true")
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    wait_page(browser, "document.querySelector('#run-status')?.dataset.status === 'running'")
    browser.driver.find_element(By.ID, "cancel").click()
    wait_page(browser, "document.querySelector('#run-status')?.dataset.status === 'cancelled'")
    wait_page(browser, "document.querySelector('#result-none')")
    shown = screenshot(browser, shots, "run-cancelled")
    assert site.api(f"/runs/{run_id}")["status"] == "cancelled"
    assert shown["events"][-1] == "cancelled" and shown["result"] == "none"
    assert shown["buttons"]["cancel"] is False
    assert browser.driver.find_element(By.ID, "toast").text == "The run is cancelled."
    assert browser.driver.find_element(By.ID, "d-error").text == "cancelled: cancelled by a client while running"


def test_redeliver_a_webhook_from_its_page(browser: Browser, site: Site, shots: Path) -> None:
    hook = quote(f"{site.receiver.url}/again", safe="")
    run_id = site.submit(f"/echo?async=true&webhookEndpoint={hook}")
    wait_until(lambda: site.api(f"/runs/{run_id}")["webhook"]["state"] == "delivered")
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    wait_page(
        browser,
        "document.querySelector('#webhook')?.dataset.state === 'delivered' && document.body.dataset.live === 'closed'",
    )
    assert structure(browser)["deliveries"].count("delivered") == 1
    browser.driver.find_element(By.ID, "redeliver").click()
    # The URL left the gateway with the final delivery: the page asks for it again.
    prompt = wait_until(lambda: _alert(browser), message="the page asks for the URL")
    prompt.send_keys(f"{site.receiver.url}/again")
    prompt.accept()
    wait_until(lambda: len(site.receiver.deliveries.for_run(run_id)) == 2, message="the second delivery")
    delivered = "[...document.querySelectorAll('#webhook-history tr')].filter((r) => r.dataset.state === 'delivered')"
    wait_page(browser, f"{delivered}.length === 2")
    shown = screenshot(browser, shots, "run-redelivered")
    assert shown["webhook"] == "delivered" and shown["deliveries"][-1] == "delivered"
    deliveries = site.receiver.deliveries.for_run(run_id)
    assert deliveries[0]["headers"]["webhook-id"] == deliveries[1]["headers"]["webhook-id"] == f"msg_{run_id}"
    assert site.api(f"/runs/{run_id}")["webhook"]["attempts"] >= 1


def _alert(browser: Browser) -> Alert | None:
    try:
        return browser.driver.switch_to.alert
    except NoAlertPresentException:
        return None


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x3b\x5b\xdb" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_an_image_result_is_shown_as_an_image(browser: Browser, site: Site, shots: Path) -> None:
    run_id = site.submit("/mirror?async=true", body=png(48, 32), **{"Content-Type": "image/png"})
    site.wait_final(run_id)
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    size = wait_page(
        browser, "(i => i && i.complete && [i.naturalWidth, i.naturalHeight])(document.querySelector('#result-image'))"
    )
    assert size == [48, 32]
    shown = screenshot(browser, shots, "run-image")
    assert shown["result"] == "image"
    assert browser.js("return document.querySelector('#result-image').src").startswith("blob:")
    assert browser.driver.find_element(By.ID, "result-type").text == "image/png"


def test_the_copied_curl_fetches_the_result_without_holding_the_token(browser: Browser, site: Site) -> None:
    run_id = site.submit("/echo/curl?async=true")
    site.wait_final(run_id)
    browser.driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": site.gw.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    visit(browser, site, f"/runs/{run_id}", TOKEN_A)
    wait_page(browser, "document.querySelector('#result-body')")
    browser.driver.find_element(By.ID, "copy-curl").click()
    wait_page(browser, "document.querySelector('#toast').textContent.startsWith('Copied')")
    copied = browser.driver.execute_async_script("navigator.clipboard.readText().then(arguments[0])")
    command = browser.driver.find_element(By.ID, "curl").text
    assert copied == command
    assert command == f"curl -sS -H \"Authorization: $ASYNCGATE_TOKEN\" '{site.gw.url}/_asyncgate/runs/{run_id}/result'"
    done = subprocess.run(
        ["bash", "-c", command],
        env={"ASYNCGATE_TOKEN": TOKEN_A, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    expected = site.gw.client.get(f"/_asyncgate/runs/{run_id}/result", headers={"Authorization": TOKEN_A})
    assert done.stdout == expected.content and b"/echo/curl" in done.stdout


def test_first_view_is_light_and_a_list_of_100_runs_renders_fast(browser: Browser, site: Site, shots: Path) -> None:
    visit(browser, site, "/", TOKEN_A)
    list_loaded(browser)
    sizes = browser.js(
        "return performance.getEntries().filter((e) => 'transferSize' in e).map((e) => [e.name, e.transferSize])"
    )
    assert sum(size for _, size in sizes) < FIRST_VIEW_BYTES, sizes
    assert {name.rsplit("/", 1)[-1].split("?")[0] for name, _ in sizes} >= {"", "app.js", "app.css", "runs", "counts"}

    have = len(site.api("/runs?limit=200")["runs"])
    for _ in range(max(0, 100 - have)):
        site.submit("/echo/many?async=true", body=b"")
    wait_until(
        lambda: site.api("/runs/counts")["counts"]["queued"] + site.api("/runs/counts")["counts"]["running"] == 0, 30
    )
    visit(browser, site, "/?limit=100", TOKEN_A)
    list_loaded(browser)
    shown = screenshot(browser, shots, "list-100")
    assert len(shown["rows"]) == 100
    render_ms = browser.js("return performance.getEntriesByName('asyncgate:list-render').map((e) => e.duration).pop()")
    assert render_ms < RENDER_100_MS, render_ms
    assert shown["rows"] == [[r["run_id"], r["status"]] for r in site.api("/runs?limit=100")["runs"]]
    assert shown["buttons"]["older"] is (site.api("/runs?limit=100")["next_cursor"] is not None)


def test_the_list_and_a_run_are_usable_with_the_keyboard(browser: Browser, site: Site) -> None:
    site.wait_final(site.submit("/echo/keys?async=true"))
    visit(browser, site, "/", TOKEN_A)
    list_loaded(browser)
    body = browser.driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert browser.js("return document.activeElement.className") == "skip"
    reached = None
    for _ in range(40):
        active = browser.driver.switch_to.active_element
        assert browser.js("return getComputedStyle(document.activeElement).outlineStyle") != "none", browser.js(
            "return document.activeElement.outerHTML"
        )
        if active.tag_name == "a" and (active.get_attribute("href") or "").split("#", 1)[-1].startswith("/runs/"):
            reached = active.text
            break
        active.send_keys(Keys.TAB)
    assert reached, "Tab never reached a run"
    browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_page(browser, "document.body.dataset.view === 'run'")
    assert browser.js("return document.activeElement.tagName") == "H1"
    assert reached in browser.driver.find_element(By.TAG_NAME, "h1").text
    # Every control of the run page is a real, labelled button or link.
    labels = browser.js("return [...document.querySelectorAll('main button')].map((b) => b.textContent.trim())")
    assert labels == ["Cancel run", "Redeliver webhook", "Copy curl"]


def test_open_access_shows_the_runs_without_a_token(
    browser: Browser, site: Site, upstream: Upstream, tmp_path: Path, shots: Path
) -> None:
    store = site.config.store
    where: dict[str, Any] = {"store.data_dir": str(tmp_path / "data")}
    if store.redis_url:
        where = {
            "store.redis_url": store.redis_url,
            "store.key_prefix": f"{store.key_prefix}open",
            "store.encryption_key": [str(key) for key in store.encryption_key],
        }
    settings = {"upstream": upstream.url, "runs.poll_interval": 0.2, "access.mode": "open", **where}
    gateway = Gateway(load(None, environ={}, overrides={**settings, "shutdown.drain_timeout": 2}))
    try:
        run_id = gateway.client.post("/echo/open?async=true").json()["run_id"]
        gateway.wait_final(run_id)
        browser.driver.get(f"{gateway.url}/_asyncgate/ui/")
        list_loaded(browser)
        shown = screenshot(browser, shots, "list-open-access")
        assert shown["rows"] == [[run_id, "succeeded"]]
        assert browser.driver.find_element(By.ID, "session").text == "Open access"
        assert browser.js("return sessionStorage.getItem('asyncgate.token')") is None
    finally:
        browser.driver.get("about:blank")
        gateway.stop()
