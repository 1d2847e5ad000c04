"""The platform's side of SEPL connector sessions, without I/O: what the Go platform
connector does with each frame (protocol Part 2 §1.4-§1.5, §2.6-§2.11, §3, D4, D11), for
both dialects, including its keep-alive (ping period, read deadline) and error budget.

The sandbox (adapter/sandbox/) is the shell: it feeds frames and the time in and writes
out what comes back, and it stores gateways, devices, events and commands behind the
`Registry` this module asks for. The gateway's side of the same protocol is
adapter/sepl/session.py.
"""

from __future__ import annotations

import enum
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from adapter.sepl import envelope, legacy
from adapter.sepl.envelope import Credentials, ProtocolError, decode_credentials
from adapter.sepl.messages import (
    EventBody,
    build_command,
    parse_event_payload,
    recognised_parts,
)

log = logging.getLogger("adapter.sandbox")

Send = Callable[[str], None]

PING_PERIOD = 20.0  # WsPingperiod (Part 2 §2.10)
READ_TIMEOUT = 40.0  # WsTimeout


@dataclass
class Gateway:
    id: str
    owner: str
    name: str
    hash: str = ""
    devices: list[str] = field(default_factory=list)


@dataclass
class PlatformDevice:
    id: str
    owner: str
    uri: str
    name: str
    type: str
    tags: dict[str, str] = field(default_factory=dict)


class Registry(Protocol):
    """Where the platform keeps gateways, devices, events and commands (the sandbox: a
    SQLite file)."""

    def gateway(self, gid: str) -> Gateway | None: ...
    def save_gateway(self, gw: Gateway) -> None: ...
    def devices_by_uri(self, owner: str, uri: str) -> list[PlatformDevice]: ...
    def device(self, device_id: str) -> PlatformDevice | None: ...
    def all_devices(self) -> list[PlatformDevice]: ...
    def save_device(self, d: PlatformDevice) -> None: ...
    def delete_device(self, device_id: str) -> None: ...
    def add_event(
        self,
        received: float,
        gateway: str,
        device_uri: str,
        service_uri: str,
        parts: dict[str, str],
    ) -> int: ...
    def add_command(
        self, task_id: str, device_uri: str, service_uri: str, sent: float, request: dict[str, Any]
    ) -> None: ...
    def answer_command(self, task_id: str, answered: float, response: Any) -> bool: ...


class Keepalive(enum.Enum):
    NOTHING = "nothing"
    PING = "ping"
    CLOSE = "close"


class Refused(Exception):
    """The handshake fails; the server closes without sending anything (§2.6 step 3)."""


class NotAttached(Exception):
    """A command for a device no session listens to (the platform drops those, §3.1)."""


@dataclass
class Answer:
    status: int
    payload: Any


def ok() -> Answer:
    return Answer(200, "ok")


@dataclass
class CommandRecord:
    task_id: str
    device_uri: str
    service_uri: str
    request: dict[str, Any]
    response: dict[str, Any] | None = None


R = TypeVar("R", bound=Registry)


