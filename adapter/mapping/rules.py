"""Compiled mapping rules and the pure work they do on a message: decode the payload,
test conditions, extract readings and the device's timestamp, fill templates."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from math import isfinite
from typing import Any

from adapter import fastjson
from adapter.mapping.paths import Search, compile_search
from adapter.sepl.device import Device, normalise_tag_text
from adapter.topic import TopicPattern, render_template, template_regex

PAYLOAD_KINDS = ("json", "text", "number", "boolean", "raw")
ON_WORDS = frozenset({"on", "true", "1", "online", "yes", "open"})
OFF_WORDS = frozenset({"off", "false", "0", "offline", "no", "closed"})


class DecodeError(ValueError):
    """The payload is not what the rule says it is (e.g. `payload: json` but not JSON)."""


_MISSING = object()


class Path:
    """A JMESPath expression, or `@` for the whole decoded payload. `function` is its
    search as a plain function, which the per-message code calls directly."""

    def __init__(self, text: str, expr: Any) -> None:
        self.text = text
        self._expr = expr
        # Paths in JMESPath's common subset (ENERGY.Power[0] || ENERGY.Power) run as
        # compiled closures: jmespath's tree walk was most of the cost of a message.
        parsed = getattr(expr, "parsed", None)
        compiled = compile_search(parsed) if isinstance(parsed, dict) else None
        self.function: Search = (
            _whole if expr is None else compiled if compiled is not None else self._jmespath
        )

    def search(self, document: Any) -> Any:
        return self.function(document)

    def _jmespath(self, document: Any) -> Any:
        try:
            return self._expr.search(document)
        except Exception:  # jmespath raises on type mismatches in functions
            return None

    def __repr__(self) -> str:
        return f"Path({self.text!r})"


def _whole(document: Any) -> Any:
    return document


def decode_payload(kind: str, payload: bytes) -> Any:
    """The payload as the rule's conditions and readings see it."""
    if kind == "raw":
        return payload
    if kind == "json":
        try:
            return fastjson.loads(payload)
        except UnicodeDecodeError:
            raise DecodeError("payload is not valid UTF-8") from None
        except ValueError as exc:
            raise DecodeError(f"payload is not JSON: {exc}") from None
        except RecursionError:
            raise DecodeError("payload is JSON nested too deeply to read") from None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("payload is not valid UTF-8") from None
    if kind == "number":
        number = as_number(text)
        if number is None:
            raise DecodeError(f"payload is not a number: {text[:40]!r}")
        return number
    if kind == "boolean":
        word = text.strip().lower()
        if word in ON_WORDS:
            return True
        if word in OFF_WORDS:
            return False
        raise DecodeError(f"payload is not a boolean word: {text[:40]!r}")
    return text


def as_number(value: Any, scale: float = 1.0) -> float | None:
    """Numbers, numeric strings (OpenMQTTGateway sends "19.2") and booleans as 1/0."""
    # The usual reading is a JSON float or int: straight to the answer. A non-finite
    # number stays non-finite when scaled, so one check on the product is enough.
    kind = value.__class__
    if kind is float:
        number = value * scale
        return number if isfinite(number) else None
    if kind is int:
        try:
            number = float(value) * scale
        except OverflowError:  # a 400-digit JSON integer
            return None
        return number if isfinite(number) else None
    if isinstance(value, bool):
        number = 1.0 if value else 0.0
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # a 400-digit JSON integer
            return None
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "true"):
            number = 1.0
        elif word in ("off", "false"):
            number = 0.0
        else:
            try:
                number = float(word)
            except ValueError:
                return None
    else:
        return None
    if not isfinite(number) or not isfinite(number * scale):
        return None
    return number * scale


