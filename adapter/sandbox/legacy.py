"""The sandbox's side of the legacy dialect (protocol Part 2 §1, D4): registration over
HTTP, `update`, `change:` events and `response:` replies, none of them answered."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from adapter.sandbox.platform import Platform, PlatformSession, Refused, Send
from adapter.sandbox.store import Gateway, PlatformDevice
from adapter.sepl import legacy
from adapter.sepl.envelope import ProtocolError, decode_credentials

log = logging.getLogger("adapter.sandbox")


class RegistrationError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def register(platform: Platform, body: Any) -> int:
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

    def __init__(self, platform: Platform, user: str, send: Send) -> None:
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
                self._update()
            elif frame.kind == "change":
                self._change(frame.payload)
            else:
                self.platform.record_response(frame.payload)
        except ProtocolError as exc:
            self.rejected += 1
            log.info("legacy session of %r: %s", self.user, exc)
        return []

    def _update(self) -> None:
        # The registered devices of this user are listened to from now on (§1.4).
        for device in self.store.all_devices():
            if device.owner == self.user:
                self.attached[device.uri] = device.id

    def _change(self, payload: Any) -> None:
        answer = self.accept_event(legacy.change_as_event(payload))
        if answer.status != 200:
            raise ProtocolError(str(answer.payload))


def open_legacy_session(platform: Platform, first_frame: str, send: Send) -> LegacySession:
    credentials = decode_credentials(first_frame)
    if not platform.authenticate(credentials.user, credentials.password):
        raise Refused(f"wrong credentials for user {credentials.user!r}")
    session = LegacySession(platform, credentials.user, send)
    platform.sessions.append(session)
    return session
