"""The dashboard over HTTP: its files and their safety headers, and the counts it shows (GET /runs/counts)."""

from __future__ import annotations

import fnmatch
import functools
import tomllib
from pathlib import Path

import httpx
import pytest

from asyncgate import ui
from asyncgate.endpoints import COUNT_LIMIT
from tests.e2e.conftest import Gateway, GatewayFactory
from tests.e2e.test_access import ADMIN_TOKEN, HEADER_MODE, TENANT_A, TENANT_B, submit_as
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
STATES = ["queued", "running", "succeeded", "failed", "cancelled", "expired"]
#: The issue's budget for the first view, everything the page loads included.
FIRST_VIEW_BYTES = 100 * 1024


def counts(gateway: Gateway, headers: dict[str, str] | None = None) -> dict[str, object]:
    response = gateway.client.get(f"{gateway.prefix}/runs/counts", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    return body


def zero(**found: int) -> dict[str, int]:
    return {state: found.get(state, 0) for state in STATES}


def test_counts_are_by_state_and_only_of_the_callers_runs(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(HEADER_MODE)
    done = [submit_as(gateway, TENANT_A) for _ in range(3)]
    failed = submit_as(gateway, TENANT_A, "/status/500?async=true")
    held = submit_as(gateway, TENANT_A, "/sleep?seconds=60&async=true")
    theirs = submit_as(gateway, TENANT_B)

    def finished(run_id: str, caller: dict[str, str]) -> bool:
        return gateway.client.get(f"{gateway.prefix}/runs/{run_id}", headers=caller).json()["status"] in {
            "succeeded",
            "failed",
        }

    for run_id, caller in [*((r, TENANT_A) for r in (*done, failed)), (theirs, TENANT_B)]:
        wait_until(functools.partial(finished, run_id, caller))
    wait_until(lambda: counts(gateway, TENANT_A)["counts"] == zero(succeeded=3, failed=1, running=1))

    assert counts(gateway, TENANT_A) == {"counts": zero(succeeded=3, failed=1, running=1), "total": 5, "complete": True}
    assert counts(gateway, TENANT_B) == {"counts": zero(succeeded=1), "total": 1, "complete": True}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert counts(gateway, admin) == {"counts": zero(succeeded=4, failed=1, running=1), "total": 6, "complete": True}
    assert counts(gateway, {"Authorization": "Bearer nobody"}) == {"counts": zero(), "total": 0, "complete": True}

    assert gateway.client.delete(f"{gateway.prefix}/runs/{held}", headers=TENANT_A).status_code == 200
    assert counts(gateway, TENANT_A)["counts"] == zero(succeeded=3, failed=1, cancelled=1)
    anonymous = gateway.client.get(f"{gateway.prefix}/runs/counts")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "credentials_required"


def test_counts_page_through_more_runs_than_one_listing_page(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    run_ids = [gateway.client.post("/echo?async=true").json()["run_id"] for _ in range(230)]
    wait_until(lambda: counts(gateway)["counts"] == zero(succeeded=230), timeout=30)
    assert counts(gateway) == {"counts": zero(succeeded=230), "total": 230, "complete": True}
    assert len(set(run_ids)) == 230 < COUNT_LIMIT


def test_the_prefix_leads_to_the_dashboard(gateway: Gateway) -> None:
    for path in (gateway.prefix, f"{gateway.prefix}/", f"{gateway.prefix}/ui"):
        response = gateway.client.get(path, follow_redirects=True)
        assert response.status_code == 200, path
        assert str(response.url) == f"{gateway.url}{gateway.prefix}/ui/"
        assert response.headers["content-type"] == "text/html; charset=utf-8"


def test_every_file_carries_the_safety_headers_and_its_own_type(gateway: Gateway) -> None:
    expected = {
        "": "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "favicon.svg": "image/svg+xml",
    }
    for name, media_type in expected.items():
        response = gateway.client.get(f"{gateway.prefix}/ui/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        )
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-cache"
        again = gateway.client.get(f"{gateway.prefix}/ui/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert (again.status_code, again.content) == (304, b"")
        assert again.headers["content-security-policy"] == response.headers["content-security-policy"]


def test_only_the_dashboards_own_files_are_served(gateway: Gateway) -> None:
    for name in ("index.html", "app.py", "..%2Fui.py", "missing.js", "%2e%2e%2fapp.py"):
        response = gateway.client.get(f"{gateway.prefix}/ui/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "not_found"
        assert "text/html" not in response.headers["content-type"]
    assert gateway.client.post(f"{gateway.prefix}/ui/").status_code == 405


def test_the_page_has_no_inline_script_or_style() -> None:
    page = (ui.STATIC / "index.html").read_text()
    assert "<style" not in page and " style=" not in page
    assert page.count("<script") == 1 and '<script src="app.js" defer></script>' in page
    script = (ui.STATIC / "app.js").read_text()
    # Data is written as text; the script never parses markup.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


@pytest.mark.parametrize(
    ("settings", "meta"),
    [
        ({"access.mode": "header", "access.header": "X-Api-Key"}, ("/_asyncgate", "header", "X-Api-Key")),
        ({"server.prefix": "/gw/api"}, ("/gw/api", "open", "Authorization")),
    ],
)
def test_the_page_is_told_the_prefix_and_the_access_rule(
    make_gateway: GatewayFactory, settings: dict[str, str], meta: tuple[str, str, str]
) -> None:
    gateway = make_gateway(settings)
    page = gateway.client.get(f"{gateway.prefix}/ui/").text
    prefix, mode, header = meta
    assert f'<meta name="asyncgate-prefix" content="{prefix}">' in page
    assert f'<meta name="asyncgate-mode" content="{mode}">' in page
    assert f'<meta name="asyncgate-header" content="{header}">' in page
    assert "{{" not in page


def test_first_view_is_under_100_kib(gateway: Gateway) -> None:
    """Everything the list view loads, as sent on the wire (the browser test measures it too)."""
    client = httpx.Client(base_url=gateway.url, trust_env=False, headers={"Accept-Encoding": "identity"})
    with client:
        urls = [f"{gateway.prefix}/ui/{name}" for name in ("", "app.js", "app.css", "favicon.svg")]
        urls += [f"{gateway.prefix}/runs?limit=50", f"{gateway.prefix}/runs/counts"]
        total = sum(len(client.get(url).content) for url in urls)
    assert total < FIRST_VIEW_BYTES


def test_every_static_file_ships_in_the_package() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["asyncgate"]
    for path in ui.STATIC.iterdir():
        relative = path.relative_to(ui.STATIC.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
    assert {p.name for p in ui.STATIC.iterdir()} == {"index.html", *ui.ASSETS}
