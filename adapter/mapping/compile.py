"""Mapping files and documents to compiled rules: the schema, checked key by key, with
`file:line:col` (or a document's source name) in every error."""

from __future__ import annotations

import functools
import math
import re
import sys
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, tzinfo
from pathlib import Path as FilePath
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from adapter.config import parse_duration
from adapter.mapping.conventions import CONVENTIONS
from adapter.mapping.rules import (
    PAYLOAD_KINDS,
    AllReadings,
    Availability,
    Channel,
    CommandChannel,
    CommandRule,
    Condition,
    DeviceTemplate,
    Path,
    Reading,
    Reply,
    Rule,
    Timestamp,
    command_regex,
)
from adapter.mapping.units import canonical
from adapter.mapping.yamlsource import MappingError, Node, Reader, parse_yaml, where_of
from adapter.sepl.device import RESERVED_TAG_KEYS, normalise_tag_text
from adapter.topic import TopicError, TopicPattern, placeholders, validate_topic_name

DEFAULT_SERVICE = "sepl_get"
CORRELATION_PLACEHOLDERS = frozenset({"data", "data_json", "id", "transaction"})

FILE_KEYS = {"family", "device_type", "rules", "commands", "description", "enabled"}
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
    "when",
    "timestamp",
    "availability",
    "ignore",
    "literal",
    "all_readings",
    "convention",
    "channel",
}
CHANNEL_KEYS = {"of", "main"}
ALL_READINGS_KEYS = {"exclude", "units", "names"}
# An ignore rule takes its topics away from every less specific rule and drops them.
IGNORE_RULE_KEYS = {"id", "topic", "priority", "when", "payload", "ignore", "literal"}
DEVICE_KEYS = {"uri", "name", "tags", "type"}
COMMAND_KEYS = {
    "id",
    "service",
    "device",
    "device_type",
    "publish",
    "reply",
    "literal",
    "channel",
}
COMMAND_CHANNEL_KEYS = {"pattern", "default"}
PUBLISH_KEYS = {"topic", "payload", "qos"}
REPLY_KEYS = {"topic", "timeout", "match", "payload", "data"}
CONDITION_KEYS = {"path", "equals", "in", "exists"}
TIMESTAMP_KEYS = {"path", "timezone"}
AVAILABILITY_KEYS = {"path", "online", "offline"}
READING_KEYS = {"path", "scale", "unit"}


# Levels a path may nest: brackets, parentheses and braces, and each ||, &&, | and !.
# JMESPath's parser and search recurse once per level; thousands crashed start-up with a
# RecursionError thousands of lines long (issue [14]). Real paths use a handful.
MAX_PATH_DEPTH = 32
_OPENING, _CLOSING = "([{", ")]}"


def path_depth(text: str) -> int:
    """How deep `text` nests, counting its operators as levels (quoted parts skipped)."""
    depth = deepest = operators = 0
    quote: str | None = None
    previous = ""
    for char in text:
        if quote is not None:
            if char == quote and previous != "\\":
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSING:
            depth -= 1
        elif char in "|&!" and previous not in ("|", "&"):  # || and && count once
            operators += 1
        previous = char
    return deepest + operators


def compile_path(text: Any, where: str, what: str) -> Path:
    if not isinstance(text, str) or not text:
        raise MappingError(f"{where}: {what} must be a path text (JMESPath, or @)")
    depth = path_depth(text)
    if depth > MAX_PATH_DEPTH:
        raise MappingError(
            f"{where}: {what}: path nested {depth} levels deep (brackets and operators),"
            f" more than {MAX_PATH_DEPTH}"
        )
    try:
        return path_of(text)
    except JMESPathError as exc:
        raise MappingError(f"{where}: {what}: bad path {text[:200]!r}: {exc}") from None
    except RecursionError:
        raise MappingError(f"{where}: {what}: path nested too deeply") from None


@functools.lru_cache(maxsize=4096)
def path_of(text: str) -> Path:
    """The compiled path of a text, one object per text: a Path is never changed after it
    is made, and 10,000 rules mostly repeat a few paths (ENERGY.Power), so sharing saves
    compiling each again and the memory of 20,000 copies. Raises JMESPathError."""
    return Path(text, None if text == "@" else jmespath.compile(text))


