"""A small HTTP/1.1 server for the adapter's local API: h11 reads and writes HTTP, anyio
owns the sockets and the tasks.

Why not aiohttp, which the sandbox uses: its server costs the adapter 13 MB of resident
memory, a fifth of the process with 10,000 devices. h11 is the HTTP state machine alone
(0.2 MB); what is left here is the socket loop, routing and limits.

Each connection is one task; its requests are answered one after the other (keep-alive;
h11 holds what a client sends ahead). Limits: a request head of at most 16 KiB, a body of
at most 1 MiB; 256 connections waiting for a request and 64 requests being answered at
once. A request head must arrive whole within 4 s of the connection's start or of the
previous answer (so an idle keep-alive connection closes after 4 s), a body within 30 s.

Slow and silent clients cannot lock others out (issue [14]): a connection that waits on
its client (for a request, or for it to read an answer) keeps its place only while no one
else needs it. At either limit a newcomer closes the connection that has waited longest
(of the address with the most waiting ones) and takes its place; only when all 64 requests
are being worked on is a new request refused (503).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream

log = logging.getLogger("adapter.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
MAX_CONNECTIONS = 64  # requests being answered at once (reading a body, working, sending)
MAX_WAITING = 256  # connections waiting for a request head, new or idle between requests
# For a request's head (request line and headers), counted from the connection's start or
# the previous answer; so also how long a keep-alive connection may idle. Any HTTP client
# sends a head in one go, so a few seconds is plenty; 4 s and not 5 so that the status
# page's 5 s refresh opens a new connection instead of racing the server's close of its
# idle one.
HEAD_TIMEOUT = 4.0
REQUEST_TIMEOUT = 30.0  # for a request's body
SEND_TIMEOUT = 30.0
LIMIT_WARNING_INTERVAL = 60.0  # at most one log line a minute about the connection limit
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, percent-encoded, without the query
    query: dict[str, str]  # decoded; a repeated name keeps its first value
    headers: dict[str, str]  # names in lower case; repeated ones joined by ", "
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # what the route's {names} took

    def cookie(self, name: str) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return None
        morsel = jar.get(name)
        return None if morsel is None else morsel.value

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        status,
        json.dumps(data).encode("utf-8"),
        {"Content-Type": "application/json; charset=utf-8"},
    )


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


Handler = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


class Router:
    """Routes by method and path. A route's path may hold `{name}` (one level) or
    `{name:regex}`; the values are percent-decoded. GET routes answer HEAD too."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        parts, last = [], 0
        for match in _PARAM.finditer(path):
            parts.append(re.escape(path[last : match.start()]))
            parts.append(f"(?P<{match.group(1)}>{match.group(2) or '[^/]+'})")
            last = match.end()
        parts.append(re.escape(path[last:]))
        self._routes.append((method, re.compile("".join(parts)), handler))

    async def __call__(self, request: Request) -> Response:
        allowed: list[str] = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                params = {k: unquote(v) for k, v in match.groupdict().items()}
                return await handler(_with_params(request, params))
            allowed.append(method)
        if allowed:
            answer = error_response(405, f"{request.method} is not allowed here")
            answer.headers["Allow"] = ", ".join(sorted(set(allowed)))
            return answer
        return error_response(404, "no such path")


def _with_params(request: Request, params: dict[str, str]) -> Request:
    return Request(
        request.method, request.path, request.query, request.headers, request.body, params
    )


class _Refused(Exception):
    """The request cannot be read; answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The client closed the connection or stopped talking."""


class _Client:
    """What the limits know of a connection."""

    def __init__(self, address: str) -> None:
        self.address = address  # where it comes from (an IPv6 client: its /64)
        self.scope = anyio.CancelScope()  # cancelled to close it for another connection
        self.pool: _Pool | None = None


