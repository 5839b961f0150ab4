"""The runs dashboard: static pages under ``{prefix}/ui/`` that read and act only through the API.

The pages hold no data of their own: the browser calls the same endpoints as any client, with
the caller's credentials, so the dashboard follows the API's access rules by construction.
Results, paths and messages are written by callers and upstreams; the pages render them as
text (the script never parses HTML from data), and every response carries a policy that would
refuse to run anything that slipped through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from asyncgate.config import Config
from asyncgate.errors import NotFound
from asyncgate.headers import CACHE_CONTROL

STATIC = Path(__file__).parent / "static"

#: No inline script or style, nothing from elsewhere; images also from blob: (result previews)
#: and data: (none yet, but harmless: an image cannot run script).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (cheap with the ETag), so an upgraded gateway serves its own script.
    CACHE_CONTROL: "no-cache",
}
#: The files the dashboard is made of, and their media types; nothing else is served.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclasses.dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'


def _page(config: Config) -> Asset:
    """index.html with what the script must know about this gateway, escaped into meta tags."""
    settings = {
        "prefix": config.server.prefix,
        "mode": config.access.mode,
        "header": config.access.header,
    }
    text = (STATIC / "index.html").read_text()
    for name, value in settings.items():
        text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
    return Asset(text.encode(), "text/html; charset=utf-8")


def load_assets(config: Config) -> dict[str, Asset]:
    """Every file of the dashboard, read once when the app is built."""
    assets = {name: Asset((STATIC / name).read_bytes(), media_type) for name, media_type in ASSETS.items()}
    assets[""] = _page(config)
    return assets


def _respond(request: Request, asset: Asset) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def routes(config: Config) -> list[BaseRoute]:
    """``{prefix}/`` leads to the dashboard; ``{prefix}/ui/`` is the page and its files."""
    assets = load_assets(config)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params.get("name", ""))
        if found is None:
            raise NotFound("no such file in the dashboard", code="not_found")
        return _respond(request, found)

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{config.server.prefix}/ui/", status_code=307, headers=SECURITY_HEADERS)

    return [
        Route("/", home, methods=["GET"]),
        Mount("/ui", routes=[Route("/", asset, methods=["GET"]), Route("/{name}", asset, methods=["GET"])]),
    ]