def compile_conditions(node: Any, where: str, what: str) -> tuple[Condition, ...]:
    items = node if isinstance(node, list) else [node]
    conditions = []
    for item in items:
        c = Reader(item, where_of(item, where), what, CONDITION_KEYS)
        path = compile_path(c.get("path", "@"), c.at("path"), f"{what} path")
        kinds = [k for k in ("equals", "in", "exists") if k in c.node]
        if len(kinds) != 1:
            raise MappingError(f"{c.where}: {what} needs exactly one of equals, in, exists")
        if kinds == ["in"]:
            values = c.node["in"]
            if not isinstance(values, list):
                raise c.fail("in", "'in' takes a list")
            conditions.append(Condition(path, one_of=tuple(values)))
        elif kinds == ["exists"]:
            if not isinstance(c.node["exists"], bool):
                raise c.fail("exists", "'exists' takes true or false")
            conditions.append(Condition(path, exists=c.node["exists"]))
        else:
            conditions.append(Condition(path, equals=c.node["equals"]))
    return tuple(conditions)


def _zone(name: str, where: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise MappingError(
            f"{where}: unknown time zone {name!r} (e.g. UTC, Europe/Berlin)"
        ) from None


def compile_text(text: str, filename: str) -> tuple[list[Rule], list[CommandRule]]:
    document = parse_yaml(text, filename)
    # Only YAML mappings carry their position; anything else stands at the file's start.
    return compile_document(document, filename if isinstance(document, Node) else f"{filename}:1:1")


def compile_document(document: Any, source: str) -> tuple[list[Rule], list[CommandRule]]:
    """The rules and commands of a parsed mapping document: what `parse_yaml` makes of a
    file (each mapping knows its `file:line:col`), or plain dicts and lists built by a
    program (discovery), whose errors start with `source` instead. Raises MappingError."""
    if document is None:
        return [], []
    document = _located(document, source)
    top = Reader(document, where_of(document, source), "a mapping file", FILE_KEYS)
    if top.get("enabled", True) is False:
        return [], []
    family = top.text("family", "")
    default_type = top.text("device_type", f"iot#{family or 'generic'}")
    # Default ids carry the file's name: two files whose rules have no ids must not clash.
    stem = FilePath(source).stem
    rules = [
        _compile_rule(node, top, i, family, default_type, stem)
        for i, node in enumerate(_list(top, "rules"))
    ]
    commands = [
        _compile_command(node, top, i, default_type, stem)
        for i, node in enumerate(_list(top, "commands"))
    ]
    return rules, commands


def _located(value: Any, where: str) -> Any:
    """Plain dicts as Nodes that stand at `where`, key by key; Nodes keep their places."""
    if isinstance(value, Node):
        return value
    if isinstance(value, dict):
        node = Node({key: _located(item, where) for key, item in value.items()})
        node.where, node.key_where = where, dict.fromkeys(node, where)
        return node
    if isinstance(value, list):
        return [_located(item, where) for item in value]
    return value


def _list(reader: Reader, key: str) -> list[Any]:
    value = reader.get(key, [])
    if not isinstance(value, list):
        raise reader.fail(key, f"{key!r} must be a list")
    return value


def _compile_rule(
    node: Any, top: Reader, index: int, family: str, default_type: str, stem: str
) -> Rule:
    r = Reader(node, where_of(node, top.at("rules")), f"rule #{index + 1}", RULE_KEYS)
    rule_id = r.text("id", f"{stem}-rule-{index + 1}")
    topic = r.text("topic")
    if _flag(r, "literal"):
        _check_topic_name(r, "topic", topic, literal=True)
    try:
        pattern = TopicPattern.compile(topic)
    except TopicError as exc:
        raise r.fail("topic", f"invalid topic pattern: {exc}") from None
    # Words that recur in every rule are interned: one string instead of 10,000 copies
    # (memory, and a smaller cache file).
    payload = sys.intern(r.text("payload", "json"))
    if payload not in PAYLOAD_KINDS:
        raise r.fail("payload", f"payload must be one of {', '.join(PAYLOAD_KINDS)}")
    priority = r.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise r.fail("priority", "priority must be an integer")
    when = compile_conditions(r.node["when"], r.at("when"), "condition") if r.has("when") else ()
    if _flag(r, "ignore"):
        for key in r.node:
            if key not in IGNORE_RULE_KEYS:
                raise r.fail(
                    key,
                    f"an ignore rule sends nothing and has no {key!r}; it takes "
                    f"{', '.join(sorted(IGNORE_RULE_KEYS))}",
                )
        nothing = DeviceTemplate("", "", "", ())
        return Rule(
            rule_id, r.where, pattern, nothing, "", payload, (), None, priority, when, ignore=True
        )
    device = _compile_device(r, rule_id, pattern, family, r.text("device_type", default_type))
    readings = _compile_readings(r)
    if readings and payload == "raw":
        raise r.fail("readings", "a raw payload has no readings")
    for reading in readings:
        for placeholder in placeholders(reading.name):
            if placeholder not in pattern.names:
                raise r.fail(
                    "readings",
                    f"reading {reading.name!r}: placeholder {{{placeholder}}} is not in "
                    f"topic {pattern.text!r}",
                )
    all_readings = _compile_all_readings(r)
    if all_readings is not None and payload != "json":
        raise r.fail("all_readings", "all_readings takes the properties of a JSON payload")
    convention = None
    if r.has("convention"):
        convention = r.text("convention")
        if convention not in CONVENTIONS:
            raise r.fail(
                "convention", f"convention must be one of {', '.join(sorted(CONVENTIONS))}"
            )
        if payload != "json":
            raise r.fail("convention", "a convention reads a JSON payload")
    channel = _compile_channel(r, pattern)
    named_later = (
        all_readings is not None
        or convention is not None
        or channel is not None
        or any("{" in x.name for x in readings)
    )
    primaries = _primaries(r, readings, named_later)
    primary = primaries[0] if primaries else None
    timestamp = None
    if r.has("timestamp"):
        t = r.sub("timestamp", "timestamp", TIMESTAMP_KEYS)
        timestamp = Timestamp(
            compile_path(t.text("path"), t.at("path"), "timestamp path"),
            _zone(t.text("timezone", "UTC"), t.at("timezone")),
        )
    availability = None
    if r.has("availability"):
        a = r.sub("availability", "availability", AVAILABILITY_KEYS)
        availability = Availability(
            compile_path(a.get("path", "@"), a.at("path"), "availability path"),
            _values(a, "online"),
            _values(a, "offline"),
        )
    return Rule(
        rule_id,
        r.where,
        pattern,
        device,
        sys.intern(r.text("service", DEFAULT_SERVICE)),
        payload,
        readings,
        primary,
        priority,
        when,
        timestamp,
        availability,
        all_readings=all_readings,
        primaries=primaries,
        convention=convention,
        channel=channel,
    )


def _compile_channel(r: Reader, pattern: TopicPattern) -> Channel | None:
    """`channel: "{n}"` or `channel: {of: "{n}", main: "1"}` (main: the unsuffixed one)."""
    if not r.has("channel"):
        return None
    spec = r.node["channel"]
    if isinstance(spec, str):
        template, main = spec, "0"
    else:
        c = r.sub("channel", "channel", CHANNEL_KEYS)
        template, main = c.text("of"), str(c.get("main", "0"))
    names = placeholders(template)
    if not names:
        raise r.fail("channel", "channel is a template of the topic's placeholders, e.g. '{n}'")
    for name in names:
        if name not in pattern.names:
            raise r.fail("channel", f"placeholder {{{name}}} is not in topic {pattern.text!r}")
    return Channel(template, main)


def _compile_all_readings(r: Reader) -> AllReadings | None:
    """`all_readings: true`, or `{exclude: [...], units: {name: unit}, names: {key: name}}`."""
    if not r.has("all_readings"):
        return None
    spec = r.node["all_readings"]
    if isinstance(spec, bool):
        return AllReadings() if spec else None
    a = r.sub("all_readings", "all_readings", ALL_READINGS_KEYS)
    exclude = a.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        raise a.fail("exclude", "exclude is a list of property names")
    pairs = []
    for key in ("units", "names"):
        table = a.get(key, {})
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items()
        ):
            raise a.fail(key, f"{key} maps a property name to a text")
        pairs.append(tuple((sys.intern(k), sys.intern(v.strip())) for k, v in table.items()))
    return AllReadings(frozenset(exclude), pairs[0], pairs[1])