class _Pool:
    """At most `limit` connections, of which one waiting on its client (for a request, a
    body, or for it to read the answer) keeps its place only until another needs it.

    At the limit, a newcomer closes the connection that has waited longest, of the address
    with the most waiting ones, as nginx reuses its idle keep-alive connections when it
    runs out of them; only when every one is being answered is the newcomer refused. So a
    flood of slow connections closes its own members first: one from another address is
    never closed while the flood has more waiting, and one from the same address (a test,
    a NAT) is read long before `limit` newer connections could push it out."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what  # for the log
        self.count = 0
        # The waiting ones by address, each address's in the order they began to wait.
        self._waiting: dict[str, dict[_Client, None]] = {}
        self._warned_at: float | None = None

    def enter(self, client: _Client) -> bool:
        """Place `client`, waiting; False when every place is taken by one being answered."""
        if self.count >= self.limit and not self._push_out():
            return False
        self.count += 1
        client.pool = self
        self.wait(client)
        return True

    def leave(self, client: _Client) -> None:
        if client.pool is self:
            self.work(client)
            self.count -= 1
            client.pool = None

    def wait(self, client: _Client) -> None:
        """`client` begins to wait on its client: the newest of the waiting."""
        waiting = self._waiting.setdefault(client.address, {})
        waiting.pop(client, None)
        waiting[client] = None

    def work(self, client: _Client) -> None:
        """`client`'s answer is being worked out: it is not pushed out meanwhile."""
        waiting = self._waiting.get(client.address)
        if waiting is not None:
            waiting.pop(client, None)
            if not waiting:
                del self._waiting[client.address]

    def _push_out(self) -> bool:
        self._warn()
        if not self._waiting:
            return False
        busiest = max(self._waiting.values(), key=lambda waiting: len(waiting))
        oldest = next(iter(busiest))
        self.leave(oldest)
        oldest.scope.cancel()
        return True

    def _warn(self) -> None:
        now = anyio.current_time()
        if self._warned_at is None or now - self._warned_at >= LIMIT_WARNING_INTERVAL:
            self._warned_at = now
            log.warning(
                "local API: %d %s, the limit: a new one closes the one waiting longest on "
                "its client, or is refused when none waits (logged at most once a minute)",
                self.limit,
                self.what,
            )


class _Limits:
    """A connection waits for its request head among MAX_WAITING, and is answered among
    MAX_CONNECTIONS: many cheap waiting connections, so that a flood must open that many
    to push out one that has just arrived, and few expensive answers."""

    def __init__(self) -> None:
        self.waiting = _Pool(MAX_WAITING, "connections waiting for a request")
        self.answering = _Pool(MAX_CONNECTIONS, "requests at once")

    def arrive(self, client: _Client) -> None:
        self.waiting.enter(client)  # never refused: every one there waits

    def admit(self, client: _Client) -> None:
        """Its head arrived: on to be answered, or a 503 when every place is answering."""
        self.waiting.leave(client)
        if not self.answering.enter(client):
            self.waiting.enter(client)  # while the 503 goes out
            raise _Refused(503, "too many connections")

    def answered(self, client: _Client) -> None:
        self.answering.leave(client)
        self.waiting.enter(client)  # for the next request on a keep-alive connection

    def leave(self, client: _Client) -> None:
        if client.pool is not None:
            client.pool.leave(client)

    @contextlib.contextmanager
    def working(self, client: _Client) -> Iterator[None]:
        pool = client.pool
        if pool is not None:
            pool.work(client)
        try:
            yield
        finally:
            if pool is not None and client.pool is pool:
                pool.wait(client)


