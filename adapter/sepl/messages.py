"""What events, commands and replies carry on the wire (protocol Part 2 §2.9, §3). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.sepl.envelope import ProtocolError

PART_METADATA = "metadata"
PART_DATA = "data"
# The same two parts as the 2017 client names them (Part 2 §1.5; D10 as amended). Readers
# take either name; a part named metadata/data wins over its Era A twin.
PART_HEADER = "header"
PART_BODY = "body"
ERA_A_NAMES = {PART_HEADER: PART_METADATA, PART_BODY: PART_DATA}


def recognised_parts(parts: Mapping[str, str]) -> dict[str, str]:
    """The parts with `header` read as metadata and `body` as data; others as they are."""
    named = dict(parts)
    for era_a, name in ERA_A_NAMES.items():
        if era_a in named:
            value = named.pop(era_a)
            named.setdefault(name, value)
    return named


def event_payload(device_uri: str, service_uri: str, data: str, metadata: str) -> dict[str, Any]:
    """v3/v4 order: metadata part first, then data. Both values are strings (D10)."""
    return {
        "device_uri": device_uri,
        "service_uri": service_uri,
        "value": [
            {"name": PART_METADATA, "value": metadata},
            {"name": PART_DATA, "value": data},
        ],
    }


@dataclass(frozen=True)
class EventBody:
    device_uri: str
    service_uri: str
    parts: dict[str, str]


def parse_event_payload(payload: Any) -> EventBody:
    """Server-side check of an event payload, with the platform's error rules (§2.9)."""
    if not isinstance(payload, dict):
        raise ProtocolError("event payload must be an object")
    device_uri, service_uri = payload.get("device_uri"), payload.get("service_uri")
    if not isinstance(device_uri, str) or not isinstance(service_uri, str):
        raise ProtocolError("event payload needs string device_uri and service_uri")
    value = payload.get("value")
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ProtocolError("event value must be a list of protocol parts")
    parts: dict[str, str] = {}
    for part in value:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise ProtocolError("protocol part must be an object with a string name")
        text = part.get("value")
        if text is None:  # Go decodes null into the empty string
            text = ""
        if not isinstance(text, str):
            raise ProtocolError(f"protocol part {part['name']!r} value must be a string")
        parts[part["name"]] = text
    return EventBody(device_uri, service_uri, parts)


COMMAND_STRING_FIELDS = (
    "device_instance_id",
    "device_url",
    "output_name",
    "service_name",
    "service_url",
    "task_id",
    "time",
    "worker_id",
)


@dataclass(frozen=True)
class Command:
    """A platform command; `raw` is kept untouched so the reply can echo every field (§3.2)."""

    device_uri: str
    service_uri: str
    parts: dict[str, str]
    raw: dict[str, Any] = field(repr=False)

    @property
    def data(self) -> str:
        return self.parts.get(PART_DATA, self.parts.get(PART_BODY, ""))

    @property
    def task_id(self) -> str:
        value = self.raw.get("task_id")
        return value if isinstance(value, str) else ""


def parse_command(payload: Any) -> Command:
    if not isinstance(payload, dict):
        raise ProtocolError("command payload must be an object")
    device_uri, service_uri = payload.get("device_url"), payload.get("service_url")
    if not isinstance(device_uri, str) or not device_uri:
        raise ProtocolError("command needs a non-empty string device_url")
    if not isinstance(service_uri, str):
        raise ProtocolError("command needs a string service_url")
    raw_parts = payload.get("protocol_parts") or []
    if not isinstance(raw_parts, list):
        raise ProtocolError("command protocol_parts must be a list or null")
    parts: dict[str, str] = {}
    for part in raw_parts:
        if isinstance(part, dict) and isinstance(part.get("name"), str):
            value = part.get("value")
            parts[part["name"]] = value if isinstance(value, str) else ""
    return Command(device_uri, service_uri, parts, dict(payload))


def reply_payload(command: Command, data: str | None, metadata: str | None) -> dict[str, Any]:
    """The command object with only protocol_parts replaced (§3.2)."""
    reply = dict(command.raw)
    if data is None and metadata is None:
        reply["protocol_parts"] = None
    else:
        reply["protocol_parts"] = [
            {"name": PART_METADATA, "value": metadata if metadata is not None else ""},
            {"name": PART_DATA, "value": data if data is not None else ""},
        ]
    return reply


def build_command(
    *,
    device_uri: str,
    service_uri: str,
    data: str | None,
    task_id: str,
    device_instance_id: str,
    time: int,
    worker_id: str = "sandbox-worker",
    output_name: str = "sandbox-output",
    service_name: str | None = None,
) -> dict[str, Any]:
    """A command object as the platform builds it (keys in alphabetical order, §3.1)."""
    parts = None if data is None else [{"name": PART_DATA, "value": data}]
    return {
        "device_instance_id": device_instance_id,
        "device_url": device_uri,
        "output_name": output_name,
        "protocol_parts": parts,
        "service_name": service_name if service_name is not None else service_uri,
        "service_url": service_uri,
        "task_id": task_id,
        "time": str(time),
        "worker_id": worker_id,
    }
