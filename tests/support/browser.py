"""A real headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, nothing downloaded."""

from __future__ import annotations

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