def _address(stream: SocketStream) -> str:
    """The client's address; an IPv6 one as its /64, which one host often has whole."""
    try:
        host = stream.extra(SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return ""
    text = host[0] if isinstance(host, tuple) else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


async def serve(
    handler: Handler, host: str, port: int, *, ready: Callable[[int], None] | None = None
) -> None:
    """Answer HTTP on host:port until cancelled. `ready` gets the port once listening (for
    port 0). Raises OSError when it cannot listen."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    limits = _Limits()

    async def connection(stream: SocketStream) -> None:
        client = _Client(_address(stream))
        limits.arrive(client)
        try:
            with client.scope:  # cancelled: closed for a newer connection
                await _connection(handler, stream, client, limits)
        except Exception:  # a bug here must cost one connection, not the API
            log.exception("HTTP connection failed")
        finally:
            limits.leave(client)

    async with listener:
        if ready is not None:
            ready(listener.extra(SocketAttribute.local_port))
        await listener.serve(connection)


async def _connection(
    handler: Handler, stream: SocketStream, client: _Client, limits: _Limits
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        async with stream:
            while True:
                try:
                    request = await _read_request(conn, stream, lambda: limits.admit(client))
                except _Refused as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        answer = error_response(exc.status, str(exc))
                        answer.headers["Connection"] = "close"
                        await _send(conn, stream, answer, head=False)
                    return
                if request is None:
                    return
                with limits.working(client):
                    answer = await _answer(handler, request)
                await _send(conn, stream, answer, head=request.method == "HEAD")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # one side asked to close, or the body was not read in full
                limits.answered(client)
                conn.start_next_cycle()
    except (_Gone, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the client left, or stopped reading our answer (TimeoutError is an OSError)
    except h11.LocalProtocolError as exc:
        log.debug("HTTP connection dropped: %s", exc)


async def _answer(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return error_response(500, "internal error (see the adapter's log)")


async def _next_event(conn: h11.Connection, stream: SocketStream) -> Any:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            raise _Refused(431 if status == 431 else 400, f"bad request: {exc}") from None
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            await _write(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
        try:
            data = await stream.receive(65536)
        except anyio.EndOfStream:
            data = b""
        conn.receive_data(data)


async def _read_request(
    conn: h11.Connection, stream: SocketStream, admit: Callable[[], None]
) -> Request | None:
    """The next request, whole; None when the client closed or idled between requests.
    `admit` is called once its head has arrived, before its body is read."""
    try:
        # One deadline for the whole head, not one per read: a client trickling a byte at
        # a time must not hold its connection longer than a silent one.
        with anyio.fail_after(HEAD_TIMEOUT):
            event = await _next_event(conn, stream)
    except TimeoutError:
        if conn.trailing_data[0]:  # part of a head came: say why it ends
            raise _Refused(408, "the request head did not arrive in time") from None
        return None  # an idle keep-alive connection
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise _Refused(400, "bad request")
    request = event
    # h11 checks the size of a head still arriving; one that arrived whole is checked here.
    if len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers) > MAX_HEAD:
        raise _Refused(431, f"the request head may be at most {MAX_HEAD} bytes")
    declared = _content_length(request)
    if declared is not None and declared > MAX_BODY:
        raise _Refused(413, f"the body may be at most {MAX_BODY} bytes")
    admit()
    body = bytearray()
    try:
        with anyio.fail_after(REQUEST_TIMEOUT):
            while True:
                event = await _next_event(conn, stream)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise _Refused(413, f"the body may be at most {MAX_BODY} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise _Gone
    except TimeoutError:
        raise _Refused(408, "the request did not arrive in time") from None
    target = request.target.decode("ascii", "replace")
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    params: dict[str, str] = {}
    for key, text in parse_qsl(query, keep_blank_values=True):
        params.setdefault(key, text)
    return Request(request.method.decode("ascii"), path, params, headers, bytes(body))


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


async def _send(conn: h11.Connection, stream: SocketStream, answer: Response, head: bool) -> None:
    headers = [(name, value) for name, value in answer.headers.items()]
    headers.append(("Content-Length", str(len(answer.body))))
    headers.append(("Date", formatdate(usegmt=True)))  # RFC 9110 §6.6.1: a server with a clock
    reason = _REASONS.get(answer.status, b"")
    await _write(
        conn, stream, h11.Response(status_code=answer.status, headers=headers, reason=reason)
    )
    if answer.body and not head:
        await _write(conn, stream, h11.Data(data=answer.body))
    await _write(conn, stream, h11.EndOfMessage())


async def _write(conn: h11.Connection, stream: SocketStream, event: Any) -> None:
    data = conn.send(event)
    if data:
        with anyio.fail_after(SEND_TIMEOUT):
            await stream.send(data)