def _primaries(r: Reader, readings: tuple[Reading, ...], any_name: bool) -> tuple[str, ...]:
    """`primary: power` or `primary: [power, temperature]` (the first a message has)."""
    spec = r.get("primary")
    if spec is None:
        # A name made from the topic ({object}) names another reading in each message: as
        # the device's primary it would change with every message.
        return (readings[0].name,) if readings and "{" not in readings[0].name else ()
    names = spec if isinstance(spec, list) else [spec]
    # `primary: []`: the rule's messages never set the device's primary (a relay's state
    # message must not turn a plug's average from its power to its on/off state).
    if not all(isinstance(n, str) and n for n in names):
        raise r.fail("primary", "primary is a reading's name or a list of them")
    declared = {x.name for x in readings}
    for name in names:
        if not any_name and name not in declared:
            raise r.fail("primary", f"primary {name!r} is not one of the readings")
    return tuple(sys.intern(n) for n in names)


def _flag(reader: Reader, key: str) -> bool:
    value = reader.get(key, False)
    if not isinstance(value, bool):
        raise reader.fail(key, f"{key!r} takes true or false")
    return value


def _check_topic_name(reader: Reader, key: str, topic: str, literal: bool) -> None:
    """A topic to publish to, or a literal one: no wildcards. In a template the `{name}`s
    are checked without their braces; a literal topic may not hold braces at all."""
    try:
        validate_topic_name(topic if literal else topic.replace("{", "").replace("}", ""))
    except TopicError as exc:
        raise reader.fail(key, str(exc)) from None
    if literal and ("{" in topic or "}" in topic):
        raise reader.fail(
            key, f"literal topic {topic[:80]!r}: rules cannot take '{{' or '}}' literally"
        )


