"""Zigbee2MQTT's retained `<base>/bridge/devices` list as mapping documents: one device
`z2m:<friendly name>` per joined device, its readings named after the properties its
exposes declare, with their units (a plug's voltage in V, a battery sensor's in mV), and
commands for its writable properties. Device uri and reading names are those of
`mappings/zigbee2mqtt.yaml`, which takes the devices the list does not name.

The exposes (Zigbee2MQTT docs, "Exposes"): generic `numeric` (`unit`, `value_min`...),
`binary` (`value_on`, `value_off`), `enum`, `text`, `composite`, `list`, and specific
`light`, `switch`, `lock`, `climate`, `fan`, `cover` whose `features` are generic ones;
`property` is the key in the device's messages (`state_l1` for an endpoint), `access` a
bit set: 1 published, 2 settable, 4 gettable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from adapter.discovery.generated import (
    REPLY_TIMEOUT,
    Builder,
    Document,
    GeneratedDevice,
    all_device_types,
    tags,
    text,
)
from adapter.discovery.templates import key_path, on_off_path

Z2M_BASE = "zigbee2mqtt"
MAX_DEVICES = 2_000
SETTABLE = 2
# Outranks zigbee2mqtt.yaml's `{name...}` rule (priority 0, a wildcard) by specificity:
# the generated rule's topic is literal, and it knows the units.
Z2M_PRIORITY = 0
# The primary of a device, as zigbee2mqtt.yaml prefers it.
PRIMARIES = ("power", "temperature", "local_temperature", "illuminance", "state")
# What zigbee2mqtt.yaml leaves out or renames, kept the same here.
EXCLUDED = ("update_available", "last_seen")
RENAMED = {"illuminance_lux": "illuminance"}


def devices_topic(base: str = Z2M_BASE) -> str:
    return f"{base}/bridge/devices"


def z2m_rules(
    payload: Any,
    base: str = Z2M_BASE,
    *,
    device_types: Mapping[str, str] | None = None,
) -> list[GeneratedDevice]:
    """One GeneratedDevice per device of the list (the coordinator and devices without a
    definition have none). Keys are `<base>/bridge/devices#<ieee address>`."""
    if not isinstance(payload, list):
        return []
    device_type = all_device_types(device_types)["zigbee2mqtt"]
    made = []
    for entry in payload[:MAX_DEVICES]:
        if not isinstance(entry, dict):
            continue
        definition = entry.get("definition")
        name = text(entry.get("friendly_name"))
        address = text(entry.get("ieee_address")) or name
        if entry.get("type") == "Coordinator" or not isinstance(definition, dict) or not name:
            continue
        device = _device(
            Builder(f"{devices_topic(base)}#{address}"), base, name, definition, device_type
        )
        if device is not None:
            made.append(device)
    return made


def _features(exposes: Any) -> Iterator[dict[str, Any]]:
    """Every generic expose with a property, the features of specific ones included."""
    if not isinstance(exposes, list):
        return
    for expose in exposes:
        if not isinstance(expose, dict):
            continue
        if isinstance(expose.get("features"), list) and expose.get("type") != "composite":
            yield from _features(expose["features"])
        elif isinstance(expose.get("property"), str):
            yield expose


def _device(
    build: Builder, base: str, name: str, definition: dict[str, Any], device_type: str
) -> GeneratedDevice | None:
    uri = f"z2m:{name}"
    described = [
        ("family", "zigbee2mqtt"),
        ("model", definition.get("model")),
        ("manufacturer", definition.get("vendor")),
    ]
    device: Document = {"uri": uri, "name": name, "type": device_type, "tags": tags(described)}
    topic = f"{base}/{name}"
    readings: dict[str, Document] = {}
    commands: list[tuple[str, Any, str]] = []  # (service, payload, property)
    for feature in _features(definition.get("exposes")):
        prop = feature["property"]
        kind = feature.get("type")
        access = feature.get("access", 1)
        access = access if isinstance(access, int) and not isinstance(access, bool) else 1
        reading = RENAMED.get(prop, prop)
        if kind == "numeric":
            spec: Document = {"path": key_path((prop,))}
            unit = text(feature.get("unit"))
            if unit:
                spec["unit"] = unit
            readings[reading] = spec
        elif kind == "binary":
            on, off = feature.get("value_on", True), feature.get("value_off", False)
            readings[reading] = {"path": on_off_path(key_path((prop,)), on, off)}
        if not access & SETTABLE:
            continue
        if kind == "binary" and prop != "state":  # state: zigbee2mqtt.yaml's on/off/toggle
            suffix = prop.removeprefix("state_")
            on, off = feature.get("value_on", "ON"), feature.get("value_off", "OFF")
            commands += [(f"on_{suffix}", {prop: on}, prop), (f"off_{suffix}", {prop: off}, prop)]
            if feature.get("value_toggle") is not None:
                commands.append((f"toggle_{suffix}", {prop: feature["value_toggle"]}, prop))
        elif kind == "numeric":
            commands.append((f"set_{prop}", '{"' + prop + '": {data}}', prop))
        elif kind in ("enum", "text"):
            commands.append((f"set_{prop}", '{"' + prop + '": {data_json}}', prop))
    if not readings:
        build.problem(f"{name}: no numeric or binary property in its exposes")
        return build.result(uri, "zigbee2mqtt", name, device_type)
    primary = [p for p in PRIMARIES if p in readings] or [next(iter(readings))]
    rule: Document = {
        "topic": topic,
        "device": device,
        "service": "sepl_get",
        "payload": "json",
        "readings": readings,
        # Properties a definition does not expose (linkquality, newer firmware's) too.
        "all_readings": {"exclude": list(EXCLUDED), "names": RENAMED},
        "primary": primary,
        "priority": Z2M_PRIORITY,
        "timestamp": {"path": "last_seen"},
    }
    build.rule(build.key, rule)
    for service, payload, prop in commands:
        command: Document = {
            "service": service,
            "device": uri,
            "device_type": device_type,
            "publish": {"topic": f"{topic}/set", "payload": payload, "qos": 1},
            "reply": {
                "topic": topic,
                "timeout": REPLY_TIMEOUT,
                "match": [{"path": key_path((prop,)), "exists": True}],
            },
        }
        build.command(build.key, command)
    return build.result(uri, "zigbee2mqtt", name, device_type)
