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
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:  # aiohttp is imported by the sandbox only (add_status_page)
    from aiohttp import web

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


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, whichever server sends it."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Asset:
    path: Path

    @property
    def is_page(self) -> bool:
        return self.path.suffix == ".html"

    def answer(self) -> Answer:
        headers = {**_COMMON_HEADERS, "Content-Type": _TYPES[self.path.suffix]}
        if self.is_page:
            headers["Content-Security-Policy"] = _PAGE_POLICY
        return Answer(200, headers, self.path.read_bytes())


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


def login_answer(rejected: bool) -> Answer:
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
    headers = {
        **_COMMON_HEADERS,
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Content-Security-Policy": policy,
        "WWW-Authenticate": 'Bearer realm="sepl-adapter"',
    }
    return Answer(401, headers, html.encode("utf-8"))


def cookie_authorization(cookie: str | None) -> str | None:
    """The `Authorization` header a page request stands for when it carries the token
    cookie and no header of its own."""
    return f"Bearer {unquote(cookie)}" if cookie else None


# --- the status page on an aiohttp application (the sandbox) -------------------------------

AioHandler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def _aio(answer: Answer) -> web.Response:
    from aiohttp import web

    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def add_status_page(app: web.Application, kind: str) -> None:
    """Serve the `kind` status page ("adapter" or "sandbox") from an aiohttp `app`.

    Call before the application starts. Adds GET (and HEAD) routes for the files, and a
    middleware in front of the others: it passes the cookie token on (see the module
    docstring), answers a refused page load with the login form, and, when `/` is already
    a route (the sandbox's websocket connector), serves the page at `/` to requests that
    are not websocket upgrades.
    """
    from aiohttp import hdrs, web
    from multidict import CIMultiDict

    table = assets(kind)
    root_taken = any(resource.canonical == "/" for resource in app.router.resources())
    for path, asset in table.items():
        if path == "/" and root_taken:
            continue

        async def handle(request: web.Request, asset: Asset = asset) -> web.Response:
            return _aio(asset.answer())

        app.router.add_get(path, handle)

    def with_cookie_token(request: web.Request) -> tuple[web.Request, bool]:
        if hdrs.AUTHORIZATION in request.headers:
            return request, False
        authorization = cookie_authorization(request.cookies.get(TOKEN_COOKIE))
        if authorization is None:
            return request, False
        headers = CIMultiDict(request.headers)
        headers[hdrs.AUTHORIZATION] = authorization
        return request.clone(headers=headers), True

    @web.middleware
    async def status_page(request: web.Request, handler: AioHandler) -> web.StreamResponse:
        asset = table.get(request.path)
        if asset is None or request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return await handler(request)
        if root_taken and request.path == "/":
            if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
                return await handler(request)
            return _aio(asset.answer())
        request, from_cookie = with_cookie_token(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status != 401 or not asset.is_page:
                raise
            return _aio(login_answer(from_cookie))
        if response.status == 401 and asset.is_page:
            return _aio(login_answer(from_cookie))
        return response

    app.middlewares.insert(0, status_page)
