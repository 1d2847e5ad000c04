"""Home Assistant MQTT discovery (`homeassistant/<component>/[<node_id>/]<object_id>/config`,
and device-based `homeassistant/device/<id>/config`) as mapping documents.

Device identity (D11, docs/discovery.md): from Zigbee2MQTT `z2m:<friendly name>`, as
`mappings/zigbee2mqtt.yaml`; from ESPHome `esphome:<node>/<component>/<object>` per entity
(availability on `esphome:<node>`), as `mappings/esphome.yaml`; from any other source
`ha:device/<device identifier>` (all entities of a device are readings of one platform
device), or `ha:entity/<unique id>` for an entity without a device. The `ha:device/` and
`ha:entity/` levels keep these apart from statestream's `ha:<domain>.<entity>`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapter.discovery.generated import (
    DEFAULT_QOS,
    REPLY_TIMEOUT,
    Builder,
    DiscoveryError,
    Document,
    GeneratedDevice,
    all_device_types,
    not_a_topic,
    payload_problem,
    reading_name,
    tags,
    text,
)
from adapter.discovery.homeassistant_tables import (
    HA_DEVICE_ABBREVIATIONS,
    HA_ENTITY_ABBREVIATIONS,
    HA_ORIGIN_ABBREVIATIONS,
)
from adapter.discovery.templates import RAW, ValueTemplate, on_off_path, parse_template

HA_DISCOVERY_PREFIX = "homeassistant"
TOPIC_BASE = "~"
MAX_ENTITIES = 256  # components of one device-based discovery message
SUPPORTED_COMPONENTS = ("sensor", "binary_sensor", "switch", "light", "number")
_HA_ID = re.compile(r"[a-zA-Z0-9_-]+")
_HA_COMPONENT = re.compile(r"\w+")
_ESPHOME_TOPIC = re.compile(
    r"(?P<node>.+)/(?P<component>[^/]+)/(?P<object>[^/]+)/(?:state|command)"
)
_NOT_NUMBERS = frozenset({"timestamp", "date", "enum"})
_CLASS_RANKS = {
    "power": 0,
    "temperature": 1,
    "energy": 2,
    "humidity": 3,
    "pressure": 4,
    "illuminance": 5,
    "voltage": 6,
    "current": 7,
    "battery": 12,
}


def _expand_keys(node: Any, table: Mapping[str, str]) -> Any:
    if not isinstance(node, dict):
        return node
    result = dict(node)
    for key in [k for k in node if k in table and table[k] != k]:
        # As Home Assistant: the abbreviated key wins over a full one given as well.
        result[table[key]] = result.pop(key)
    return result


def _expand_entity(payload: Mapping[str, Any], base: str | None) -> dict[str, Any]:
    result: dict[str, Any] = _expand_keys(dict(payload), HA_ENTITY_ABBREVIATIONS)
    if "device" in result:
        result["device"] = _expand_keys(result["device"], HA_DEVICE_ABBREVIATIONS)
    if "origin" in result:
        result["origin"] = _expand_keys(result["origin"], HA_ORIGIN_ABBREVIATIONS)
    availability = result.get("availability")
    if isinstance(availability, dict):
        availability = [availability]
    if isinstance(availability, list):
        result["availability"] = [
            _expand_keys(entry, HA_ENTITY_ABBREVIATIONS) for entry in availability
        ]
    own_base = result.pop(TOPIC_BASE, None)
    if isinstance(own_base, str):
        base = own_base
    if base is not None:
        for key, value in list(result.items()):
            if key.endswith("topic") and isinstance(value, str):
                result[key] = _with_base(value, base)
        for entry in result.get("availability") or ():
            if isinstance(entry, dict) and isinstance(entry.get("topic"), str):
                entry["topic"] = _with_base(entry["topic"], base)
    return result


def _with_base(topic: str, base: str) -> str:
    if topic.startswith(TOPIC_BASE):
        topic = base + topic[1:]
    if topic.endswith(TOPIC_BASE):
        topic = topic[:-1] + base
    return topic


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """A Home Assistant discovery payload with its abbreviated keys expanded (in the
    payload, its `device`, `origin` and `availability` entries, and each of the
    `components` of device-based discovery) and `~` resolved: a value of a key ending in
    `topic` (and an availability entry's `topic`) that starts or ends with `~` has it
    replaced by the `~` value; the `~` key itself is removed. A component's own `~` wins
    over the device's. Returns a new dict; the argument is not changed."""
    if not isinstance(payload, dict):
        raise DiscoveryError("a discovery payload must be a JSON object")
    base = payload.get(TOPIC_BASE)
    base = base if isinstance(base, str) else None
    result = _expand_entity(payload, None)
    components = result.get("components")
    if isinstance(components, dict):
        result["components"] = {
            key: _expand_entity(value, base) if isinstance(value, dict) else value
            for key, value in components.items()
        }
    return result


# Above reserved.yaml's ignore rule for homeassistant/# (-1).
HA_NAMESPACE_PRIORITY = 0


def _measured(component: str, object_id: str, config: Mapping[str, Any]) -> str:
    """A reading's name for a bare `{{ value }}`: what it measures (the device class,
    `temperature`), else the entity's name (`Outdoor temperature`), else the object id
    (rtl_433's `acurite_tower_a_1234_t` names nothing a reader understands)."""
    device_class = config.get("device_class")
    if isinstance(device_class, str) and device_class not in ("", "None"):
        return reading_name([device_class])
    if component in _CHANNELS:  # a channel, as its commands name it: on_<object id>
        return "state" if object_id == component else reading_name(["state", object_id])
    name = config.get("name")
    if isinstance(name, str) and name.strip():
        return reading_name([name])
    return reading_name([object_id])


# ESPHome's switches and lights are channels of the node: readings state_<object id>.
_CHANNELS = ("switch", "light")
# ESPHome's discovered rules win over esphome.yaml's catch-alls (-2), which name the same
# readings but know no units; they stay below every fixed-root bundled rule.
ESPHOME_PRIORITY = -1


@dataclass(frozen=True)
class _Identity:
    family: str
    device: Document  # a rule's `device`: uri, name, type, tags
    by_object_id: bool  # readings named by object id (ESPHome), else by template or class
    availability: Document  # the device the availability topics are of


def parse_ha_topic(topic: str, prefix: str = HA_DISCOVERY_PREFIX) -> tuple[str, str | None, str]:
    """`<prefix>/<component>/[<node_id>/]<object_id>/config` → (component, node_id,
    object_id). Raises DiscoveryError for any other topic."""
    if not isinstance(topic, str) or not topic.startswith(prefix + "/"):
        raise DiscoveryError(f"not a Home Assistant discovery topic: {str(topic)[:80]!r}")
    levels = topic[len(prefix) + 1 :].split("/")
    if len(levels) not in (3, 4) or levels[-1] != "config":
        raise DiscoveryError(f"not a Home Assistant discovery config topic: {topic[:80]!r}")
    component, *ids = levels[:-1]
    if not _HA_COMPONENT.fullmatch(component) or not all(_HA_ID.fullmatch(i) for i in ids):
        raise DiscoveryError(f"discovery topic with characters HA refuses: {topic[:80]!r}")
    return (component, ids[0], ids[1]) if len(ids) == 2 else (component, None, ids[0])


def ha_rules(
    topic: str,
    payload: dict[str, Any] | None,
    *,
    prefix: str = HA_DISCOVERY_PREFIX,
    device_types: Mapping[str, str] | None = None,
) -> GeneratedDevice | None:
    """The documents and rules of one Home Assistant discovery config
    (`homeassistant/<component>/.../config`, or `homeassistant/device/<id>/config` with
    `cmps`), the payload decoded JSON. None when the payload is empty or None: removed.
    Raises DiscoveryError only for a topic that is no discovery config topic; everything
    else wrong is in `problems`."""
    component, node_id, object_id = parse_ha_topic(topic, prefix)
    if not payload:
        return None
    build = Builder(topic)
    if not isinstance(payload, dict):
        build.problem("payload is not a JSON object")
        return build.result(family="homeassistant")
    expanded = expand(payload)
    types = all_device_types(device_types)
    entities: list[tuple[str, str, dict[str, Any]]] = []
    if component == "device":
        components = expanded.get("components")
        if not isinstance(components, dict) or not components:
            build.problem("device-based discovery without 'cmps'/'components'")
            return build.result(family="homeassistant")
        shared = {k: v for k, v in expanded.items() if k != "components"}
        for index, (component_id, config) in enumerate(components.items()):
            if index >= MAX_ENTITIES:
                build.problem(f"more than {MAX_ENTITIES} components; the rest ignored")
                break
            if not isinstance(config, dict):
                build.problem(f"component {component_id!r} is not an object")
                continue
            platform = config.get("platform")
            if not isinstance(platform, str):
                build.problem(f"component {component_id!r} has no platform 'p'")
                continue
            entities.append((platform, str(component_id), {**shared, **config}))
    else:
        entities.append((component, object_id, expanded))
    first: _Identity | None = None
    for platform, entity_id, config in entities:
        identity = _identity(platform, node_id, entity_id, config, types)
        first = first or identity
        _entity(build, platform, entity_id, config, identity, prefix)
    if first is None:
        return build.result(family="homeassistant")
    device = first.device
    return build.result(device["uri"], first.family, device["name"], device["type"])


def _ids(device: Mapping[str, Any]) -> list[str]:
    identifiers = device.get("identifiers")
    if isinstance(identifiers, str | int) and not isinstance(identifiers, bool):
        identifiers = [identifiers]
    found = [text(i) for i in identifiers] if isinstance(identifiers, list) else []
    connections = device.get("connections")
    if isinstance(connections, list):
        for pair in connections:
            if isinstance(pair, list) and len(pair) == 2:
                found.append(text(f"{text(pair[0])}_{text(pair[1])}"))
    return [i for i in found if i]


def _identity(
    component: str,
    node_id: str | None,
    object_id: str,
    config: Mapping[str, Any],
    types: Mapping[str, str],
) -> _Identity:
    device = config.get("device")
    device = device if isinstance(device, dict) else {}
    origin = config.get("origin")
    origin_name = text(origin.get("name")).lower() if isinstance(origin, dict) else ""
    ids = _ids(device)
    device_name = text(device.get("name"))
    state_topic = config.get("state_topic")
    command_topic = config.get("command_topic")
    described = [
        ("model", device.get("model")),
        ("manufacturer", device.get("manufacturer")),
    ]
    # Zigbee2MQTT: the device's name is its friendly name, the state topic <base>/<name>.
    if (origin_name == "zigbee2mqtt" or any(i.startswith("zigbee2mqtt_") for i in ids)) and (
        device_name
        and (
            (isinstance(state_topic, str) and state_topic.endswith("/" + device_name))
            or (isinstance(command_topic, str) and f"/{device_name}/set" in command_topic)
        )
    ):
        uri = f"z2m:{device_name}"
        z2m = _device(
            uri, device_name, types["zigbee2mqtt"], [("family", "zigbee2mqtt"), *described]
        )
        return _Identity("zigbee2mqtt", z2m, False, z2m)
    # ESPHome: <node>/<component>/<object>/state, one device per entity as esphome.yaml.
    sw_version = device.get("sw_version")
    is_esphome = origin_name == "esphome" or (
        isinstance(sw_version, str) and sw_version.lower().startswith("esphome")
    )
    topic = state_topic if isinstance(state_topic, str) else command_topic
    found = _ESPHOME_TOPIC.fullmatch(topic) if is_esphome and isinstance(topic, str) else None
    if found is not None and found.group("component") == component:
        # One device per node, as esphome.yaml: each entity a reading named by its object id.
        node = text(found.group("node"))
        node_device = _device(f"esphome:{node}", node, types["esphome"], [("family", "esphome")])
        return _Identity("esphome", node_device, True, node_device)
    # Anything else: one platform device per Home Assistant device.
    if ids:
        uri = f"ha:device/{ids[0]}"
    else:
        unique = text(config.get("unique_id"))
        discovery_id = f"{node_id}/{object_id}" if node_id else object_id
        uri = f"ha:entity/{unique or text(discovery_id)}"
    name = device_name or text(config.get("name")) or uri
    described = [("family", "homeassistant"), ("origin", origin_name), *described]
    other = _device(uri, name, types["homeassistant"], described)
    return _Identity("homeassistant", other, False, other)


def _device(uri: str, name: str, device_type: str, described: list[tuple[str, Any]]) -> Document:
    return {"uri": uri, "name": name, "type": device_type, "tags": tags(described)}


def _entity(
    build: Builder,
    component: str,
    object_id: str,
    config: Mapping[str, Any],
    identity: _Identity,
    prefix: str = HA_DISCOVERY_PREFIX,
) -> None:
    label = f"{component} {object_id!r}"
    if component not in SUPPORTED_COMPONENTS:
        build.problem(f"{label}: component {component!r} is not supported")
        return
    _availability(build, label, config, identity)
    device = identity.device
    on_off = component in ("binary_sensor", "switch", "light")
    state = _state(build, label, component, config)
    if state is not None:
        topic, template, on, off = state
        if identity.by_object_id:  # as esphome.yaml names it: {object}, state_{object}
            name = reading_name(["state", object_id] if component in _CHANNELS else [object_id])
        elif template.json and template.keys:  # value_json.temperature: as the payload says
            name = reading_name(template.keys)
        else:
            name = _measured(component, object_id, config)
        path = on_off_path(f"({template.path})", on, off) if on_off else template.path
        reading: Document = {"path": path}
        unit = text(config.get("unit_of_measurement"))
        if unit:
            reading["unit"] = unit
        build.ranks[name] = _rank(component, config)
        service = "state" if identity.by_object_id and on_off else "sepl_get"
        kind = "json" if template.json else "text"
        rule: Document = {"topic": topic, "device": device, "service": service, "payload": kind}
        if identity.by_object_id:
            rule["priority"] = ESPHOME_PRIORITY
        elif topic.startswith(prefix + "/"):
            # A state topic under homeassistant/ (as HA's own examples place them): taken
            # before reserved.yaml drops the namespace, because a config names it.
            rule["priority"] = HA_NAMESPACE_PRIORITY
        if not build.rule(build.key, {**rule, "readings": {name: reading}}):
            state = None  # the commands wait for no reply on a topic no rule can take
    if component in ("switch", "light", "number"):
        _commands(build, label, component, object_id, config, identity, device, state)


def _rank(component: str, config: Mapping[str, Any]) -> int:
    if component != "sensor":
        return 15 if component == "number" else 20
    if config.get("entity_category") == "diagnostic":
        return 14
    device_class = config.get("device_class")
    return _CLASS_RANKS.get(device_class, 10) if isinstance(device_class, str) else 10


def _state(
    build: Builder, label: str, component: str, config: Mapping[str, Any]
) -> tuple[str, ValueTemplate, Any, Any] | None:
    """The state topic, its template and the on/off values, or None (reported)."""
    topic = config.get("state_topic")
    if topic is None:
        if component in ("sensor", "binary_sensor"):
            build.problem(f"{label}: no state_topic")
        return None
    problem = not_a_topic(topic, f"{label}: state_topic")
    if problem is not None:
        build.problem(problem)
        return None
    device_class = config.get("device_class")
    if component == "sensor" and isinstance(device_class, str) and device_class in _NOT_NUMBERS:
        build.problem(f"{label}: device class {device_class!r} is not a number; skipped")
        return None
    on: Any = config.get("payload_on", "ON")
    off: Any = config.get("payload_off", "OFF")
    schema = config.get("schema", "default")
    if component == "light" and schema == "json":
        return topic, ValueTemplate("state", True, ("state",)), "ON", "OFF"
    if component == "light" and schema not in ("default", "basic"):
        build.problem(f"{label}: light schema {schema!r} is not supported")
        return None
    if component == "switch":
        on, off = config.get("state_on", on), config.get("state_off", off)
    key = "state_value_template" if component == "light" else "value_template"
    written = config.get(key)
    template = RAW if written is None else parse_template(written)
    if template is None:
        build.problem(f"{label}: not understood: {key} {str(written)[:120]!r}")
        return None
    for value, what in ((on, "payload_on"), (off, "payload_off")):
        if not isinstance(value, str | int | float | bool) or value is None:
            build.problem(f"{label}: {what} is not a value: {value!r}")
            return None
    return topic, template, on, off


def _availability(
    build: Builder, label: str, config: Mapping[str, Any], identity: _Identity
) -> None:
    entries: list[Any] = []
    listed = config.get("availability")
    if isinstance(listed, list):
        entries = listed[:8]
    elif listed is not None:
        build.problem(f"{label}: availability is not a list")
    topic = config.get("availability_topic")
    if topic is not None:
        entries.append(
            {
                "topic": topic,
                "payload_available": config.get("payload_available", "online"),
                "payload_not_available": config.get("payload_not_available", "offline"),
                "value_template": config.get("availability_template"),
            }
        )
    for entry in entries:
        if not isinstance(entry, dict):
            build.problem(f"{label}: availability entry is not an object")
            continue
        problem = not_a_topic(entry.get("topic"), f"{label}: availability topic")
        if problem is not None:
            build.problem(problem)
            continue
        written = entry.get("value_template")
        template = RAW if written is None else parse_template(written)
        if template is None:
            build.problem(f"{label}: not understood: availability template {str(written)[:120]!r}")
            continue
        online = entry.get("payload_available", "online")
        offline = entry.get("payload_not_available", "offline")
        if not all(isinstance(v, str | int | float | bool) for v in (online, offline)):
            build.problem(f"{label}: availability payloads are not values")
            continue
        # The adapter compares a payload without its surrounding spaces.
        online = online.strip() if isinstance(online, str) else online
        offline = offline.strip() if isinstance(offline, str) else offline
        availability = {"path": template.path, "online": [online], "offline": [offline]}
        rule = {"topic": entry["topic"], "device": identity.availability}
        kind = "json" if template.json else "text"
        build.rule(build.key, {**rule, "payload": kind, "availability": availability})


def _commands(
    build: Builder,
    label: str,
    component: str,
    object_id: str,
    config: Mapping[str, Any],
    identity: _Identity,
    device: Document,
    state: tuple[str, ValueTemplate, Any, Any] | None,
) -> None:
    topic = config.get("command_topic")
    if topic is None:
        if component != "number":
            build.problem(f"{label}: no command_topic")
        return
    problem = not_a_topic(topic, f"{label}: command_topic")
    if problem is not None:
        build.problem(problem)
        return
    if config.get("command_template") is not None:
        build.problem(
            f"{label}: not understood: command_template {str(config['command_template'])[:120]!r}"
        )
        return
    qos = config.get("qos", DEFAULT_QOS)
    qos = qos if qos in (0, 1, 2) and not isinstance(qos, bool) else DEFAULT_QOS
    command: Document = {"device": device["uri"], "device_type": device["type"]}
    if state is not None:
        state_topic, template = state[0], state[1]
        reply: Document = {"topic": state_topic, "timeout": REPLY_TIMEOUT}
        if template.json:
            if template.keys:
                reply["match"] = [{"path": template.path, "exists": True}]
            reply["data"] = template.path
        else:
            reply["payload"] = "text"
        command["reply"] = reply
    suffix = ""
    # A node's or HA device's several switches: the service names which (on_my_relay).
    # Zigbee2MQTT's object ids `switch`, `light` name the device's only one.
    if identity.by_object_id or object_id != component:
        suffix = "_" + reading_name([object_id])
    if component == "number":
        publish = {"topic": topic, "payload": "{data}", "qos": int(qos)}
        build.command(build.key, {"service": "set" + suffix, **command, "publish": publish})
        return
    on = config.get("payload_on", "ON")
    off = config.get("payload_off", "OFF")
    payloads: list[tuple[str, Any]] = [("on", on), ("off", off)]
    if component == "light" and config.get("schema") == "json":
        payloads = [("on", {"state": "ON"}), ("off", {"state": "OFF"})]
    elif identity.family == "esphome" and component == "switch":
        payloads.append(("toggle", "TOGGLE"))  # ESPHome switches take TOGGLE (esphome.yaml)
    for service, payload in payloads:
        if not isinstance(payload, dict):
            problem = payload_problem(payload, f"{label}: {service} payload")
            if problem is not None:
                build.problem(problem)
                continue
            payload = payload if isinstance(payload, str) else json.dumps(payload)
        publish = {"topic": topic, "payload": payload, "qos": int(qos)}
        build.command(build.key, {"service": service + suffix, **command, "publish": publish})
