"""What events, commands and replies carry (protocol Part 2 §2.9, §3; decision D10). Pure."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapter.sepl.envelope import ProtocolError

PART_METADATA = "metadata"
PART_DATA = "data"


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z: `2026-11-23T20:14:04.123Z` (D9, D10)."""
    moment = moment.astimezone(UTC)
    # strftime is the dearest part of an event's metadata and its text changes once a
    # second: it is remembered per second (events come in bursts of the same seconds).
    second = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    prefix = _SECONDS.get(second)
    if prefix is None:
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        _SECONDS[second] = prefix
    return prefix + _MILLIS[moment.microsecond // 1000]


_SECONDS: dict[tuple[int, int, int, int, int, int], str] = {}
_SECONDS_KEPT = 4096  # seconds remembered (cleared when full): about an hour of traffic
_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))


def to_millis(moment: datetime) -> datetime:
    """The instant `format_time` writes: microseconds cut to milliseconds."""
    cut = moment.microsecond % 1000
    # Datetimes are immutable: a moment already on a millisecond is its own answer.
    return moment if cut == 0 else moment.replace(microsecond=moment.microsecond - cut)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def millis_timestamp(moment: datetime) -> float:
    """`to_millis(moment).timestamp()` (the same float: both divide the same integer
    exactly), without building the cut datetime."""
    if moment.tzinfo is None:  # local time: only timestamp() knows the zone's rules
        return to_millis(moment).timestamp()
    return ((moment - _EPOCH) // _MILLISECOND) / 1000


def payload_text(payload: bytes) -> tuple[str, str | None]:
    """The device payload as event text: UTF-8 as is, otherwise base64 (D10)."""
    try:
        return payload.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


def event_metadata(
    *,
    time: datetime,
    topic: str,
    readings: Mapping[str, float],
    primary: str | None,
    encoding: str | None = None,
) -> str:
    fast = _fast_metadata(time, topic, readings, primary, encoding)
    if fast is not None:
        return fast
    body: dict[str, Any] = {
        "time": format_time(time),
        "topic": topic,
        "readings": dict(readings),
        "primary": primary,
    }
    if encoding:
        body["encoding"] = encoding
    return _METADATA_ENCODER.encode(body)


# What json.dumps(body, ensure_ascii=False, separators=(",", ":")) uses, made once: dumps
# builds a new encoder for every call when given arguments.
_METADATA_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# The string and float encodings that encoder uses (C code): encode_basestring for
# ensure_ascii=False, float.__repr__ for finite floats.
_encode_string = json.encoder.encode_basestring
_float_repr = float.__repr__


def _fast_metadata(
    time: datetime,
    topic: str,
    readings: Mapping[str, float],
    primary: str | None,
    encoding: str | None,
) -> str | None:
    """The metadata text of the common case (str topic, str keys, finite float readings,
    as mapping makes them) written directly: the same characters as the encoder gives, at
    a fraction of the cost (the encoder's set-up per call outweighed the work). None for
    anything else, which the encoder then writes."""
    if (
        type(topic) is not str
        or not (primary is None or type(primary) is str)
        or not (encoding is None or type(encoding) is str)
    ):
        return None
    parts = []
    for name, value in readings.items():
        # value - value is 0.0 exactly for finite floats (NaN and infinities give NaN).
        if type(name) is not str or type(value) is not float or value - value != 0.0:
            return None
        parts.append(_encode_string(name) + ":" + _float_repr(value))
    # format_time gives plain ASCII digits and separators: nothing to escape.
    text = (
        '{"time":"'
        + format_time(time)
        + '","topic":'
        + _encode_string(topic)
        + ',"readings":{'
        + ",".join(parts)
        + '},"primary":'
        + ("null" if primary is None else _encode_string(primary))
    )
    if encoding:
        return text + ',"encoding":' + _encode_string(encoding) + "}"
    return text + "}"


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
        return self.parts.get(PART_DATA, self.parts.get("body", ""))

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
