"""The sandbox platform's protocol logic: what the Go connector does with each frame
(protocol Part 2 §2.6-§2.11, §3, D11). No sockets here; the server shell feeds frames in
and writes out what comes back.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.sandbox.store import Gateway, PlatformDevice, SandboxStore
from adapter.sepl import envelope
from adapter.sepl.envelope import Credentials, ProtocolError
from adapter.sepl.messages import EventBody, build_command, parse_event_payload

log = logging.getLogger("adapter.sandbox")

Send = Callable[[str], None]


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


@dataclass
class Platform:
    store: SandboxStore
    # device type id -> service URIs; None accepts any type and service (D11 off)
    device_types: Mapping[str, frozenset[str]] | None = None
    users: Mapping[str, str] | None = None  # None: any credentials are accepted
    max_errors: int = 5
    sessions: list[PlatformSession] = field(default_factory=list)
    on_response: list[Callable[[CommandRecord], None]] = field(default_factory=list)
    on_event: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    pending: dict[str, CommandRecord] = field(default_factory=dict)

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
    def __init__(self, platform: Platform, gateway: Gateway, user: str, send: Send) -> None:
        self.platform = platform
        self.gateway = gateway
        self.user = user
        self.send = send
        self.attached: dict[str, str] = {}  # device uri -> platform device id
        self.errors_in_row = 0
        self.client_pings = False  # once the client pings, the server stops pinging (§2.10)
        self.close_reason: str | None = None
        self.handled: dict[str, int] = {}

    @property
    def store(self) -> SandboxStore:
        return self.platform.store

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
        tag_map = dict(t.split(":", 1) if ":" in t else (t, "") for t in tags)
        found = self.store.devices_by_uri(self.user, uri)
        if len(found) > 1:
            return Answer(400, f"more than one device with uri {uri!r}")
        if found:
            device = found[0]
            device.name = name or device.name
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

    def accept_event(self, body: EventBody) -> Answer:
        """The checks and bookkeeping of an event, whichever dialect carried it."""
        if body.device_uri not in self.attached:
            return Answer(
                400,
                f"error event: not listen to this device {{{body.device_uri} "
                f"{body.service_uri} {_go_parts(body.parts)}}}",
            )
        device = self.store.device(self.attached[body.device_uri])
        types = self.platform.device_types
        if device is not None and types is not None:
            services = types.get(device.type, frozenset())
            if body.service_uri not in services:
                return Answer(
                    400, f"no service {body.service_uri!r} on device type {device.type!r}"
                )
        seq = self.store.add_event(
            time.time(), self.gateway.id, body.device_uri, body.service_uri, body.parts
        )
        record = {
            "seq": seq,
            "device_uri": body.device_uri,
            "service_uri": body.service_uri,
            "parts": body.parts,
        }
        for callback in self.platform.on_event:
            callback(record)
        return ok()

    def on_response(self, payload: Any) -> Answer:
        self.platform.record_response(payload)
        return ok()


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


def describe_event(record: Mapping[str, Any]) -> str:
    parts = record["parts"]
    data = parts.get("data", "")
    return f"event {record['device_uri']} {record['service_uri']} data={data[:160]}"


__all__ = ["Platform", "PlatformSession"]