def _values(reader: Reader, key: str) -> tuple[Any, ...]:
    value = reader.get(key)
    if value is None:
        raise MappingError(f"{reader.where}: availability needs {key!r}")
    return tuple(value) if isinstance(value, list) else (value,)


def _compile_device(
    r: Reader, rule_id: str, pattern: TopicPattern, family: str, device_type: str
) -> DeviceTemplate:
    node = r.node.get("device")
    if node is None:
        if not pattern.names:
            raise MappingError(f"{r.where}: rule {rule_id!r} needs 'device' (no placeholder)")
        first = pattern.names[0]
        node = Node(uri=f"{family}:{{{first}}}" if family else f"{{{first}}}")
        node.where, node.key_where = r.where, {}
    elif isinstance(node, str):
        text = node
        node = Node(uri=text)
        node.where, node.key_where = r.at("device"), {}
    d = Reader(node, r.at("device"), f"device of rule {rule_id!r}", DEVICE_KEYS)
    uri = d.text("uri")
    name = d.text("name", uri)
    for key in ("uri", "name"):
        for placeholder in placeholders(d.text(key, uri)):
            if placeholder not in pattern.names:
                raise d.fail(key, f"placeholder {{{placeholder}}} is not in topic {pattern.text!r}")
    tags = d.get("tags", {})
    if not isinstance(tags, dict):
        raise d.fail("tags", "tags must map text to text")
    pairs = tuple((sys.intern(str(k)), sys.intern(str(v))) for k, v in tags.items())
    for key, value in pairs:
        # Checked here, or a typo would fail at run time for every message of the rule.
        for placeholder in placeholders(key) + placeholders(value):
            if placeholder not in pattern.names:
                raise d.fail(
                    "tags", f"placeholder {{{placeholder}}} is not in topic {pattern.text!r}"
                )
        if normalise_tag_text(key) in RESERVED_TAG_KEYS:
            raise d.fail("tags", f"tag key {key!r} is reserved by the platform")
    return DeviceTemplate(uri, name, sys.intern(d.text("type", device_type)), pairs)


def _compile_readings(r: Reader) -> tuple[Reading, ...]:
    node = r.get("readings", {})
    if not isinstance(node, dict):
        raise r.fail("readings", "readings must map a name to a path")
    key_where = node.key_where if isinstance(node, Node) else {}
    readings = []
    for name, spec in node.items():
        at = key_where.get(name, r.at("readings"))
        path_text, scale, unit_spec = spec, 1.0, None
        if isinstance(spec, dict):
            unknown = set(spec) - READING_KEYS
            if unknown:
                raise MappingError(f"{at}: reading {name!r}: unknown keys {sorted(unknown)}")
            path_text, scale = spec.get("path", "@"), spec.get("scale", 1.0)
            unit_spec = spec.get("unit")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(_float(scale))
        ):
            raise MappingError(f"{at}: reading {name!r}: scale must be a finite number")
        unit, unit_path, factor = _compile_unit(unit_spec, at, name)
        readings.append(
            Reading(
                sys.intern(str(name)),
                compile_path(path_text, at, f"reading {name!r}"),
                float(scale) * factor,
                unit,
                unit_path,
            )
        )
    return tuple(readings)


def _compile_unit(spec: Any, at: str, name: str) -> tuple[str | None, Path | None, float]:
    """`unit: W` (the unit the device counts in; energy becomes kWh and power W) or
    `unit: {path: TempUnit}` (read from each message)."""
    if spec is None:
        return None, None, 1.0
    if isinstance(spec, dict):
        unknown = set(spec) - {"path"}
        if unknown or "path" not in spec:
            raise MappingError(f"{at}: reading {name!r}: unit must be text or {{path: …}}")
        return None, compile_path(spec["path"], at, f"the unit of reading {name!r}"), 1.0
    if not isinstance(spec, str) or not spec.strip():
        raise MappingError(f"{at}: reading {name!r}: unit must be text or {{path: …}}")
    unit, factor = canonical(spec)
    return sys.intern(unit), None, factor