@dataclass
class Platform(Generic[R]):
    store: R
    # device type id -> service URIs; None accepts any type and service (D11 off)
    device_types: Mapping[str, frozenset[str]] | None = None
    users: Mapping[str, str] | None = None  # None: any credentials are accepted
    max_errors: int = 5
    ping_period: float = PING_PERIOD
    read_timeout: float = READ_TIMEOUT
    sessions: list[PlatformSession] = field(default_factory=list)
    on_response: list[Callable[[CommandRecord], None]] = field(default_factory=list)
    on_event: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    pending: dict[str, CommandRecord] = field(default_factory=dict)

    def add_device_types(self, found: Mapping[str, frozenset[str]]) -> list[str]:
        """Types and services joined into the registry (edited mappings); returns what
        is new, as `type (service, ...)`. Without a registry, nothing to do."""
        if self.device_types is None:
            return []
        types = dict(self.device_types)
        added = []
        for name, services in sorted(found.items()):
            known = types.get(name, frozenset())
            new = services - known
            if new or name not in types:
                added.append(f"{name} ({', '.join(sorted(new))})")
            types[name] = known | services
        self.device_types = types
        return added

    def authenticate(self, user: str, password: str) -> bool:
        return self.users is None or self.users.get(user) == password

    def open_session(self, credentials: Credentials, send: Send) -> PlatformSession:
        if not self.authenticate(credentials.user, credentials.password):
            raise Refused(f"wrong credentials for user {credentials.user!r}")
        gateway = self.store.gateway(credentials.gid) if credentials.gid else None
        if gateway is None or gateway.owner != credentials.user:
            # Empty, unknown or foreign ids get a fresh gateway, silently (§2.6 step 4).
            gateway = Gateway(
                id=f"iot#{uuid.uuid4()}",
                owner=credentials.user,
                name=f"new-gateway-{_base36(int(time.time()))}",
            )
            self.store.save_gateway(gateway)
        session = PlatformSession(self, gateway, credentials.user, send)
        for device_id in gateway.devices:  # re-attach the committed devices (§2.6 step 5)
            device = self.store.device(device_id)
            if device is not None:
                session.attached[device.uri] = device.id
        self.sessions.append(session)
        return session

    def close_session(self, session: PlatformSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def listeners(self, owner: str | None, uri: str) -> list[PlatformSession]:
        return [
            s for s in self.sessions if uri in s.attached and (owner is None or s.user == owner)
        ]

    def send_command(
        self, device_uri: str, service_uri: str, data: str | None, owner: str | None = None
    ) -> CommandRecord:
        sessions = self.listeners(owner, device_uri)
        if not sessions:
            raise NotAttached(f"no gateway listens to device {device_uri!r}")
        task_id = str(uuid.uuid4())
        request = build_command(
            device_uri=device_uri,
            service_uri=service_uri,
            data=data,
            task_id=task_id,
            device_instance_id=sessions[0].attached[device_uri],
            time=int(time.time()),
        )
        record = CommandRecord(task_id, device_uri, service_uri, request)
        self.pending[task_id] = record
        self.store.add_command(task_id, device_uri, service_uri, time.time(), request)
        for session in sessions:  # every listening session gets it (§3.1, Q9)
            session.send(session.encode_command(request))
        return record

    def record_response(self, payload: Any) -> None:
        task_id = payload.get("task_id") if isinstance(payload, dict) else None
        if not isinstance(task_id, str):
            log.warning("response without task_id: %.200s", json.dumps(payload))
            return
        self.store.answer_command(task_id, time.time(), payload)
        record = self.pending.pop(task_id, None)
        if record is None:
            log.info("response for unknown or answered task %s", task_id)
            return
        record.response = payload
        for callback in self.on_response:
            callback(record)


class PlatformSession:
    def __init__(self, platform: Platform[Any], gateway: Gateway, user: str, send: Send) -> None:
        self.platform = platform
        self.gateway = gateway
        self.user = user
        self.send = send
        self.attached: dict[str, str] = {}  # device uri -> platform device id
        self.errors_in_row = 0
        self.most_errors_in_row = 0  # the highest the count reached in this session
        self.client_pings = False  # once the client pings, the server stops pinging (§2.10)
        self.close_reason: str | None = None
        self.handled: dict[str, int] = {}
        self._heard: float | None = None  # when the last frame of any kind came in
        self._pinged: float | None = None  # when the server last pinged

    # --- keep-alive (§2.10) ----------------------------------------------------------------

    def heard(self, now: float, *, ping: bool = False) -> None:
        """Any frame from the client (a data frame, a ping or a pong) pushes the read
        deadline on; the client's first ping stops the server's pings for good."""
        self._heard = now
        if ping:
            self.client_pings = True

    def keepalive(self, now: float) -> Keepalive:
        """What the keep-alive asks for now: nothing, a ping, or closing (the read deadline
        passed; `close_reason` says so)."""
        if self._heard is None:
            self._heard = now
        if self._pinged is None:
            self._pinged = now
        if now - self._heard >= self.platform.read_timeout:
            if self.close_reason is None:
                self.close_reason = f"silent for {self.platform.read_timeout:g} s"
            return Keepalive.CLOSE
        if not self.client_pings and now - self._pinged >= self.platform.ping_period:
            self._pinged = now
            return Keepalive.PING
        return Keepalive.NOTHING

    @property
    def store(self) -> Registry:
        store: Registry = self.platform.store
        return store

    def encode_command(self, command: dict[str, Any]) -> str:
        return envelope.encode_command(command)

    def handshake_answer(self) -> str:
        return envelope.encode_response(
            200, envelope.CREDENTIALS_TOKEN, {"gid": self.gateway.id, "hash": self.gateway.hash}
        )

    def handle(self, text: str) -> list[str]:
        """One client frame in, the answer frames out; sets close_reason past the budget."""
        try:
            frame = envelope.decode_client_frame(text)
        except ProtocolError as exc:
            # The Go server answers an unparsable frame twice: the parse error, then the
            # unknown (empty) handler (§2.9).
            return [
                self._answer("", Answer(400, f"unable to parse request: {exc}")),
                self._answer("", Answer(400, f"unknown handler in request ({text[:200]})")),
            ]
        self.handled[frame.handler] = self.handled.get(frame.handler, 0) + 1
        method = getattr(self, f"on_{frame.handler}", None) if frame.handler else None
        if frame.handler not in envelope.CLIENT_HANDLERS or method is None:
            answer = Answer(400, f"unknown handler in request ({text[:200]})")
        else:
            try:
                answer = method(frame.payload)
            except ProtocolError as exc:
                answer = Answer(400, str(exc))
        return [self._answer(frame.token, answer)]

    def _answer(self, token: str, answer: Answer) -> str:
        if answer.status == 200:
            self.errors_in_row = 0
        else:
            self.errors_in_row += 1
            self.most_errors_in_row = max(self.most_errors_in_row, self.errors_in_row)
            log.info("gateway %s: %s %s", self.gateway.id, answer.status, answer.payload)
            if self.errors_in_row > self.platform.max_errors and self.close_reason is None:
                self.close_reason = f"too many errors in a row ({self.errors_in_row})"
        return envelope.encode_response(answer.status, token, answer.payload)

    # --- handlers (§2.9) -----------------------------------------------------------------

    def on_clear(self, payload: Any) -> Answer:
        self.gateway.hash = ""
        self.gateway.devices = []
        self.store.save_gateway(self.gateway)
        self.attached.clear()
        return ok()

    def on_put(self, payload: Any) -> Answer:
        if not isinstance(payload, dict):
            raise ProtocolError("put payload must be an object")
        uri, name = payload.get("uri"), payload.get("name", "")
        iot_type, tags = payload.get("iot_type", ""), payload.get("tags") or []
        if not isinstance(uri, str) or not isinstance(name, str) or not isinstance(iot_type, str):
            raise ProtocolError("put payload needs string uri, name and iot_type")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ProtocolError("put tags must be a list of strings")
        # A tag without ":" is wrong syntax to the Go connector: logged, left out, and the
        # put still answers 200 (§2.9).
        tag_map = dict(t.split(":", 1) for t in tags if ":" in t)
        for tag in tags:
            if ":" not in tag:
                log.info("put %s: tag %r ignored (no ':')", uri, tag)
        found = self.store.devices_by_uri(self.user, uri)
        if len(found) > 1:
            return Answer(400, f"more than one device with uri {uri!r}")
        if found:
            device = found[0]
            device.name = name  # set whenever it differs, even to "" (§2.9)
            device.tags = {**device.tags, **tag_map}  # merged, never removed (§8.8)
        else:
            if not iot_type:
                return Answer(500, "empty iot_type")
            types = self.platform.device_types
            if types is not None and iot_type not in types:
                return Answer(500, f"unknown device type {iot_type!r}")
            device = PlatformDevice(f"iot#{uuid.uuid4()}", self.user, uri, name, iot_type, tag_map)
        self.store.save_device(device)
        self.attached[uri] = device.id
        log.info("put %s (%s) on gateway %s", uri, device.type, self.gateway.id)
        return ok()

    def _uri_payload(self, payload: Any, handler: str) -> str:
        if not isinstance(payload, str):
            raise ProtocolError(f"{handler} payload must be a string (the device uri)")
        return payload

    def on_disconnect(self, payload: Any) -> Answer:
        uri = self._uri_payload(payload, "disconnect")
        if uri not in self.attached:
            return Answer(500, f"device {uri!r} is not attached to this session")
        del self.attached[uri]
        return ok()

    def on_delete(self, payload: Any) -> Answer:
        uri = self._uri_payload(payload, "delete")
        self.attached.pop(uri, None)
        found = self.store.devices_by_uri(self.user, uri)
        if len(found) != 1:
            return Answer(500, f"expected one device with uri {uri!r}, found {len(found)}")
        self.store.delete_device(found[0].id)
        return ok()

    def on_commit(self, payload: Any) -> Answer:
        if not isinstance(payload, str):
            raise ProtocolError("commit payload must be a string")
        self.gateway.hash = payload
        self.gateway.devices = list(self.attached.values())
        self.store.save_gateway(self.gateway)
        return ok()

    def on_event(self, payload: Any) -> Answer:
        return self.accept_event(parse_event_payload(payload))

    def accept_event(self, body: EventBody, *, any_service: bool = False) -> Answer:
        """The checks and bookkeeping of an event, whichever dialect carried it;
        `any_service` skips the service check (a 2017 client names none)."""
        if body.device_uri not in self.attached:
            return Answer(
                400,
                f"error event: not listen to this device {{{body.device_uri} "
                f"{body.service_uri} {_go_parts(body.parts)}}}",
            )
        device = self.store.device(self.attached[body.device_uri])
        types = self.platform.device_types
        if device is not None and types is not None and not any_service:
            services = types.get(device.type, frozenset())
            if body.service_uri not in services:
                return Answer(
                    400, f"no service {body.service_uri!r} on device type {device.type!r}"
                )
        # Stored as metadata and data whichever era named them (D10 as amended).
        parts = recognised_parts(body.parts)
        seq = self.store.add_event(
            time.time(), self.gateway.id, body.device_uri, body.service_uri, parts
        )
        record = {
            "seq": seq,
            "device_uri": body.device_uri,
            "service_uri": body.service_uri,
            "parts": parts,
        }
        for callback in self.platform.on_event:
            callback(record)
        return ok()

    def on_response(self, payload: Any) -> Answer:
        self.platform.record_response(payload)
        return ok()


# --- the legacy dialect (Part 2 §1, D4): registration over HTTP, `update`, `change:`
# events and `response:` replies, none of them answered.


class RegistrationError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def register(platform: Platform[Any], body: Any) -> int:
    """`POST /discovery`: 200 with the count, 401 wrong credentials, 400 bad body (D4)."""
    try:
        registration = legacy.parse_registration(body)
    except ProtocolError as exc:
        raise RegistrationError(400, str(exc)) from None
    if not platform.authenticate(registration.user, registration.password):
        raise RegistrationError(401, "wrong credentials")
    types = platform.device_types
    for _, device_type, _ in registration.devices:
        if types is not None and device_type not in types:
            raise RegistrationError(400, f"unknown device type {device_type!r}")
    for device_id, device_type, title in registration.devices:
        found = platform.store.devices_by_uri(registration.user, device_id)
        device = (
            found[0]
            if found
            else PlatformDevice(
                f"iot#{uuid.uuid4()}", registration.user, device_id, title, device_type
            )
        )
        device.name, device.type = title or device.name, device_type
        platform.store.save_device(device)
    log.info(
        "legacy registration of %d devices for user %r",
        len(registration.devices),
        registration.user,
    )
    return len(registration.devices)


class LegacySession(PlatformSession):
    """A session without gateway, tokens or answers. Frames that break the rules are
    logged and counted: the dialect has no way to tell the client."""

    def __init__(self, platform: Platform[Any], user: str, send: Send) -> None:
        gateway = Gateway(id=f"legacy:{user}", owner=user, name="legacy session")
        super().__init__(platform, gateway, user, send)
        self.rejected = 0

    def encode_command(self, command: dict[str, Any]) -> str:
        return legacy.encode_command(command)

    def handle(self, text: str) -> list[str]:
        try:
            frame = legacy.decode_client_frame(text)
            self.handled[frame.kind] = self.handled.get(frame.kind, 0) + 1
            if frame.kind == "update":
                self.listen()
            elif frame.kind == "change":
                self._change(frame.payload)
            else:
                self.platform.record_response(frame.payload)
        except ProtocolError as exc:
            self.rejected += 1
            log.info("legacy session of %r: %s", self.user, exc)
        return []

    def listen(self) -> None:
        """The registered devices of this user are listened to: when the session opens
        (a 2017 client that reconnects registers nothing again, §1.3 step 4) and after
        each `update` (new registrations, §1.4)."""
        for device in self.store.all_devices():
            if device.owner == self.user:
                self.attached[device.uri] = device.id

    def _change(self, payload: Any) -> None:
        # The 2017 client cannot set a message's service (its setter raises), so its events
        # all name the service "": taken for the device's, whichever it is.
        event = legacy.change_as_event(payload)
        answer = self.accept_event(event, any_service=event.service_uri == "")
        if answer.status != 200:
            raise ProtocolError(str(answer.payload))


def open_legacy_session(platform: Platform[Any], first_frame: str, send: Send) -> LegacySession:
    credentials = decode_credentials(first_frame)
    if not platform.authenticate(credentials.user, credentials.password):
        raise Refused(f"wrong credentials for user {credentials.user!r}")
    session = LegacySession(platform, credentials.user, send)
    session.listen()
    platform.sessions.append(session)
    return session


def _go_parts(parts: Mapping[str, str]) -> str:
    """Go's %v of a protocol-part slice, as the real 400 text embeds it: `[{data 1}]`."""
    return "[" + " ".join(f"{{{name} {value}}}" for name, value in parts.items()) + "]"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if number == 0:
            return text


__all__ = ["LegacySession", "Platform", "PlatformSession", "Registry"]
