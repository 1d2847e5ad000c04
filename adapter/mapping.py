"""Mapping files: YAML rules that turn MQTT messages into SEPL devices and events, and
SEPL commands into MQTT publishes. Compilation and matching are pure; only
`load_directory` reads files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jmespath
import yaml
from jmespath.exceptions import JMESPathError
from paho.mqtt.matcher import MQTTMatcher

from adapter.config import parse_duration
from adapter.sepl.device import Device, normalise_tag_text
from adapter.sepl.messages import event_metadata, payload_text
from adapter.topic import (
    TopicError,
    TopicPattern,
    placeholders,
    render_template,
    template_regex,
    validate_topic_name,
)

PAYLOAD_KINDS = ("json", "text", "number", "boolean", "raw")
DEFAULT_SERVICE = "sepl_get"


class MappingError(ValueError):
    """A mapping file is wrong; the message starts with `file:line:column:`."""


# --- YAML with positions -----------------------------------------------------------------


class _Node(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys stand."""

    where: str = "?"
    key_where: dict[str, str]


class _Loader(yaml.SafeLoader):
    filename = "?"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Node:
    result = _Node()
    result.where = _pos(loader.filename, node.start_mark)
    result.key_where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise MappingError(
                f"{_pos(loader.filename, key_node.start_mark)}: keys must be text, got {key!r}"
            )
        if key in result:
            raise MappingError(
                f"{_pos(loader.filename, key_node.start_mark)}: duplicate key {key!r}"
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_where[key] = _pos(loader.filename, key_node.start_mark)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _pos(filename: str, mark: Any) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"


def _parse_yaml(text: str, filename: str) -> Any:
    loader = _Loader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _pos(filename, mark) if mark is not None else filename
        raise MappingError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    finally:
        loader.dispose()


class _Reader:
    """Typed access to one YAML mapping with errors that point at the offending key."""

    def __init__(self, node: Any, where: str, what: str, allowed: set[str]) -> None:
        if not isinstance(node, _Node):
            raise MappingError(f"{where}: {what} must be a mapping")
        self.node, self.what = node, what
        for key in node:
            if key not in allowed:
                raise MappingError(
                    f"{node.key_where[key]}: unknown key {key!r} in {what}; "
                    f"expected one of {', '.join(sorted(allowed))}"
                )

    def at(self, key: str) -> str:
        return self.node.key_where.get(key, self.node.where)

    def get(self, key: str, default: Any = None) -> Any:
        return self.node.get(key, default)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.node.get(key, default)
        if value is None:
            raise MappingError(f"{self.node.where}: {self.what} needs {key!r}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise MappingError(f"{self.at(key)}: {key!r} must be text")
        return str(value)

    def fail(self, key: str, message: str) -> MappingError:
        return MappingError(f"{self.at(key)}: {message}")


# --- compiled rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    name: str
    path: str
    scale: float
    _expr: Any = field(repr=False, compare=False)

    def extract(self, document: Any) -> float | None:
        value = self._expr.search(document) if self.path != "@" else document
        return _as_number(value, self.scale)


def _as_number(value: Any, scale: float = 1.0) -> float | None:
    if isinstance(value, (bool, int | float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number):
        return None
    return number * scale


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
        return Device(uri, render_template(self.name, values), self.device_type, tags)


@dataclass(frozen=True)
class Rule:
    id: str
    where: str
    pattern: TopicPattern
    device: DeviceTemplate
    service: str
    payload: str
    readings: tuple[Reading, ...]
    primary: str | None
    priority: int = 0

    @property
    def specificity(self) -> tuple[int, int, int]:
        return (self.priority, -self.pattern.wildcards, self.pattern.literal_levels)


@dataclass(frozen=True)
class Reply:
    topic: str
    timeout: float


@dataclass(frozen=True)
class CommandRule:
    id: str
    where: str
    service: str
    device: str  # device uri template, e.g. "tasmota:{device}"
    topic: str
    payload: str  # template; {data} is the command's data
    qos: int
    reply: Reply | None

    def device_values(self, uri: str, prefix: str) -> dict[str, str] | None:
        if prefix:
            if not uri.startswith(prefix + ":"):
                return None
            uri = uri[len(prefix) + 1 :]
        match = template_regex(self.device).fullmatch(uri)
        return None if match is None else match.groupdict()


@dataclass(frozen=True)
class Mapped:
    rule: Rule
    device: Device
    service: str
    data: str
    metadata: str
    readings: dict[str, float]
    time: datetime


@dataclass(frozen=True)
class PublishPlan:
    rule: CommandRule
    topic: str
    payload: str
    reply_topic: str | None


class MappingSet:
    def __init__(self, rules: list[Rule], commands: list[CommandRule], prefix: str = "") -> None:
        self.rules = rules
        self.commands = commands
        self.prefix = prefix
        self._matcher = MQTTMatcher()  # type: ignore[no-untyped-call]
        by_filter: dict[str, list[Rule]] = {}
        for rule in rules:
            by_filter.setdefault(rule.pattern.mqtt_filter, []).append(rule)
        for topic_filter, group in by_filter.items():
            self._matcher[topic_filter] = group

    @property
    def filters(self) -> list[str]:
        return sorted({rule.pattern.mqtt_filter for rule in self.rules})

    def match(self, topic: str) -> tuple[Rule, dict[str, str]] | None:
        best: tuple[Rule, dict[str, str]] | None = None
        for group in self._matcher.iter_match(topic):  # type: ignore[no-untyped-call]
            for rule in group:
                values = rule.pattern.match(topic)
                if values is not None and (best is None or rule.specificity > best[0].specificity):
                    best = (rule, values)
        return best

    def map(self, topic: str, payload: bytes, received: datetime) -> Mapped | None:
        """A message to an event, or None when no rule takes the topic."""
        found = self.match(topic)
        if found is None:
            return None
        rule, values = found
        device = rule.device.render(values, self.prefix)
        data, encoding = payload_text(payload)
        readings = extract_readings(rule, payload, encoding is None)
        primary = rule.primary if rule.primary in readings else None
        metadata = event_metadata(
            time=received, topic=topic, readings=readings, primary=primary, encoding=encoding
        )
        return Mapped(rule, device, rule.service, data, metadata, readings, received)

    def plan_command(self, device_uri: str, service: str, data: str) -> PublishPlan | None:
        for rule in self.commands:
            if rule.service != service:
                continue
            values = rule.device_values(device_uri, self.prefix)
            if values is None:
                continue
            values = {**values, "data": data}
            reply = None if rule.reply is None else render_template(rule.reply.topic, values)
            return PublishPlan(
                rule,
                render_template(rule.topic, values),
                render_template(rule.payload, values),
                reply,
            )
        return None

    def device_types(self) -> dict[str, frozenset[str]]:
        """Device types and their services, as the sandbox's registry (D11)."""
        types: dict[str, set[str]] = {}
        for rule in self.rules:
            types.setdefault(rule.device.device_type, set()).add(rule.service)
        for command in self.commands:
            for rule in self.rules:
                if _same_family(command.device, rule.device.uri):
                    types.setdefault(rule.device.device_type, set()).add(command.service)
        return {name: frozenset(services) for name, services in types.items()}


def _same_family(command_device: str, rule_device: str) -> bool:
    return template_regex(command_device).pattern == template_regex(rule_device).pattern


def extract_readings(rule: Rule, payload: bytes, is_text: bool) -> dict[str, float]:
    if not rule.readings or not is_text:
        return {}
    text = payload.decode("utf-8")
    document: Any
    if rule.payload == "json":
        try:
            document = json.loads(text)
        except ValueError:
            return {}
    elif rule.payload == "boolean":
        lowered = text.strip().lower()
        document = 1.0 if lowered in ("on", "true", "1", "online", "yes") else 0.0
    else:
        document = text
    readings: dict[str, float] = {}
    for reading in rule.readings:
        value = reading.extract(document)
        if value is not None:
            readings[reading.name] = value
    return readings


# --- compilation -------------------------------------------------------------------------

FILE_KEYS = {"family", "device_type", "rules", "commands", "description"}
RULE_KEYS = {
    "id",
    "topic",
    "device",
    "service",
    "payload",
    "readings",
    "primary",
    "priority",
    "device_type",
}
DEVICE_KEYS = {"uri", "name", "tags", "type"}
COMMAND_KEYS = {"id", "service", "device", "publish", "reply"}
PUBLISH_KEYS = {"topic", "payload", "qos"}
REPLY_KEYS = {"topic", "timeout"}


def compile_text(text: str, filename: str) -> tuple[list[Rule], list[CommandRule]]:
    doc = _parse_yaml(text, filename)
    if doc is None:
        return [], []
    top = _Reader(doc, f"{filename}:1:1", "a mapping file", FILE_KEYS)
    family = top.text("family", "")
    default_type = top.text("device_type", f"iot#{family or 'generic'}")
    rules = [
        _compile_rule(node, top, i, family, default_type)
        for i, node in enumerate(_list(top, "rules"))
    ]
    commands = [_compile_command(node, top, i) for i, node in enumerate(_list(top, "commands"))]
    return rules, commands


def _list(reader: _Reader, key: str) -> list[Any]:
    value = reader.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise reader.fail(key, f"{key!r} must be a list")
    return value


def _compile_rule(node: Any, top: _Reader, index: int, family: str, default_type: str) -> Rule:
    where = node.where if isinstance(node, _Node) else top.at("rules")
    r = _Reader(node, where, f"rule #{index + 1}", RULE_KEYS)
    rule_id = r.text("id", f"rule-{index + 1}")
    try:
        pattern = TopicPattern.compile(r.text("topic"))
    except TopicError as exc:
        raise r.fail("topic", f"invalid topic pattern: {exc}") from None
    device_node = r.get("device")
    if device_node is None:
        first = pattern.names[0] if pattern.names else None
        if first is None:
            raise MappingError(f"{where}: rule {rule_id!r} needs 'device' (no placeholder)")
        device_node = _Node(uri=f"{family}:{{{first}}}" if family else f"{{{first}}}")
        device_node.where, device_node.key_where = where, {}
    d = _Reader(device_node, r.at("device"), f"device of rule {rule_id!r}", DEVICE_KEYS)
    uri = d.text("uri")
    for name in placeholders(uri) + placeholders(d.text("name", uri)):
        if name not in pattern.names:
            raise d.fail("uri", f"placeholder {{{name}}} is not in topic {pattern.text!r}")
    tags_node = d.get("tags", {}) or {}
    if not isinstance(tags_node, dict):
        raise d.fail("tags", "tags must be a mapping of text to text")
    device = DeviceTemplate(
        uri=uri,
        name=d.text("name", uri),
        device_type=d.text("type", r.text("device_type", default_type)),
        tags=tuple((str(k), str(v)) for k, v in tags_node.items()),
    )
    payload = r.text("payload", "json")
    if payload not in PAYLOAD_KINDS:
        raise r.fail("payload", f"payload must be one of {', '.join(PAYLOAD_KINDS)}")
    readings_node = r.get("readings", {}) or {}
    if not isinstance(readings_node, dict):
        raise r.fail("readings", "readings must map a name to a path")
    key_where = readings_node.key_where if isinstance(readings_node, _Node) else {}
    readings = []
    for name, spec in readings_node.items():
        where_reading = key_where.get(name, r.at("readings"))
        path, scale = spec, 1.0
        if isinstance(spec, dict):
            path, scale = spec.get("path", "@"), spec.get("scale", 1.0)
        if not isinstance(path, str) or not isinstance(scale, int | float):
            raise MappingError(
                f"{where_reading}: reading {name!r} needs a path (and a number scale)"
            )
        try:
            expr = jmespath.compile(path) if path != "@" else None
        except JMESPathError as exc:
            raise MappingError(
                f"{where_reading}: reading {name!r}: bad path {path!r}: {exc}"
            ) from None
        readings.append(Reading(str(name), path, float(scale), expr))
    primary = r.get("primary")
    if primary is None and readings:
        primary = readings[0].name
    if primary is not None and primary not in {x.name for x in readings}:
        raise r.fail("primary", f"primary {primary!r} is not one of the readings")
    priority = r.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise r.fail("priority", "priority must be an integer")
    return Rule(
        rule_id,
        where,
        pattern,
        device,
        r.text("service", DEFAULT_SERVICE),
        payload,
        tuple(readings),
        primary,
        priority,
    )


def _compile_command(node: Any, top: _Reader, index: int) -> CommandRule:
    where = node.where if isinstance(node, _Node) else top.at("commands")
    c = _Reader(node, where, f"command #{index + 1}", COMMAND_KEYS)
    service = c.text("service")
    device = c.text("device")
    p = _Reader(c.get("publish"), c.at("publish"), f"publish of command {service!r}", PUBLISH_KEYS)
    topic = p.text("topic")
    allowed = set(placeholders(device)) | {"data"}
    for name in placeholders(topic) + placeholders(p.text("payload", "{data}")):
        if name not in allowed:
            raise p.fail("topic", f"placeholder {{{name}}} is not in device {device!r} or data")
    try:
        validate_topic_name(topic.replace("{", "").replace("}", ""))
    except TopicError as exc:
        raise p.fail("topic", str(exc)) from None
    qos = p.get("qos", 1)
    if qos not in (0, 1, 2):
        raise p.fail("qos", "qos must be 0, 1 or 2")
    reply = None
    if c.get("reply") is not None:
        rp = _Reader(c.get("reply"), c.at("reply"), f"reply of command {service!r}", REPLY_KEYS)
        try:
            timeout = parse_duration(rp.text("timeout", "5s"))
        except ValueError as exc:
            raise rp.fail("timeout", str(exc)) from None
        reply = Reply(rp.text("topic"), timeout)
    return CommandRule(
        c.text("id", f"command-{index + 1}"),
        where,
        service,
        device,
        topic,
        p.text("payload", "{data}"),
        int(qos),
        reply,
    )


def load_directory(directory: Path, device_prefix: str = "") -> MappingSet:
    rules: list[Rule] = []
    commands: list[CommandRule] = []
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MappingError(f"{path}: cannot read: {exc}") from None
        file_rules, file_commands = compile_text(text, str(path))
        rules += file_rules
        commands += file_commands
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in seen:
            raise MappingError(
                f"{rule.where}: rule id {rule.id!r} already used at {seen[rule.id].where}"
            )
        seen[rule.id] = rule
    return MappingSet(rules, commands, device_prefix)
