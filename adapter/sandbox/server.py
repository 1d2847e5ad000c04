"""The sandbox platform's network shell: HTTP and the websocket connector on one port
(aiohttp), with the platform's keep-alive behaviour (§2.10) and fault switches for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from adapter.history import HistoryStore, average_answer, readings_from_metadata
from adapter.sandbox.store import SandboxStore
from adapter.sepl import envelope
from adapter.sepl.envelope import ProtocolError
from adapter.sepl.legacy import is_legacy_credentials
from adapter.sepl.lookup import lookup_body
from adapter.sepl.messages import PART_DATA, PART_METADATA, recognised_parts
from adapter.sepl.platform import (
    CommandRecord,
    Keepalive,
    NotAttached,
    Platform,
    PlatformDevice,
    PlatformSession,
    Refused,
    RegistrationError,
    open_legacy_session,
    register,
)
from adapter.web import add_status_page

log = logging.getLogger("adapter.sandbox")

MAX_FRAME = 16 * 1024 * 1024
KEEPALIVE_TICK = 0.25  # s between looks at a session's ping and read deadline


@dataclass
class Faults:
    """Switches that make the sandbox misbehave the way real links do (tests use them)."""

    answer_pings: bool = True  # False: a peer that stops answering pings (dead link)
    answer_frames: bool = True  # False: frames are read but never answered


@dataclass
class SandboxServer:
    platform: Platform[SandboxStore]
    history: HistoryStore | None = None  # readings of received events, for /average (D9)
    faults: Faults = field(default_factory=Faults)
    registration_path: str = "discovery"  # legacy device registration (D4)
    _waiters: dict[str, asyncio.Future[CommandRecord]] = field(default_factory=dict)
    _sockets: set[web.WebSocketResponse] = field(default_factory=set)
    sessions_opened: int = 0

    def __post_init__(self) -> None:
        self.platform.on_response.append(self._command_answered)
        self.platform.on_event.append(lambda record: log.info("%s", describe_event(record)))
        self.platform.on_event.append(self._record_readings)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_FRAME)
        app.add_routes(
            [
                web.get("/", self.websocket),
                web.get("/lookup", self.lookup),
                web.post("/commands", self.post_command),
                web.get("/commands/{task_id}", self.get_command),
                web.get("/events", self.get_events),
                web.get("/gateways", self.get_gateways),
                web.get("/device-types", self.get_device_types),
                web.get("/devices", self.get_devices),
                web.get(r"/devices/{id:.+}/average", self.get_average),
                web.post("/devices", self.post_device),
                web.get("/sessions", self.get_sessions),
                web.post("/faults", self.post_faults),
                web.post("/inject", self.post_inject),
                web.post("/" + self.registration_path.strip("/"), self.post_registration),
            ]
        )
        add_status_page(app, "sandbox")
        app.on_shutdown.append(self._close_sockets)
        return app

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"sandbox shutting down")

    def _record_readings(self, record: dict[str, Any]) -> None:
        if self.history is None:
            return
        reading = readings_from_metadata(
            record["device_uri"], record["parts"].get("metadata", ""), time.time()
        )
        if reading is not None:
            self.history.record([reading])

    async def get_average(self, request: web.Request) -> web.Response:
        if self.history is None:
            return _error(404, "this sandbox keeps no history")
        return average_response(self.history, request)

    # --- websocket connector -------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        # No permessage-deflate: the connector's frames pass as written.
        ws = web.WebSocketResponse(autoping=False, max_msg_size=MAX_FRAME, compress=False)
        if not ws.can_prepare(request).ok:
            return web.Response(text="SEPL sandbox platform: connect with a websocket\n")
        await ws.prepare(request)
        self._sockets.add(ws)
        refused = False
        try:
            refused = not await self._serve(ws, client_certificate(request))
        finally:
            self._sockets.discard(ws)
            if refused and request.transport is not None:
                # The Go connector ends a refused handshake by closing the TCP connection:
                # no close frame, no answer (§2.6 step 3).
                request.transport.close()
            elif not ws.closed:
                await ws.close()
        return ws

    async def _serve(self, ws: web.WebSocketResponse, certificate: str = "") -> bool:
        """The session of one connection; False when its handshake was refused.
        `certificate`: the subject of the client's TLS certificate, "" without one."""
        try:
            first = await self._next_text(ws)
        except TimeoutError:
            log.info("handshake refused: no credentials within %.0f s", self.platform.read_timeout)
            return False
        if first is None:
            return True
        outbox: asyncio.Queue[str] = asyncio.Queue()
        try:
            if is_legacy_credentials(first):
                session: PlatformSession = open_legacy_session(
                    self.platform, first, outbox.put_nowait
                )
            else:
                session = self.platform.open_session(
                    envelope.decode_credentials(first), outbox.put_nowait
                )
                outbox.put_nowait(session.handshake_answer())
        except (ProtocolError, Refused) as exc:
            log.info("handshake refused: %s", exc)
            return False
        self.sessions_opened += 1
        log.info(
            "gateway %s connected (user %r, %d devices restored%s)",
            session.gateway.id,
            session.user,
            len(session.attached),
            f", client certificate {certificate}" if certificate else "",
        )
        writer = asyncio.create_task(self._writer(ws, outbox))
        keeper = asyncio.create_task(self._keepalive(ws, session))
        try:
            await self._read_loop(ws, session, outbox)
        finally:
            keeper.cancel()
            writer.cancel()
            self.platform.close_session(session)
            log.info("gateway %s disconnected", session.gateway.id)
        return True

    async def _next_text(self, ws: web.WebSocketResponse) -> str | None:
        while True:
            msg = await ws.receive(timeout=self.platform.read_timeout)
            if msg.type == WSMsgType.TEXT:
                return str(msg.data)
            if msg.type == WSMsgType.PING and self.faults.answer_pings:
                await ws.pong(msg.data)
            elif msg.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                return None

    async def _read_loop(
        self, ws: web.WebSocketResponse, session: PlatformSession, outbox: asyncio.Queue[str]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg = await ws.receive()
            # Any frame, pings and pongs included, pushes the read deadline on (§2.10).
            session.heard(loop.time(), ping=msg.type == WSMsgType.PING)
            if msg.type == WSMsgType.TEXT:
                if not self.faults.answer_frames:
                    continue
                for frame in session.handle(str(msg.data)):
                    outbox.put_nowait(frame)
                if session.close_reason:
                    await outbox.join()
                    await self._close(ws, session)
                    return
            elif msg.type == WSMsgType.PING:
                if self.faults.answer_pings:
                    await ws.pong(msg.data)
            elif msg.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                return
            # binary frames and pongs carry no protocol data (§2.1)

    async def _close(self, ws: web.WebSocketResponse, session: PlatformSession) -> None:
        reason = session.close_reason or "closing"
        log.info("closing gateway %s: %s", session.gateway.id, reason)
        await ws.close(code=1000, message=reason.encode())

    async def _writer(self, ws: web.WebSocketResponse, outbox: asyncio.Queue[str]) -> None:
        while True:
            frame = await outbox.get()
            try:
                if not ws.closed:
                    await ws.send_str(frame)
            except ConnectionError:
                pass
            finally:
                outbox.task_done()

    async def _keepalive(self, ws: web.WebSocketResponse, session: PlatformSession) -> None:
        """The platform's pings and read deadline, as the session's rules say (§2.10)."""
        loop = asyncio.get_running_loop()
        while not ws.closed:
            await asyncio.sleep(KEEPALIVE_TICK)
            action = session.keepalive(loop.time())
            if action is Keepalive.CLOSE:
                await self._close(ws, session)
                return
            if action is Keepalive.PING:
                try:
                    await ws.ping(time.strftime("%Y-%m-%d %H:%M:%S").encode())
                except ConnectionError:
                    return

    # --- HTTP ----------------------------------------------------------------------------

    async def lookup(self, request: web.Request) -> web.Response:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        port = sockname[1] if isinstance(sockname, tuple) else 8093
        url = lookup_body(request.host, port, secure=request.secure)
        if request.query.get("format") == "json":
            return web.json_response({"url": url})
        return web.Response(text=url)

    def _command_answered(self, record: CommandRecord) -> None:
        future = self._waiters.pop(record.task_id, None)
        if future is not None and not future.done():
            future.set_result(record)

    async def post_command(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'body must be JSON: {"device", "service", "data"}')
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        device, service, data = body.get("device"), body.get("service"), body.get("data")
        wait, timeout = body.get("wait", True), body.get("timeout", 10)
        if not isinstance(device, str) or not isinstance(service, str):
            return _error(400, "'device' and 'service' must be strings")
        if data is not None and not isinstance(data, str):
            data = json.dumps(data)
        if not isinstance(timeout, int | float) or timeout <= 0:
            return _error(400, "'timeout' must be a positive number of seconds")
        try:
            record = self.platform.send_command(device, service, data)
        except NotAttached as exc:
            return _error(409, str(exc))
        if not wait:
            return web.json_response(
                {"task_id": record.task_id, "request": record.request}, status=202
            )
        future: asyncio.Future[CommandRecord] = asyncio.get_running_loop().create_future()
        self._waiters[record.task_id] = future
        try:
            answered = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._waiters.pop(record.task_id, None)
            return web.json_response(
                {
                    "task_id": record.task_id,
                    "request": record.request,
                    "response": None,
                    "error": f"no response within {timeout} s",
                },
                status=504,
            )
        return web.json_response(
            {
                "task_id": record.task_id,
                "request": record.request,
                "response": answered.response,
                # The reply's parts, whichever era named them (D10 as amended).
                **response_parts(answered.response),
            }
        )

    async def get_command(self, request: web.Request) -> web.Response:
        record = self.platform.store.command(request.match_info["task_id"])
        if record is None:
            return _error(404, "unknown task id")
        return web.json_response(record)

    async def get_events(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = min(int(request.query.get("limit", "1000")), 100_000)
        except ValueError:
            return _error(400, "'after' and 'limit' must be integers")
        events = self.platform.store.events(request.query.get("device"), after, limit)
        return web.json_response(events)

    async def get_gateways(self, request: web.Request) -> web.Response:
        return web.json_response([vars(gw) for gw in self.platform.store.gateways()])

    async def get_device_types(self, request: web.Request) -> web.Response:
        """The registry: each device type with its services; null when every type and
        service is accepted (`--any-device-type`, or no mappings)."""
        types = self.platform.device_types
        if types is None:
            return web.json_response(None)
        return web.json_response({name: sorted(types[name]) for name in sorted(types)})

    async def get_devices(self, request: web.Request) -> web.Response:
        attached = {uri for s in self.platform.sessions for uri in s.attached}
        rows = [
            {**vars(d), "attached": d.uri in attached} for d in self.platform.store.all_devices()
        ]
        return web.json_response(rows)

    async def post_device(self, request: web.Request) -> web.Response:
        """Create a platform device directly, as a user would in the platform's UI."""
        try:
            body = await request.json()
            device = PlatformDevice(
                id=f"iot#{uuid.uuid4()}",
                owner=str(body.get("owner", "")),
                uri=str(body["uri"]),
                name=str(body.get("name", body["uri"])),
                type=str(body.get("type", "")),
                tags=dict(body.get("tags", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "body must be JSON with at least 'uri'")
        self.platform.store.save_device(device)
        return web.json_response(vars(device), status=201)

    async def get_sessions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "opened": self.sessions_opened,
                "open": [
                    {
                        "gateway": s.gateway.id,
                        "user": s.user,
                        "attached": sorted(s.attached),
                        "handled": s.handled,
                        "errors_in_row": s.errors_in_row,
                        "most_errors_in_row": s.most_errors_in_row,
                    }
                    for s in self.platform.sessions
                ],
            }
        )

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON")
        for key, value in body.items() if isinstance(body, dict) else []:
            if not hasattr(self.faults, key) or not isinstance(value, bool):
                return _error(400, f"unknown fault switch {key!r}")
            setattr(self.faults, key, value)
        return web.json_response(vars(self.faults))

    async def post_registration(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "registration body must be JSON")
        try:
            count = register(self.platform, body)
        except RegistrationError as exc:
            return _error(exc.status, str(exc))
        return web.json_response({"registered": count})

    async def post_inject(self, request: web.Request) -> web.Response:
        """Send a raw frame to every open session: how tests feed the client garbage."""
        try:
            body = await request.json()
            frame = body["frame"]
            if not isinstance(frame, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, "body must be JSON with a string 'frame'")
        sessions = self.platform.sessions
        for session in sessions:
            session.send(frame)
        return web.json_response({"sent_to": len(sessions)})


def client_certificate(request: web.Request) -> str:
    """The subject of the client's verified TLS certificate (`CN=sepl-adapter`); "" when
    it sent none (the sandbox asks for one only when started with --client-ca)."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not isinstance(peer, dict):
        return ""
    # ssl's decoded form: a tuple of relative names, each a tuple of (field, value) pairs.
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}
    return ",".join(
        f"{names.get(field, field)}={value}"
        for rdn in peer.get("subject", ())
        for field, value in rdn
    )


def describe_event(record: Mapping[str, Any]) -> str:
    parts = record["parts"]
    data = parts.get("data", "")
    return f"event {record['device_uri']} {record['service_uri']} data={data[:160]}"


def response_parts(response: Any) -> dict[str, str]:
    """`data` and `metadata` of a command's response: its `data`/`metadata` parts, or the
    2017 client's `body`/`header`."""
    parts = response.get("protocol_parts") if isinstance(response, dict) else None
    named = {
        part["name"]: part["value"]
        for part in parts or []
        if isinstance(part, dict)
        and isinstance(part.get("name"), str)
        and isinstance(part.get("value"), str)
    }
    recognised = recognised_parts(named)
    return {key: recognised.get(key, "") for key in (PART_DATA, PART_METADATA)}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def average_response(history: HistoryStore, request: web.Request) -> web.Response:
    """`GET /devices/{id}/average` (D9) on aiohttp: the id as the route took it, once
    decoded (aiohttp leaves %2F and %25 encoded in the path it matches)."""
    uri = unquote(request.match_info["id"])
    status, body = average_answer(history, uri, request.query, time.time())
    return web.json_response(body, status=status)
