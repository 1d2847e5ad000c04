"""Finding the connector endpoint (decision D2). The parsing is pure; `fetch_endpoint`
is the thin HTTP shell."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

LOOKUP_TIMEOUT = 3.0  # the origin client's lookup timeout (Part 2 §1.2)


class LookupError_(Exception):
    """The lookup answered something that is not a connector address."""


def parse_lookup_body(body: str, *, https: bool) -> str:
    """Accept a bare `ws://host:port[/path]` / `wss://…` URL or JSON `{"url": …}`."""
    text = body.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise LookupError_(f"lookup answer is not valid JSON: {exc}") from None
        except RecursionError:
            raise LookupError_("lookup answer is JSON nested too deeply") from None
        url = obj.get("url") if isinstance(obj, dict) else None
        if not isinstance(url, str):
            raise LookupError_("lookup answer has no string 'url' key")
        text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced or invalid "[" IPv6 host
        raise LookupError_(f"lookup answer is not a valid URL: {text[:100]!r}") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise LookupError_(f"lookup answer is not a ws:// or wss:// URL: {text[:100]!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise LookupError_(f"lookup answer has an invalid port: {text[:100]!r}") from None
    scheme = "wss" if https or parts.scheme == "wss" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


def lookup_body(host: str, port: int, *, secure: bool = False) -> str:
    """What the platform's `GET /lookup` answers: exactly `ws://host:port` (or `wss://`),
    no path and no line end. The 2017 client cuts the body after `ws://` and at the next
    `:`s, without trimming: anything after the port would become part of it (§1.2).
    `host` is the request's Host header (its port, when it names one, wins over `port`)."""
    try:
        parts = urlsplit("//" + host)
        hostname, named_port = parts.hostname, parts.port
    except ValueError:
        hostname, named_port = None, None
    if not hostname:
        hostname = "127.0.0.1"
    if ":" in hostname:  # an IPv6 address keeps its brackets
        hostname = f"[{hostname}]"
    return f"{'wss' if secure else 'ws'}://{hostname}:{named_port or port}"


def registration_url(ws_url: str, path: str, *, https: bool) -> str:
    """Legacy registration goes to the looked-up host and the same port (Part 2 §1.2, D4)."""
    parts = urlsplit(ws_url)
    scheme = "https" if https or parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/" + path.lstrip("/"), "", ""))


async def fetch_endpoint(lookup_url: str, *, https: bool, ssl: object = None) -> str:
    import aiohttp  # only with CONNECTOR_LOOKUP_URL: 13 MB of the process when imported

    timeout = aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(lookup_url, ssl=ssl) as answer,  # type: ignore[arg-type]
    ):
        if answer.status != 200:
            raise LookupError_(f"lookup {lookup_url} answered HTTP {answer.status}")
        return parse_lookup_body(await answer.text(), https=https)