@dataclass(frozen=True)
class Condition:
    """`when:` — the message is taken only if every condition holds."""

    path: Path
    equals: Any = _MISSING
    one_of: tuple[Any, ...] | None = None
    exists: bool | None = None

    def holds(self, document: Any) -> bool:
        value = self.path.function(document)
        if self.exists is not None and (value is not None) != self.exists:
            return False
        if self.equals is not _MISSING and value != self.equals:
            return False
        return self.one_of is None or value in self.one_of

    def describe(self) -> str:
        if self.exists is not None:
            return f"{self.path.text} {'exists' if self.exists else 'is absent'}"
        if self.one_of is not None:
            return f"{self.path.text} in {list(self.one_of)!r}"
        return f"{self.path.text} == {self.equals!r}"


@dataclass(frozen=True)
class Reading:
    """A named number of a message. `unit` is the unit it is reported in (after the
    conversion of adapter/mapping/units.py, already folded into `scale`); `unit_path`
    reads the device's unit from the message itself (Tasmota's TempUnit) instead."""

    name: str
    path: Path
    scale: float = 1.0
    unit: str | None = None
    unit_path: Path | None = None

    def extract(self, document: Any) -> float | None:
        return as_number(self.path.function(document), self.scale)


@dataclass(frozen=True)
class AllReadings:
    """`all_readings`: every number, boolean and on/off word at the top level of a JSON
    object becomes a reading named after its key, unless excluded; units from `units`,
    else from the property's name (units.PROPERTY_UNITS)."""

    exclude: frozenset[str] = frozenset()
    units: tuple[tuple[str, str], ...] = ()
    names: tuple[tuple[str, str], ...] = ()  # property -> reading name


@dataclass(frozen=True)
class Channel:
    """`channel:` — the rule's readings belong to one channel of a multi-channel device
    (a Shelly's relay {n}): their names get `_<channel>`, except on the `main` channel, so a
    one-relay device reads `power` and relay 1 of two reads `power_1`."""

    template: str
    main: str = "0"

    def suffix(self, values: Mapping[str, str]) -> str:
        channel = render_template(self.template, dict(values))
        return "" if channel in ("", self.main) else f"_{channel}"


@dataclass(frozen=True)
class Timestamp:
    """Where the device's own time stands, and the zone of a time without offset (D10)."""

    path: Path
    zone: tzinfo

    def extract(self, document: Any) -> datetime | None:
        return parse_device_time(self.path.function(document), self.zone)


_OLD_TASMOTA = re.compile(r"^\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d$")


def parse_device_time(value: Any, zone: tzinfo) -> datetime | None:
    """ISO-8601 with or without offset, Tasmota's old `2018.02.15 01:00:50`, or epoch
    seconds/milliseconds (Tasmota `Time 3`, Shelly `ts`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = value / 1000.0 if value > 1e11 else float(value)
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _OLD_TASMOTA.match(text):
        text = text.replace(".", "-", 2).replace(" ", "T")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):  # 0001-01-01 at +01:00 is before year 1 in UTC
        return None


@dataclass(frozen=True)
class Availability:
    path: Path
    online: tuple[Any, ...]
    offline: tuple[Any, ...]

    def state(self, document: Any) -> bool | None:
        value = self.path.function(document)
        if isinstance(value, str):
            value = value.strip()
        if value in self.online:
            return True
        if value in self.offline:
            return False
        return None


@dataclass(frozen=True)
class DeviceTemplate:
    uri: str
    name: str
    device_type: str
    tags: tuple[tuple[str, str], ...]

    def render(self, values: Mapping[str, str], prefix: str) -> Device:
        values = dict(values)
        uri = render_template(self.uri, values)
        if prefix:
            uri = f"{prefix}:{uri}"
        tags = tuple(
            (
                normalise_tag_text(render_template(k, values)),
                normalise_tag_text(render_template(v, values)),
            )
            for k, v in self.tags
        )
        if tags == self.tags:
            tags = self.tags  # one tuple for every device of the rule, not one each
        return Device(uri, render_template(self.name, values), self.device_type, tags)


@dataclass(frozen=True)
class Rule:
    id: str
    where: str
    pattern: TopicPattern
    device: DeviceTemplate
    service: str
    payload: str
    readings: tuple[Reading, ...] = ()
    primary: str | None = None
    priority: int = 0
    when: tuple[Condition, ...] = ()
    timestamp: Timestamp | None = None
    availability: Availability | None = None
    ignore: bool = False  # takes the topic and drops the message: no event, no device
    all_readings: AllReadings | None = None
    # `primary` as a list of preferences: the first one the message has is its primary.
    primaries: tuple[str, ...] = ()
    convention: str | None = None  # a family convention's readings (mapping/conventions.py)
    channel: Channel | None = None

    @property
    def renames(self) -> bool:
        """Do the reading names depend on the topic (a `{placeholder}` or a channel)?"""
        return self.channel is not None or any("{" in r.name for r in self.readings)

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Higher wins: priority, then fewer wildcards, then more literal levels."""
        return (self.priority, -self.pattern.wildcards, self.pattern.literal_levels)

    @property
    def forwards(self) -> bool:
        """Does the rule send events (not availability, not ignore)?"""
        return self.availability is None and not self.ignore


