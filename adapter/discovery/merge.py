"""Generated mapping documents merged with the hand-written mapping set: documents of
several discovery configs joined where they describe one device or one topic, compiled by
the mapping compiler, and every override and contradiction told in words."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from adapter.discovery.generated import Document, GeneratedDevice
from adapter.mapping.compile import compile_document
from adapter.mapping.mappingset import MappingSet
from adapter.mapping.rules import CommandRule, Rule
from adapter.mapping.yamlsource import MappingError

COMPILED_CACHE_SIZE = 20_000  # rules and commands; a few per discovery config


@dataclass(frozen=True)
class _Item:
    """A rule or command of a generated document, and where it came from."""

    source: str
    body: Document
    device: GeneratedDevice


def merge(
    hand_written: MappingSet, generated: Iterable[GeneratedDevice | None]
) -> tuple[MappingSet, list[str]]:
    """A new MappingSet with the hand-written rules and commands and the generated ones,
    and notes in words: which hand-written rule overrides which discovered one, and what
    was dropped because discovered rules contradict each other.

    Rules of several discovery configs for the same topic, device, payload kind and
    service become one rule with all their readings (Zigbee2MQTT announces temperature
    and humidity of one message separately). Every device's name, type and tags are made
    the same across its rules (tags joined), so the device is registered once. A topic
    that discovered rules of different devices claim is kept for the first (by discovery
    topic); an availability topic claimed by several devices (Zigbee2MQTT's
    `bridge/state`) is followed by none, because a message sets one device's state."""
    notes: list[str] = []
    devices: list[GeneratedDevice] = []
    for device in sorted((g for g in generated if g is not None), key=lambda g: g.key):
        if devices and devices[-1].key == device.key:
            notes.append(f"discovery config {device.key!r} given twice; the first is used")
        else:
            devices.append(device)
    taken_ids = {rule.id for rule in hand_written.rules} | {c.id for c in hand_written.commands}
    owned = list(_items(devices, "rules", taken_ids, notes))
    unified = _unified_devices([item.body["device"] for item in owned], notes)
    by_topic: dict[str, list[_Item]] = {}
    for item in owned:
        body = {**item.body, "device": unified[item.body["device"]["uri"]]}
        by_topic.setdefault(body["topic"], []).append(_Item(item.source, body, item.device))
    rules: list[Rule] = []
    for topic, members in by_topic.items():
        for where, body in _settle_topic(topic, members, notes):
            for rule in _compiled(where, {"rules": [body]}, notes)[0]:
                _note_overrides(hand_written, rule, notes)
                rules.append(rule)
    commands = _merge_commands(hand_written, devices, unified, taken_ids, notes)
    merged = MappingSet(
        [*hand_written.rules, *rules],
        [*hand_written.commands, *commands],
        hand_written.prefix,
        list(hand_written.files),
    )
    return merged, notes


def _items(
    devices: Sequence[GeneratedDevice], kind: str, taken_ids: set[str], notes: list[str]
) -> Iterator[_Item]:
    """The rules (or commands) of every document, but those whose id a hand-written one
    has."""
    for device in devices:
        for source, document in device.documents.items():
            for body in document[kind]:
                if body["id"] in taken_ids:
                    what = "rule" if kind == "rules" else "command"
                    notes.append(
                        f"discovered {what} {body['id']!r} has the id of a hand-written "
                        f"{what}; dropped"
                    )
                else:
                    yield _Item(source, body, device)


def _compiled(
    where: str, document: Document, notes: list[str]
) -> tuple[tuple[Rule, ...], tuple[CommandRule, ...]]:
    try:
        return _compiled_json(where, json.dumps(document))
    except MappingError as exc:  # not expected: each part compiled when it was generated
        notes.append(f"a joined discovered rule is refused: {exc}")
        return (), ()


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compiled_json(where: str, text: str) -> tuple[tuple[Rule, ...], tuple[CommandRule, ...]]:
    """Every discovery message merges all documents again, and most are as they were: the
    compiled rules are kept by their text (compiling them all again took 0.1 s at 800
    discovery configs)."""
    rules, commands = compile_document(json.loads(text), where)
    return tuple(rules), tuple(commands)


def _unified_devices(devices: Iterable[Document], notes: list[str]) -> dict[str, Document]:
    """Per device uri the first `device` given, with the tags of all of them."""
    found: dict[str, Document] = {}
    for device in devices:
        known = found.get(device["uri"])
        if known is None:
            found[device["uri"]] = device
            continue
        if known["type"] != device["type"]:
            notes.append(
                f"device {device['uri']!r}: discovered rules give types "
                f"{known['type']!r} and {device['type']!r}; the first is used"
            )
        extra = {k: v for k, v in device["tags"].items() if k not in known["tags"]}
        if extra:
            found[device["uri"]] = {**known, "tags": {**known["tags"], **extra}}
    return found


