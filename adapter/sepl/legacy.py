"""The legacy dialect (protocol Part 2 §1, "Era A"; decisions D1, D4): a pure codec.

Prefixed text frames with a flat JSON object, no tokens and no acknowledgements: a frame
that was written counts as delivered (at-most-once). Devices are registered over HTTP
(`POST /discovery`), followed by the bare frame `update`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from adapter.sepl.device import Device
from adapter.sepl.envelope import ProtocolError, go_json
from adapter.sepl.messages import (
    ERA_A_NAMES,
    PART_BODY,
    PART_HEADER,
    Command,
    EventBody,
    parse_command,
    parse_event_payload,
)

UPDATE_FRAME = "update"
CHANGE_PREFIX = "change:"
RESPONSE_PREFIX = "response:"
COMMAND_PREFIX = "command:"  # not sent by the historical server, tolerated (D4)


# --- client side -------------------------------------------------------------------------


def encode_credentials(user: str, password: str) -> str:
    return json.dumps({"user": user, "pw": password})


def registration_body(user: str, password: str, devices: Iterable[Device]) -> dict[str, Any]:
    return {
        "credentials": {"user": user, "pw": password},
        "devices": [{"id": d.uri, "zway_type": d.device_type, "title": d.name} for d in devices],
    }


def encode_change(
    device_uri: str, service_uri: str, data: str, metadata: str, now: float | None = None
) -> str:
    """An event: the flat command structure with an empty task_id (Part 2 §1.5)."""
    body = {
        "device_url": device_uri,
        "service_url": service_uri,
        "service_name": service_uri,
        "time": str(int(time.time() if now is None else now)),
        "task_id": "",
        "protocol_parts": era_a_parts(metadata, data),
        "device_instance_id": "",
        "worker_id": "",
        "output_name": "",
    }
    return CHANGE_PREFIX + json.dumps(body, ensure_ascii=False)


def era_a_parts(metadata: str | None, data: str | None) -> list[dict[str, str]]:
    """`header` (the metadata) then `body` (the data), as the 2017 client writes them; a
    part whose value would be empty is left out (Part 2 §1.5; D10 as amended)."""
    return [
        {"name": name, "value": value}
        for name, value in ((PART_HEADER, metadata), (PART_BODY, data))
        if value
    ]


def encode_reply(command: Command, data: str | None, metadata: str | None) -> str:
    """The command's object with its parts replaced by the reply's (§1.5, §3.2)."""
    reply = {**command.raw, "protocol_parts": era_a_parts(metadata, data)}
    return RESPONSE_PREFIX + json.dumps(reply, ensure_ascii=False)


def decode_command(text: str) -> Command:
    """Inbound commands are bare JSON; a `command:` prefix is tolerated (D4)."""
    body = text[len(COMMAND_PREFIX) :] if text.startswith(COMMAND_PREFIX) else text
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"legacy command is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("legacy command is JSON nested too deeply") from None
    return parse_command(payload)


# --- server side -------------------------------------------------------------------------


def is_legacy_credentials(text: str) -> bool:
    """Era A credentials carry only user and pw; the envelope's carry a token too."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "token" not in obj and "user" in obj


@dataclass(frozen=True)
class Frame:
    kind: str  # "update", "change" or "response"
    payload: Any


def decode_client_frame(text: str) -> Frame:
    if text == UPDATE_FRAME:
        return Frame("update", None)
    for prefix, kind in ((CHANGE_PREFIX, "change"), (RESPONSE_PREFIX, "response")):
        if text.startswith(prefix):
            try:
                return Frame(kind, json.loads(text[len(prefix) :]))
            except ValueError as exc:
                raise ProtocolError(f"{kind} frame is not JSON: {exc}") from None
            except RecursionError:
                raise ProtocolError(f"{kind} frame is JSON nested too deeply") from None
    raise ProtocolError(f"unknown legacy frame: {text[:80]!r}")


def change_as_event(payload: Any) -> EventBody:
    """The event a `change:` body carries, with the envelope's event checks."""
    if not isinstance(payload, dict):
        raise ProtocolError("change payload must be an object")
    return parse_event_payload(
        {
            "device_uri": payload.get("device_url"),
            "service_uri": payload.get("service_url"),
            "value": payload.get("protocol_parts"),
        }
    )


def encode_command(command: dict[str, Any]) -> str:
    """A platform command as bare JSON, its parts under their Era A names: the 2017 client
    reads the payload from `body`."""
    era_a = {name: old for old, name in ERA_A_NAMES.items()}
    parts = command.get("protocol_parts")
    if isinstance(parts, list):
        renamed = [
            {**part, "name": era_a.get(part["name"], part["name"])}
            if isinstance(part, dict) and isinstance(part.get("name"), str)
            else part
            for part in parts
        ]
        command = {**command, "protocol_parts": renamed}
    return go_json(command)


@dataclass(frozen=True)
class Registration:
    user: str
    password: str
    devices: list[tuple[str, str, str]]  # (id, type, title)


def parse_registration(body: Any) -> Registration:
    if not isinstance(body, dict):
        raise ProtocolError("registration body must be an object")
    credentials, devices = body.get("credentials"), body.get("devices")
    if not isinstance(credentials, dict):
        raise ProtocolError("registration needs 'credentials' {user, pw}")
    user, password = credentials.get("user", ""), credentials.get("pw", "")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ProtocolError("credentials user and pw must be strings")
    if not isinstance(devices, list):
        raise ProtocolError("registration needs a list 'devices'")
    parsed = []
    for device in devices:
        if not isinstance(device, dict):
            raise ProtocolError("each device must be an object {id, zway_type, title}")
        fields = (device.get("id"), device.get("zway_type"), device.get("title", ""))
        if not all(isinstance(f, str) for f in fields) or not fields[0]:
            raise ProtocolError("device id, zway_type and title must be strings")
        parsed.append((str(fields[0]), str(fields[1]), str(fields[2])))
    return Registration(user, password, parsed)