@dataclass(frozen=True)
class Reply:
    topic: str
    timeout: float
    match: tuple[Condition, ...] = ()
    payload: str = "json"
    data: Path | None = None  # None: the reply payload as it came


class CommandRefused(ValueError):
    """The command's data does not fit the rule (a channel the device does not have)."""


@dataclass(frozen=True)
class CommandChannel:
    """`channel:` of a command: which channel (relay 2, switch:1, a named ESPHome switch)
    the command's data names; it fills the `{channel}` placeholder."""

    pattern: re.Pattern[str]
    default: str | None  # None: the data must name one

    def pick(self, data: str, known: Sequence[str] = ()) -> str:
        """The channel from the data: `2`, `"2"`, `{"channel": 2}`; empty: the default, or
        without one the device's only channel (`known`: the channels it has reported)."""
        text = data.strip()
        if text.startswith(("{", '"')):
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                decoded = decoded.get("channel", "")
            if isinstance(decoded, str | int) and not isinstance(decoded, bool):
                text = str(decoded).strip()
        if not text:
            if self.default is not None:
                return self.default
            fitting = [k for k in known if self.pattern.fullmatch(k) is not None]
            if len(fitting) == 1:
                return fitting[0]
            raise CommandRefused(
                f"name the channel in the command's data ({self.pattern.pattern})"
                + (f"; the device has {', '.join(sorted(fitting))}" if fitting else "")
            )
        if self.pattern.fullmatch(text) is None:
            raise CommandRefused(
                f"channel {text[:40]!r} is not one of this device's ({self.pattern.pattern})"
            )
        return text


@dataclass(frozen=True)
class CommandRule:
    id: str
    where: str
    service: str
    device: str  # device uri template, e.g. "tasmota:{topic}"
    device_type: str
    topic: str
    payload: Any  # a text template, or a JSON structure whose strings are templates
    qos: int
    reply: Reply | None
    _device_regex: re.Pattern[str] = field(repr=False, compare=False)
    channel: CommandChannel | None = None

    def device_values(self, uri: str, prefix: str) -> dict[str, str] | None:
        if prefix:
            if not uri.startswith(prefix + ":"):
                return None
            uri = uri[len(prefix) + 1 :]
        match = self._device_regex.fullmatch(uri)
        return None if match is None else match.groupdict()


def fill(template: Any, values: Mapping[str, str]) -> Any:
    """Fill a template; in a JSON structure only string leaves are templates, and a leaf
    that is exactly `{channel}` with a number for channel is that number (a Shelly RPC's
    `params.id`)."""
    if template == "{channel}" and values.get("channel", "").isdigit():
        return int(values["channel"])
    if isinstance(template, str):
        return render_template(template, dict(values))
    if isinstance(template, dict):
        return {fill(k, values): fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    return template


def render_payload(template: Any, values: Mapping[str, str]) -> str:
    filled = fill(template, values)
    return filled if isinstance(filled, str) else json.dumps(filled, separators=(",", ":"))


def command_regex(template: str) -> re.Pattern[str]:
    return template_regex(template)
