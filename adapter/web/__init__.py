"""The status pages: static HTML, CSS and JavaScript (no build step, nothing from a CDN)
served at `/` by the adapter's local API (`kind="adapter"`) and by the sandbox platform
(`kind="sandbox"`).

Only the files listed by `assets()` are served, at fixed paths: `/` and `/ui/<name>`.

The token rule (see docs/status-page.md). The adapter's API answers 401 to any request
without `Authorization: Bearer <ADAPTER_HTTP_TOKEN>` when a token is set, and these files
are routes of the same application, so they are behind the same check: without the token
the page is not served either. A browser cannot put a header on a page load, so the login
form of the 401 answer keeps the token in sessionStorage (for the API calls) and in a
session cookie; for GET and HEAD of these files only, a request that carries the cookie
and no `Authorization` header is passed on with `Authorization: Bearer <cookie>`, and the
application's own check then accepts or refuses it as usual. The API itself never takes
the cookie, so another site cannot make a browser use it there.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from aiohttp import hdrs, web
from multidict import CIMultiDict

HERE = Path(__file__).parent
KINDS = ("adapter", "sandbox")
PREFIX = "/ui/"
TOKEN_COOKIE = "sepl_adapter_token"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate, so an upgrade's files show at once
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Asset:
    path: Path

    @property
    def is_page(self) -> bool:
        return self.path.suffix == ".html"

    def response(self) -> web.Response:
        headers = {**_COMMON_HEADERS, "Content-Type": _TYPES[self.path.suffix]}
        if self.is_page:
            headers["Content-Security-Policy"] = _PAGE_POLICY
        return web.Response(body=self.path.read_bytes(), headers=headers)

    async def handle(self, request: web.Request) -> web.Response:
        return self.response()


def assets(kind: str) -> dict[str, Asset]:
    """URL path -> file for one page: its `index.html` at `/`, then its own files and the
    shared ones under `/ui/`. Nothing else in the package is reachable."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    table = {"/": Asset(HERE / kind / "index.html")}
    for folder in (HERE / kind, HERE / "shared"):
        for file in sorted(folder.iterdir()):
            if file.suffix in _TYPES and file.name != "index.html":
                path = PREFIX + file.name
                if path in table:
                    raise RuntimeError(f"{file} and {table[path].path} share the name {path}")
                table[path] = Asset(file)
    return table


def _inline_hash(html: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    if match is None:
        raise RuntimeError(f"login.html has no <{tag}>")
    digest = hashlib.sha256(match.group(1).encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _login_response(rejected: bool) -> web.Response:
    """The 401 answer to a page load without the token: a form asking for it, and nothing
    else (its style and script are inline, as the other files need the token too)."""
    html = (HERE / "login.html").read_text(encoding="utf-8")
    if rejected:
        html = html.replace('data-rejected="false"', 'data-rejected="true"', 1)
    policy = (
        f"default-src 'none'; script-src {_inline_hash(html, 'script')}; "
        f"style-src {_inline_hash(html, 'style')}; img-src data:; connect-src 'self'; "
        "form-action 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return web.Response(
        status=401,
        text=html,
        content_type="text/html",
        headers={
            **_COMMON_HEADERS,
            "Cache-Control": "no-store",
            "Content-Security-Policy": policy,
            "WWW-Authenticate": 'Bearer realm="sepl-adapter"',
        },
    )


def _with_cookie_token(request: web.Request) -> tuple[web.Request, bool]:
    """The request with the token of the cookie as its bearer header, when it has no
    header of its own; and whether a cookie token was used."""
    cookie = request.cookies.get(TOKEN_COOKIE)
    if not cookie or hdrs.AUTHORIZATION in request.headers:
        return request, False
    headers = CIMultiDict(request.headers)
    headers[hdrs.AUTHORIZATION] = f"Bearer {unquote(cookie)}"
    return request.clone(headers=headers), True


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def add_status_page(app: web.Application, kind: str) -> None:
    """Serve the `kind` status page ("adapter" or "sandbox") from `app`.

    Call before the application starts. Adds GET (and HEAD) routes for the files, and a
    middleware in front of the others: it passes the cookie token on (see the module
    docstring), answers a refused page load with the login form, and, when `/` is already
    a route (the sandbox's websocket connector), serves the page at `/` to requests that
    are not websocket upgrades.
    """
    table = assets(kind)
    root_taken = any(resource.canonical == "/" for resource in app.router.resources())
    for path, asset in table.items():
        if path == "/" and root_taken:
            continue
        app.router.add_get(path, asset.handle)

    @web.middleware
    async def status_page(request: web.Request, handler: Handler) -> web.StreamResponse:
        asset = table.get(request.path)
        if asset is None or request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return await handler(request)
        if root_taken and request.path == "/":
            if _is_websocket(request):
                return await handler(request)
            return asset.response()
        request, from_cookie = _with_cookie_token(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status != 401 or not asset.is_page:
                raise
            return _login_response(from_cookie)
        if response.status == 401 and asset.is_page:
            return _login_response(from_cookie)
        return response

    app.middlewares.insert(0, status_page)
