"""A compiled set of mapping rules: matching (paho's topic trie, so the cost per message
does not grow with the number of rules), mapping a message to an event, planning a
command, and the overlap checks `check` reports."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from paho.mqtt.matcher import MQTTMatcher

from adapter.mapping.conventions import CONVENTIONS
from adapter.mapping.eventparts import event_metadata, payload_text
from adapter.mapping.paths import Search
from adapter.mapping.rules import (
    AllReadings,
    CommandRule,
    DecodeError,
    Rule,
    as_number,
    decode_payload,
    fill,
    render_payload,
)
from adapter.mapping.units import PROPERTY_UNITS, canonical
from adapter.mapping.yamlsource import MappingError
from adapter.sepl.device import Device
from adapter.topic import (
    TopicError,
    TopicPattern,
    filter_matches,
    render_template,
    template_regex,
    validate_topic_name,
)

TOPIC_CACHE_SIZE = 100_000  # distinct topics remembered (cleared when full)

# (name, search, scale) of each of a rule's readings: what mapping a message runs, without
# the calls of Reading.extract and Path.search in between.
# (name, search, scale, unit, unit search) of each reading of a rule
Extractors = tuple[tuple[str, Search, float, str | None, Search | None], ...]


@dataclass(frozen=True, init=False)
class Mapped:
    """A message that becomes an event."""

    rule: Rule
    values: dict[str, str]
    device: Device
    service: str
    data: str
    metadata: str
    readings: dict[str, float]
    missing: tuple[str, ...]  # declared readings that were absent or not numbers
    time: datetime
    units: dict[str, str]  # the unit of each reading that has one
    primary: str | None  # the rule's first preferred reading the message has

    def __init__(
        self,
        rule: Rule,
        values: dict[str, str],
        device: Device,
        service: str,
        data: str,
        metadata: str,
        readings: dict[str, float],
        missing: tuple[str, ...],
        time: datetime,
        units: dict[str, str] | None = None,
        primary: str | None = None,
    ) -> None:
        # One per event: a frozen dataclass's own __init__ sets each field through
        # object.__setattr__, three times the cost of filling the instance dict.
        fields = self.__dict__
        fields["rule"] = rule
        fields["values"] = values
        fields["device"] = device
        fields["service"] = service
        fields["data"] = data
        fields["metadata"] = metadata
        fields["readings"] = readings
        fields["missing"] = missing
        fields["time"] = time
        fields["units"] = units if units is not None else {}
        fields["primary"] = primary


@dataclass(frozen=True)
class AvailabilityChange:
    rule: Rule
    device: Device
    online: bool | None  # None: a payload the rule does not know


@dataclass(frozen=True)
class Rejected:
    """A rule took the topic but the payload is not what it declares."""

    rule: Rule
    device: Device
    reason: str


Outcome = Mapped | AvailabilityChange | Rejected


@dataclass(frozen=True)
class PublishPlan:
    rule: CommandRule
    values: dict[str, str]
    topic: str
    payload: str
    reply_topic: str | None


@dataclass(frozen=True)
class Overlap:
    first: Rule
    second: Rule
    example: str

    def describe(self) -> str:
        return (
            f"rules {self.first.id!r} ({self.first.where}) and {self.second.id!r} "
            f"({self.second.where}) both match topics like {self.example!r}"
        )


@dataclass
class MappingSet:
    rules: list[Rule]
    commands: list[CommandRule]
    prefix: str = ""
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._matcher = MQTTMatcher()  # type: ignore[no-untyped-call]
        self._cache: dict[str, list[tuple[Rule, dict[str, str], Device, Extractors]]] = {}
        # Per rule id (unique in a set), made when a topic first meets the rule. Kept here,
        # not on the rules: those stay plain data (the mapping cache pickles them).
        self._extractors: dict[str, Extractors] = {}
        self._units: dict[str, dict[str, str]] = {}  # per rule id: its last units
        self._device_index: list[tuple[int, dict[str, list[re.Pattern[str]]]]] | None = None
        groups: dict[str, list[Rule]] = {}
        for rule in self.rules:
            groups.setdefault(rule.pattern.mqtt_filter, []).append(rule)
        for topic_filter, group in groups.items():
            self._matcher[topic_filter] = group
        self._check_ids()

    def _check_ids(self) -> None:
        seen: dict[str, Rule] = {}
        for rule in self.rules:
            if rule.id in seen:
                raise MappingError(
                    f"{rule.where}: rule id {rule.id!r} is already used at {seen[rule.id].where}"
                )
            seen[rule.id] = rule

    @property
    def filters(self) -> list[str]:
        """What to subscribe to. Ignore rules only take topics away from other rules, so
        their own filters are not subscribed (`homeassistant/#` would fetch every retained
        discovery config just to drop it)."""
        return sorted({rule.pattern.mqtt_filter for rule in self.rules if not rule.ignore})

    # --- messages ------------------------------------------------------------------------

    def candidates(self, topic: str) -> list[tuple[Rule, dict[str, str]]]:
        """Every rule whose pattern matches, most specific first."""
        return [(rule, values) for rule, values, _, _ in self.matches(topic)]

    def matches(self, topic: str) -> list[tuple[Rule, dict[str, str], Device, Extractors]]:
        # Devices publish to the same few topics over and over, so the matches of a topic,
        # with their rendered devices, are kept: a dict lookup per message whatever the
        # number of rules. A mapping reload builds a new set and so a new cache.
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        found: list[tuple[Rule, dict[str, str], Device, Extractors]] = []
        for group in self._matcher.iter_match(topic):  # type: ignore[no-untyped-call]
            for rule in group:
                values = rule.pattern.match(topic)
                if values is not None:
                    device = rule.device.render(values, self.prefix)
                    for _, known_values, known_device, _ in found:
                        # The rules of one device (a Tasmota topic has several) render
                        # equal values and devices: kept once, not once per rule (10,000
                        # devices' topics were 15 MB of copies).
                        if known_values == values:
                            values = known_values
                        if known_device == device:
                            device = known_device
                    extractors = self._extractors_of(rule)
                    if rule.renames:
                        extractors = _renamed(rule, values, extractors)
                    found.append((rule, values, device, extractors))
        found.sort(key=lambda item: item[0].specificity, reverse=True)
        if len(self._cache) >= TOPIC_CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def _extractors_of(self, rule: Rule) -> Extractors:
        extractors = self._extractors.get(rule.id)
        if extractors is None:
            extractors = tuple(
                (
                    r.name,
                    r.path.function,
                    r.scale,
                    r.unit,
                    r.unit_path.function if r.unit_path else None,
                )
                for r in rule.readings
            )
            self._extractors[rule.id] = extractors
        return extractors

    def map(self, topic: str, payload: bytes, received: datetime) -> Outcome | None:
        """A message to its outcome, or None when no rule takes it."""
        rejected: Rejected | None = None
        decoded: dict[str, Any] = {}
        for rule, values, device, extractors in self.matches(topic):
            if rule.ignore and not rule.when:
                return None
            try:
                if rule.payload not in decoded:
                    decoded[rule.payload] = decode_payload(rule.payload, payload)
            except DecodeError as exc:
                if not rule.ignore:  # an ignore rule's conditions just do not hold
                    rejected = rejected or Rejected(rule, device, str(exc))
                continue
            document = decoded[rule.payload]
            held = True
            for condition in rule.when:  # a loop: all() over a generator costs more here
                if not condition.holds(document):
                    held = False
                    break
            if not held:
                continue
            if rule.ignore:
                return None
            if rule.availability is not None:
                return AvailabilityChange(rule, device, rule.availability.state(document))
            return self._event(rule, values, device, extractors, topic, payload, document, received)
        return rejected

    def _event(
        self,
        rule: Rule,
        values: dict[str, str],
        device: Device,
        extractors: Extractors,
        topic: str,
        payload: bytes,
        document: Any,
        received: datetime,
    ) -> Mapped:
        readings: dict[str, float] = {}
        units: dict[str, str] = {}
        missing = []
        for name, search, scale, unit, unit_search in extractors:
            if unit_search is not None:
                unit, factor = _unit_of(unit_search(document))
                scale *= factor
            value = as_number(search(document), scale)
            if value is None:
                missing.append(name)
                continue
            readings[name] = value
            if unit is not None:
                units[name] = unit
        if rule.convention is not None:
            for name, value, unit in CONVENTIONS[rule.convention](document, values):
                if name not in readings:
                    readings[name] = value
                    if unit is not None:
                        units[name] = unit
        if rule.all_readings is not None and isinstance(document, dict):
            _take_all(rule.all_readings, document, readings, units)
        moment = received
        if rule.timestamp is not None:
            moment = rule.timestamp.extract(document) or received
        if units:
            # The units of a rule's messages are mostly the same: one dict for them all,
            # not one per message waiting for the history (10,000 waiting: 6 MB).
            same = self._units.get(rule.id)
            if same == units:
                units = same
            else:
                self._units[rule.id] = units
        data, encoding = payload_text(payload)
        primary = next((name for name in rule.primaries if name in readings), None)
        metadata = event_metadata(
            time=moment,
            topic=topic,
            readings=readings,
            primary=primary,
            encoding=encoding,
            units=units,
        )
        return Mapped(
            rule,
            values,
            device,
            rule.service,
            data,
            metadata,
            readings,
            tuple(missing),
            moment,
            units,
            primary,
        )

    # --- commands ------------------------------------------------------------------------

    def plan_command(
        self,
        device_uri: str,
        service: str,
        data: str,
        correlation: Mapping[str, str] | None = None,
        device_type: str | None = None,
        channels: Sequence[str] = (),
    ) -> PublishPlan | None:
        """The publish of a command, or None when no rule has it. With the device's type
        known, only rules of that type apply: a Shelly Gen1 and a Gen2 share the uri
        namespace `shelly:<id>` but not their commands. `channels`: the channels the device
        has reported (`state_<channel>` readings), for a command whose data names none."""
        for rule in self.commands:
            if rule.service != service:
                continue
            if device_type is not None and rule.device_type != device_type:
                continue
            values = rule.device_values(device_uri, self.prefix)
            if values is None:
                continue
            if rule.channel is not None:
                values["channel"] = rule.channel.pick(data, channels)  # or CommandRefused
            values = {
                **values,
                "data": data,
                "data_json": json.dumps(data),
                "id": "0",
                "transaction": "0",
                **(correlation or {}),
            }
            topic = render_template(rule.topic, values)
            reply = None if rule.reply is None else render_template(rule.reply.topic, values)
            try:
                # A device uri with '+', '#' or NUL in a placeholder's part would make a
                # topic the client refuses to publish to (or subscribe by accident).
                validate_topic_name(topic)
                if reply is not None:
                    validate_topic_name(reply)
            except TopicError:
                continue
            return PublishPlan(rule, values, topic, render_payload(rule.payload, values), reply)
        return None

    @staticmethod
    def reply_data(plan: PublishPlan, payload: bytes) -> str | None:
        """The response data when `payload` is this command's reply, else None."""
        reply = plan.rule.reply
        if reply is None:
            return None
        try:
            document = decode_payload(reply.payload, payload)
        except DecodeError:
            return None
        for condition in reply.match:
            expected = condition
            if isinstance(condition.equals, str):
                expected = type(condition)(
                    condition.path, equals=fill(condition.equals, plan.values)
                )
            if not expected.holds(document):
                return None
        if reply.data is None:
            return payload_text(payload)[0]
        value = reply.data.search(document)
        return value if isinstance(value, str) else json.dumps(value)

    def produces(self, device_uri: str) -> bool:
        """Could some rule still make this device? (Devices no rule makes are dropped.)"""
        if self.prefix:
            if not device_uri.startswith(self.prefix + ":"):
                return False
            device_uri = device_uri[len(self.prefix) + 1 :]
        # Only the templates whose text before the first "{" begins the uri can match it
        # (a placeholder matches at least one character, a literal only itself).
        for length, by_start in self._device_templates():
            for regex in by_start.get(device_uri[:length], ()):
                if regex.fullmatch(device_uri) is not None:
                    return True
        return False

    def commands_of(self, device_uri: str, device_type: str | None) -> list[dict[str, str]]:
        """The commands a device accepts: service, and the channels its data may name."""
        found: dict[str, dict[str, str]] = {}
        for rule in self.commands:
            if rule.service in found:
                continue
            if device_type is not None and rule.device_type != device_type:
                continue
            if rule.device_values(device_uri, self.prefix) is None:
                continue
            entry = {"service": rule.service}
            if rule.channel is not None:
                entry["channel"] = rule.channel.pattern.pattern
            found[rule.service] = entry
        return list(found.values())

    def device_type_of(self, device_uri: str) -> str | None:
        """The device type the first rule that makes this device gives it (None: none)."""
        if self.prefix:
            if not device_uri.startswith(self.prefix + ":"):
                return None
            device_uri = device_uri[len(self.prefix) + 1 :]
        for rule in self.rules:
            if rule.forwards and template_regex(rule.device.uri).fullmatch(device_uri):
                return rule.device.device_type
        return None

    def _device_templates(self) -> list[tuple[int, dict[str, list[re.Pattern[str]]]]]:
        # Compiled once per set: a reload asks this for every known device, and building
        # each rule's regex each time cost 70 ms a device with 2,000 rules.
        if self._device_index is None:
            by_length: dict[int, dict[str, list[re.Pattern[str]]]] = {}
            for template in dict.fromkeys(r.device.uri for r in self.rules if r.forwards):
                brace = template.find("{")
                start = template if brace < 0 else template[:brace]
                by_start = by_length.setdefault(len(start), {})
                by_start.setdefault(start, []).append(template_regex(template))
            self._device_index = sorted(by_length.items())
        return self._device_index

    # --- the platform's view -------------------------------------------------------------

    def device_types(self) -> dict[str, frozenset[str]]:
        """Device types and their services, as the sandbox's registry (D11)."""
        types: dict[str, set[str]] = {}
        for rule in self.rules:
            if rule.forwards:
                types.setdefault(rule.device.device_type, set()).add(rule.service)
        for command in self.commands:
            types.setdefault(command.device_type, set()).add(command.service)
        return {name: frozenset(services) for name, services in types.items()}

    # --- checks --------------------------------------------------------------------------

    def overlaps(self) -> list[Overlap]:
        """Pairs of rules that can match the same topic (found through the trie)."""
        result = []
        trie = _FilterTrie()
        for rule in self.rules:
            # The trie can reach one rule twice ('a/#' through its '#' child and again as
            # everything below 'a'): each pair is reported once.
            others = {id(other): other for other in trie.intersecting(rule.pattern.mqtt_filter)}
            for other in others.values():
                example = _example_topic(other.pattern, rule.pattern)
                if example is not None:
                    result.append(Overlap(other, rule, example))
            trie.add(rule.pattern.mqtt_filter, rule)
        return result

    def conflicts(self) -> list[Overlap]:
        """Overlaps that precedence cannot decide: equal priority and specificity."""
        return [
            o
            for o in self.overlaps()
            if o.first.specificity == o.second.specificity
            and not _disjoint_when(o)
            and not _both_ignore(o)
        ]