def _settle_topic(topic: str, members: list[_Item], notes: list[str]) -> list[tuple[str, Document]]:
    """The rules to keep for one topic, each with where it came from: forwarding rules
    joined, availability deduplicated, contradictions dropped with a note."""
    forwarding: dict[tuple[str, str, str], list[_Item]] = {}
    availability: dict[str, list[_Item]] = {}
    for item in members:
        body = item.body
        if "availability" in body:
            availability.setdefault(body["device"]["uri"], []).append(item)
        else:
            key = (body["device"]["uri"], body["payload"], body["service"])
            forwarding.setdefault(key, []).append(item)
    if forwarding:
        groups = list(forwarding.values())
        where, first = _joined(groups[0], notes)
        for group in groups[1:]:
            notes.append(
                f"discovered rules {first['id']!r} ({where}) and {group[0].body['id']!r} "
                f"({group[0].source}) take the same topic {topic!r} for another device, "
                "payload or service; only the first is used"
            )
        for items in availability.values():
            notes.append(
                f"availability rule {items[0].body['id']!r} ({items[0].source}) shares topic "
                f"{topic!r} with discovered rule {first['id']!r}; dropped"
            )
        return [(where, first)]
    if len(availability) > 1:
        notes.append(
            f"availability topic {topic!r} is announced for {len(availability)} discovered "
            f"devices ({', '.join(sorted(availability))}); a message sets the state of one "
            "device only, so none follows it"
        )
        return []
    items = next(iter(availability.values()))
    first = items[0].body
    for other in items[1:]:
        if (other.body["payload"], other.body["availability"]) != (
            first["payload"],
            first["availability"],
        ):
            notes.append(
                f"availability rules {first['id']!r} and {other.body['id']!r} read topic "
                f"{topic!r} differently; the first is used"
            )
    return [(items[0].source, first)]


def _joined(group: list[_Item], notes: list[str]) -> tuple[str, Document]:
    """One rule with the readings of all (renamed `<name>_2` where two read different
    things under one name), where it came from (`; `-joined), and the primary reading by
    rank."""
    first = group[0]
    if len(group) == 1:
        return first.source, first.body
    readings: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    sources: list[str] = []
    for item in group:
        if item.source not in sources:
            sources.append(item.source)
        for name, path in item.body["readings"].items():
            if readings.get(name) == path:
                continue
            joined, n = name, 2
            while joined in readings:
                joined, n = f"{name}_{n}", n + 1
            if joined != name:
                notes.append(
                    f"discovered reading {name!r} of {item.source} is named {joined!r}: "
                    "another config of the device reads something else under that name"
                )
            ranks[joined] = item.device.ranks.get(name, 10)
            readings[joined] = path
    body = {**first.body, "readings": readings, "primary": min(readings, key=ranks.__getitem__)}
    return "; ".join(sources), body


def _note_overrides(hand_written: MappingSet, rule: Rule, notes: list[str]) -> None:
    topic = rule.pattern.text
    for other, _ in hand_written.candidates(topic):
        if other.specificity < rule.specificity:
            break
        if other.ignore:
            notes.append(
                f"ignore rule {other.id!r} ({other.where}) drops topic {topic!r} of "
                f"discovered rule {rule.id!r} ({rule.where})"
            )
        else:
            notes.append(
                f"rule {other.id!r} ({other.where}) overrides discovered rule {rule.id!r} "
                f"({rule.where}) on topic {topic!r}"
                + (" when its conditions hold" if other.when else "")
            )
        if not other.when:
            break


def _merge_commands(
    hand_written: MappingSet,
    devices: Sequence[GeneratedDevice],
    unified: dict[str, Document],
    taken_ids: set[str],
    notes: list[str],
) -> list[CommandRule]:
    result: list[CommandRule] = []
    seen: dict[tuple[str, str], _Item] = {}
    for item in _items(devices, "commands", taken_ids, notes):
        command = item.body
        uri, service = command["device"], command["service"]
        known = seen.get((uri, service))
        if known is not None:
            notes.append(
                f"discovered commands {known.body['id']!r} ({known.source}) and "
                f"{command['id']!r} ({item.source}) are both {service!r} of {uri!r}; "
                "only the first is used"
            )
            continue
        seen[uri, service] = item
        if uri in unified:
            command = {**command, "device_type": unified[uri]["type"]}
        for other in hand_written.commands:
            if other.service == service and other.device_values(uri, "") is not None:
                notes.append(
                    f"command {other.id!r} ({other.where}) overrides discovered command "
                    f"{command['id']!r} ({item.source}): {service!r} of {uri!r}"
                )
                break
        result += _compiled(item.source, {"commands": [command]}, notes)[1]
    return result
