"""What one discovery config makes: mapping documents (the data a mapping file holds, see
docs/mappings.md) and the rules the mapping compiler made of them; and the texts taken from
discovery data, made fit for those documents."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.mapping.compile import compile_document
from adapter.mapping.rules import CommandRule, Rule
from adapter.mapping.yamlsource import MappingError
from adapter.sepl.device import normalise_tag_text
from adapter.topic import placeholders

DISCOVERED_PRIORITY = -100
REPLY_TIMEOUT = "5s"
DEFAULT_QOS = 1
# The placeholder type ids of the bundled files, so that a device put by a hand-written
# rule and by a discovered one has the same type. A real platform needs real ids (D11).
DEFAULT_DEVICE_TYPES: Mapping[str, str] = {
    "tasmota": "iot#tasmota-plug",
    "esphome": "iot#esphome-node",
    "zigbee2mqtt": "iot#zigbee2mqtt-device",
    "homeassistant": "iot#ha-device",
}
MAX_TEXT = 200  # characters of a device name, tag or uri part taken from discovery data
MAX_PROBLEM = 300  # characters of a problem line (a hostile topic may be 64 KiB)

# A mapping document: what a mapping file holds, as plain dicts and lists.
Document = dict[str, Any]


class DiscoveryError(ValueError):
    """Raised only for a call the caller got wrong: a topic that is no discovery config
    topic, a Tasmota MAC that is not one, a payload of `expand` that is no JSON object.
    Everything wrong *inside* a discovery payload is a `problems` entry instead."""


@dataclass(frozen=True)
class GeneratedDevice:
    """What one discovery config makes: mapping documents beside the hand-written files.

    `key` is the discovery topic (`tasmota/discovery/<MAC>/config`,
    `homeassistant/sensor/<node>/<object>/config`); `uri` the device the readings go to
    (without DEVICE_PREFIX; empty when none could be made). `documents` maps each source
    (the discovery topic the data came from) to its mapping document; `rules` and
    `commands` are what the mapping compiler made of them. `problems` lists what was not
    understood or refused, in words, e.g. `not understood: value_template '{{ ... }}'`."""

    key: str
    uri: str
    family: str
    name: str = ""
    documents: Mapping[str, Document] = field(default_factory=dict)
    # Made from the documents, so two devices with equal documents are equal.
    rules: list[Rule] = field(default_factory=list, compare=False)
    commands: list[CommandRule] = field(default_factory=list, compare=False)
    problems: list[str] = field(default_factory=list)
    # reading name -> rank for choosing the primary when readings of several discovery
    # configs are joined into one rule (lower first).
    ranks: Mapping[str, int] = field(default_factory=dict)

    @property
    def device_uris(self) -> list[str]:
        """Every device this config makes (ESPHome: the entity and its node)."""
        uris = {self.uri} if self.uri else set()
        uris |= {rule.device.uri for rule in self.rules}
        uris |= {command.device for command in self.commands}
        return sorted(uris)


class Builder:
    """Collects the documents of one GeneratedDevice, rules and commands with ids
    `discovered:<key>:<n>`. Each is compiled when it is added: one the compiler refuses
    is a problem and leaves the others standing."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.items: dict[str, dict[str, list[Document]]] = {}  # source -> rules, commands
        self.rules: list[Rule] = []
        self.commands: list[CommandRule] = []
        self.problems: list[str] = []
        self.ranks: dict[str, int] = {}

    def problem(self, text: str) -> None:
        self.problems.append(text[:MAX_PROBLEM])

    def rule(self, source: str, rule: Document) -> bool:
        """Adds a rule (a document's rule without id); False when the compiler refused it.
        A `priority` in it stays (ESPHome's rules win over esphome.yaml's, which have no
        units); otherwise it is DISCOVERED_PRIORITY."""
        rule = {"priority": DISCOVERED_PRIORITY, **rule, "literal": True}
        known = self._items(source)["rules"]
        if any({k: v for k, v in other.items() if k != "id"} == rule for other in known):
            return True  # several components of one device-based config share it
        rule = {"id": self._next_id(), **rule}
        compiled = self._compiled(source, {"rules": [rule]})
        if compiled is None:
            return False
        self.rules += compiled[0]
        known.append(rule)
        return True

    def command(self, source: str, command: Document) -> bool:
        command = {"id": self._next_id(), **command, "literal": True}
        compiled = self._compiled(source, {"commands": [command]})
        if compiled is None:
            return False
        self.commands += compiled[1]
        self._items(source)["commands"].append(command)
        return True

    def _items(self, source: str) -> dict[str, list[Document]]:
        return self.items.setdefault(source, {"rules": [], "commands": []})

    def _next_id(self) -> str:
        return f"discovered:{self.key}:{len(self.rules) + len(self.commands) + 1}"

    def _compiled(
        self, source: str, document: Document
    ) -> tuple[list[Rule], list[CommandRule]] | None:
        try:
            return compile_document(document, source)
        except MappingError as exc:
            self.problem(str(exc))
            return None

    def result(
        self, uri: str = "", family: str = "", name: str = "", device_type: str = ""
    ) -> GeneratedDevice:
        documents = {
            source: {"family": family, "device_type": device_type, **items}
            for source, items in self.items.items()
        }
        return GeneratedDevice(
            self.key,
            uri,
            family,
            name,
            documents,
            self.rules,
            self.commands,
            self.problems,
            dict(self.ranks),
        )


def all_device_types(given: Mapping[str, str] | None) -> Mapping[str, str]:
    return {**DEFAULT_DEVICE_TYPES, **(given or {})}


# --- names and texts -----------------------------------------------------------------------

_NOT_NAME = re.compile(r"[^a-z0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def reading_name(parts: Iterable[str | int]) -> str:
    """`ENERGY.Power` → `energy_power`, `DS18B20-1.Temperature` → `ds18b20_1_temperature`."""
    words = [_NOT_NAME.sub("_", str(part).lower()).strip("_") for part in parts]
    name = "_".join(word for word in words if word)
    return name[:MAX_TEXT] or "value"


def text(value: Any) -> str:
    """Discovery text fit for a device name, tag or uri: no control characters, and no
    braces (device templates would read `{x}` as a placeholder)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    found = _CONTROL.sub("", str(value)).replace("{", "(").replace("}", ")")
    found = found.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    return found.strip()[:MAX_TEXT]


def tags(pairs: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """Device tags from discovery texts; empty ones left out, the first of a key kept."""
    found: dict[str, str] = {}
    for key, value in pairs:
        k, v = normalise_tag_text(text(key)), normalise_tag_text(text(value))
        if k and v and k not in found:
            found[k] = v
    return found


def not_a_topic(topic: Any, what: str) -> str | None:
    """Why a value from discovery data is no topic text at all, or None. Whether the text
    is a valid topic the mapping compiler says (rules take discovered topics literally)."""
    if isinstance(topic, str) and topic:
        return None
    return f"{what} is not a topic: {topic!r}"


def payload_problem(payload: Any, what: str) -> str | None:
    """Why a payload from discovery data cannot be published as it is written, or None.
    Command payloads are templates: a `{data}` in it would be filled, not sent."""
    if isinstance(payload, str) and placeholders(payload):
        return f"{what} {payload[:80]!r} contains a {{placeholder}}; not sent"
    if not isinstance(payload, str | int | float) or isinstance(payload, bool):
        return f"{what} is not text: {payload!r}"
    if isinstance(payload, float) and not math.isfinite(payload):
        return f"{what} is not a finite number: {payload!r}"
    try:
        str(payload).encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 text"
    return None