def _both_ignore(overlap: Overlap) -> bool:
    """Two unconditional ignore rules have the same outcome whichever takes the topic."""
    a, b = overlap.first, overlap.second
    return a.ignore and b.ignore and not a.when and not b.when


def _disjoint_when(overlap: Overlap) -> bool:
    """Two rules whose conditions test one path for different values never both apply."""
    for a in overlap.first.when:
        for b in overlap.second.when:
            if (
                a.path.text == b.path.text
                and a.equals != b.equals
                and a.one_of is None
                and (b.one_of is None and a.exists is None and b.exists is None)
            ):
                return True
    return False


def _example_topic(a: TopicPattern, b: TopicPattern) -> str | None:
    """A topic both patterns match, built level by level, or None."""
    candidates = []
    for source, other in ((a, b), (b, a)):
        levels = [lv if not lv.startswith("{") else "x" for lv in source.text.split("/")]
        text = "/".join(lv if lv not in ("+", "#") else "x" for lv in levels)
        candidates.append(text)
        candidates.append(
            "/".join(
                lv if not lv.startswith("{") and lv not in ("+", "#") else o
                for lv, o in zip(
                    source.text.split("/"),
                    [*other.text.split("/"), *["x"] * 64],
                    strict=False,
                )
            )
        )
    for candidate in candidates:
        # Placeholders and wildcards taken from the other pattern stand for one level "x"
        # (not "xtx" for "{t}", nor a '+' that no real topic can hold).
        topic = "/".join(
            "x" if lv in ("+", "#") or (lv.startswith("{") and lv.endswith("}")) else lv
            for lv in candidate.split("/")
        )
        if a.match(topic) is not None and b.match(topic) is not None:
            return topic
    return None


