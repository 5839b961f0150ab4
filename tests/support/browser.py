"""A real headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, nothing downloaded."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1360,900",
)

#: Runs in every page before its own scripts: counts policy violations, so a test can assert
#: that nothing hostile even tried to run (a payload the policy blocked still counts).
WATCH_PAGE = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push([e.violatedDirective, e.blockedURI, e.sample].join(" "));
});
"""


def require_browser() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/install installs them)")


class Browser:
    """One Chromium with a fresh profile; ``quit`` removes the profile."""

    def __init__(self) -> None:
        require_browser()
        self.profile = tempfile.mkdtemp(prefix="asyncgate-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        # An explicit driver path makes Selenium skip Selenium Manager (which could download).
        service = Service(executable_path=str(CHROMEDRIVER))
        previous = os.environ.get("SE_OFFLINE")
        os.environ["SE_OFFLINE"] = "true"
        try:
            self.driver = webdriver.Chrome(options=options, service=service)
        finally:
            if previous is None:
                os.environ.pop("SE_OFFLINE", None)
            else:
                os.environ["SE_OFFLINE"] = previous
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_PAGE})

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


#: What a view shows, read from the page: the structure screenshots are compared by.
STRUCTURE = """
const q = (s) => document.querySelector(s);
const all = (s) => [...document.querySelectorAll(s)];
return {
  view: document.body.dataset.view || null,
  heading: q("main h1") ? q("main h1").textContent.trim() : null,
  buttons: Object.fromEntries(all("main button[id], header button[id]").map((b) => [b.id, !b.disabled])),
  rows: all("#runs-body tr[data-run-id]").map((r) => [r.dataset.runId, r.dataset.status]),
  counts: Object.fromEntries(
    all("#counts .chip").map((c) => [c.dataset.status, c.querySelector(".chip-count").textContent])
  ),
  status: q("#run-status") ? q("#run-status").dataset.status || null : null,
  events: all("#timeline li").map((li) => li.dataset.event),
  webhook: q("#webhook") ? q("#webhook").dataset.state || null : null,
  deliveries: all("#webhook-history tr").map((r) => r.dataset.state),
  result: q("#result-body") ? q("#result-body").dataset.kind : q("#result-image") ? "image"
    : q("#result-svg") ? "svg" : q("#result-none") ? "none" : null,
  live: document.body.dataset.live || null,
  error: q("#run-error") && !q("#run-error").hidden ? q("#run-error").textContent : null,
};
"""


def structure(browser: Browser) -> dict[str, Any]:
    found: dict[str, Any] = browser.js(STRUCTURE)
    return found


def screenshot(browser: Browser, directory: Path, name: str) -> dict[str, Any]:
    """Save the whole page as ``name``.png, and what it shows as ``name``.json beside it; return the latter."""
    driver = browser.driver
    size = driver.get_window_size()
    width, height = size["width"], size["height"]
    page_height = int(browser.js("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, max(height, page_height + 140))
    try:
        png = driver.get_screenshot_as_png()
    finally:
        driver.set_window_size(width, height)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    (directory / f"{name}.png").write_bytes(png)
    shown = structure(browser)
    (directory / f"{name}.json").write_text(json.dumps(shown, indent=2))
    return shown