def _compile_command(
    node: Any, top: Reader, index: int, default_type: str, stem: str
) -> CommandRule:
    c = Reader(node, where_of(node, top.at("commands")), f"command #{index + 1}", COMMAND_KEYS)
    literal = _flag(c, "literal")
    service = c.text("service")
    device = c.text("device")
    clashing = sorted(set(placeholders(device)) & CORRELATION_PLACEHOLDERS)
    if clashing:
        # The command's own values would silently replace the device's part in the topic.
        raise c.fail(
            "device",
            f"placeholder {{{clashing[0]}}} in device {device!r} is reserved for the "
            f"command ({', '.join(sorted(CORRELATION_PLACEHOLDERS))}); name it otherwise, "
            "e.g. {shelly} or {node}",
        )
    allowed = set(placeholders(device)) | CORRELATION_PLACEHOLDERS
    channel = None
    if c.has("channel"):
        if "channel" in allowed:
            raise c.fail("channel", "the device template already has a {channel}")
        ch = c.sub("channel", f"channel of command {service!r}", COMMAND_CHANNEL_KEYS)
        try:
            regex = re.compile(ch.text("pattern"))
        except re.error as exc:
            raise ch.fail("pattern", f"pattern is no regular expression: {exc}") from None
        default = ch.get("default")
        if default is not None and not isinstance(default, str | int):
            raise ch.fail("default", "default is the channel as text")
        channel = CommandChannel(regex, None if default is None else str(default))
        allowed.add("channel")
    p = c.sub("publish", f"publish of command {service!r}", PUBLISH_KEYS)
    topic = p.text("topic")
    payload = p.get("payload", "{data}")
    _check_topic_name(p, "topic", topic, literal)
    _check_placeholders(p, "topic", [topic], allowed, device)
    _check_placeholders(p, "payload", _strings(payload), allowed, device)
    qos = p.get("qos", 1)
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise p.fail("qos", "qos must be 0, 1 or 2")
    reply = None
    if c.has("reply"):
        rp = c.sub("reply", f"reply of command {service!r}", REPLY_KEYS)
        reply_topic = rp.text("topic")
        if literal:
            _check_topic_name(rp, "topic", reply_topic, literal=True)
        _check_placeholders(rp, "topic", [reply_topic], allowed, device)
        try:
            TopicPattern.compile(reply_topic)
            timeout = parse_duration(rp.text("timeout", "5s"))
        except (TopicError, ValueError) as exc:
            key = "topic" if isinstance(exc, TopicError) else "timeout"
            raise rp.fail(key, str(exc)) from None
        match = (
            compile_conditions(rp.node["match"], rp.at("match"), "reply match")
            if rp.has("match")
            else ()
        )
        reply_payload = rp.text("payload", "json")
        if reply_payload not in PAYLOAD_KINDS:
            raise rp.fail("payload", f"payload must be one of {', '.join(PAYLOAD_KINDS)}")
        data = (
            compile_path(rp.text("data"), rp.at("data"), "reply data") if rp.has("data") else None
        )
        reply = Reply(reply_topic, timeout, match, reply_payload, data)
    return CommandRule(
        c.text("id", f"{stem}-command-{index + 1}"),
        c.where,
        service,
        device,
        c.text("device_type", default_type),
        topic,
        payload,
        int(qos),
        reply,
        command_regex(device),
        channel,
    )


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _check_placeholders(
    reader: Reader, key: str, texts: list[str], allowed: set[str], device: str
) -> None:
    for text in texts:
        for name in placeholders(text):
            if name not in allowed:
                raise reader.fail(
                    key,
                    f"placeholder {{{name}}} is neither in device {device!r} nor one of "
                    f"{', '.join(sorted(CORRELATION_PLACEHOLDERS))}",
                )


def compile_files(
    sources: Sequence[tuple[FilePath, bytes]],
) -> tuple[list[Rule], list[CommandRule]]:
    rules: list[Rule] = []
    commands: list[CommandRule] = []
    for path, data in sources:
        try:
            # What Path.read_text gives: UTF-8 and universal newlines.
            text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as exc:
            raise MappingError(f"{path}: cannot read: {exc}") from None
        file_rules, file_commands = compile_text(text, str(path))
        rules += file_rules
        commands += file_commands
    return rules, commands


__all__ = [
    "MappingError",
    "compile_document",
    "compile_files",
    "compile_text",
    "path_of",
]


def _float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # a 400-digit integer
        return math.inf