def _renamed(rule: Rule, values: dict[str, str], extractors: Extractors) -> Extractors:
    """The extractors with the names one topic gives them: placeholders filled, the
    channel's suffix added (made once per topic, kept in the topic cache)."""
    suffix = rule.channel.suffix(values) if rule.channel is not None else ""
    return tuple(
        (sys.intern(render_template(name, values) + suffix), search, scale, unit, unit_search)
        for name, search, scale, unit, unit_search in extractors
    )


def _take_all(
    spec: AllReadings, document: dict[str, Any], readings: dict[str, float], units: dict[str, str]
) -> None:
    """Every number, boolean and on/off word at the top of the document that no declared
    reading took already (those win)."""
    names, declared_units = _tables(spec)
    for key, raw in document.items():
        if key in spec.exclude or isinstance(raw, dict | list) or raw is None:
            continue
        name = names.get(key, key)
        if name in readings:
            continue
        unit_text = declared_units.get(key) or PROPERTY_UNITS.get(key)
        unit, factor = canonical(unit_text) if unit_text else (None, 1.0)
        value = as_number(raw, factor)
        if value is None:
            continue
        readings[name] = value
        if unit:
            units[name] = unit


@functools.lru_cache(maxsize=256)
def _tables(spec: AllReadings) -> tuple[dict[str, str], dict[str, str]]:
    """The rule's renames and units as lookups, made once per rule (not per message)."""
    return dict(spec.names), dict(spec.units)


def _unit_of(value: Any) -> tuple[str | None, float]:
    """A unit read from the message: reported as its canonical unit, converted."""
    if not isinstance(value, str) or not value.strip():
        return None, 1.0
    return canonical(value)


class _FilterTrie:
    """Topic filters, searchable for filters that share at least one topic with another."""

    def __init__(self) -> None:
        self.children: dict[str, _FilterTrie] = {}
        self.rules: list[Rule] = []

    def add(self, topic_filter: str, rule: Rule) -> None:
        node = self
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _FilterTrie())
        node.rules.append(rule)

    def intersecting(self, topic_filter: str) -> Iterator[Rule]:
        yield from self.walk(topic_filter.split("/"), 0)

    def walk(self, levels: list[str], i: int) -> Iterator[Rule]:
        if "#" in self.children:  # '#' here takes the rest, the parent level included
            yield from self.children["#"].rules
        if i == len(levels):
            yield from self.rules
            return
        level = levels[i]
        if level == "#":
            yield from self.rules
            yield from self.everything_below()
            return
        if level == "+":  # every child shares topics with '+'
            for key, child in self.children.items():
                if key != "#":
                    yield from child.walk(levels, i + 1)
            return
        # A literal level meets only its own child and '+': dict lookups, so checking
        # 10,000 rules stays linear.
        for key in (level, "+"):
            found = self.children.get(key)
            if found is not None:
                yield from found.walk(levels, i + 1)

    def everything_below(self) -> Iterator[Rule]:
        for child in self.children.values():
            yield from child.rules
            yield from child.everything_below()


__all__ = [
    "AvailabilityChange",
    "Mapped",
    "MappingSet",
    "Outcome",
    "Overlap",
    "PublishPlan",
    "Rejected",
    "filter_matches",
]
