"""Tasmota's discovery (`tasmota/discovery/<MAC>/config` and `.../sensors`) as mapping
documents. Device uri `tasmota:<t>`, as `mappings/tasmota.yaml` names the same plug."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from adapter.discovery.generated import (
    DEFAULT_QOS,
    REPLY_TIMEOUT,
    Builder,
    DiscoveryError,
    Document,
    GeneratedDevice,
    all_device_types,
    payload_problem,
    tags,
    text,
)
from adapter.discovery.tasmota_tables import (
    ENERGY_UNITS,
    LEAF_UNITS,
    RELAY_TYPES,
    SKIPPED,
    STATES,
)
from adapter.discovery.templates import on_off_path
from adapter.mapping.conventions import tasmota as tasmota_convention

TASMOTA_DISCOVERY_PREFIX = "tasmota/discovery"
MAX_READINGS = 100  # per Tasmota sensors message
MAX_DEPTH = 8  # nesting levels of a Tasmota sensors message that are searched
_MAC = re.compile(r"[A-Z0-9_-]+")  # hatasmota's TOPIC_MATCHER
# The device's primary as mappings/tasmota.yaml chooses it: a meter's power, else its
# temperature.
SENSOR_PRIMARIES = ("power", "temperature", "temperature_1", "co2", "illuminance")


def tasmota_topic(config: Mapping[str, Any], prefix_index: int) -> str:
    """The FullTopic of a discovery config for one prefix (0 cmnd, 1 stat, 2 tele), built
    as the firmware's GetTopic_P does: `/%prefix%` appended for commands when FullTopic
    lacks it, tokens `%prefix%`, `%topic%`, `%hostname%` (`hn`), `%id%` (`mac`) replaced,
    `//` collapsed, a trailing `/` added. Raises KeyError/TypeError/IndexError on a
    config without the keys (the caller turns that into a problem)."""
    full = config["ft"]
    prefixes = config["tp"]
    if not isinstance(full, str) or not isinstance(prefixes, list):
        raise TypeError("ft must be text and tp a list")
    prefix = prefixes[prefix_index]
    topic = config["t"]
    if not isinstance(prefix, str) or not isinstance(topic, str):
        raise TypeError("tp entries and t must be text")
    if prefix_index == 0 and "%prefix%" not in full:
        full += "/%prefix%"
    full = full.replace("%prefix%", prefix).replace("%topic%", topic)
    if "%hostname%" in full:
        hostname = config["hn"]
        if not isinstance(hostname, str):
            raise TypeError("hn must be text")
        full = full.replace("%hostname%", hostname)
    if "%id%" in full:
        mac = config["mac"]
        if not isinstance(mac, str):
            raise TypeError("mac must be text")
        full = full.replace("%id%", mac)
    full = full.replace("//", "/")
    return full if full.endswith("/") else full + "/"


def _numeric_leaves(
    node: Any, keys: tuple[str | int, ...], out: list[tuple[tuple[str | int, ...], float]]
) -> bool:
    """Every JSON number below node, in document order; False when cut short."""
    if len(out) >= MAX_READINGS or len(keys) > MAX_DEPTH:
        return False
    complete = True
    if isinstance(node, dict):
        for key, value in node.items():
            if not keys and key in SKIPPED:
                continue
            complete &= _numeric_leaves(value, (*keys, str(key)), out)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            complete &= _numeric_leaves(value, (*keys, index), out)
    elif isinstance(node, int | float) and not isinstance(node, bool) and keys:
        number = _finite(node)
        if number is not None:
            out.append((keys, number))
    return complete


def _finite(value: float) -> float | None:
    try:
        number = float(value)  # an int beyond a float's range raises
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _unit(keys: tuple[str | int, ...], sensors: Mapping[str, Any]) -> str | None:
    names = tuple(k for k in keys if isinstance(k, str))
    if len(names) >= 2 and names[0] == "ENERGY" and names[1] in ENERGY_UNITS:
        return ENERGY_UNITS[names[1]]
    last = names[-1] if names else ""
    if last in ("Temperature", "DewPoint"):
        unit = sensors.get("TempUnit")
        return f"°{unit}" if unit in ("C", "F") else None
    if last == "Pressure":
        unit = sensors.get("PressureUnit")
        return unit if isinstance(unit, str) else None
    return LEAF_UNITS.get(last)


def tasmota_rules(
    mac: str,
    config: dict[str, Any] | None,
    sensors: dict[str, Any] | None,
    prefix: str = TASMOTA_DISCOVERY_PREFIX,
    *,
    device_types: Mapping[str, str] | None = None,
) -> GeneratedDevice | None:
    """The documents and rules of one Tasmota device from `<prefix>/<MAC>/config` and
    `<prefix>/<MAC>/sensors` (both decoded JSON; `sensors` may be None when not seen yet).
    None when the config is empty or None: the device was removed. `prefix` is the
    discovery prefix (the key is `<prefix>/<MAC>/config`), not DEVICE_PREFIX, which the
    MappingSet applies. Raises DiscoveryError for a MAC hatasmota would not accept
    (`[A-Z0-9_-]+`)."""
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise DiscoveryError(f"not a Tasmota discovery MAC: {str(mac)[:40]!r}")
    key = f"{prefix}/{mac}/config"
    if not config:
        return None
    build = Builder(key)
    if not isinstance(config, dict):
        build.problem("config is not a JSON object")
        return build.result(family="tasmota")
    topic = config.get("t")
    if not isinstance(topic, str) or not topic:
        build.problem("config has no topic 't'")
        return build.result(family="tasmota")
    try:
        cmnd, stat, tele = (tasmota_topic(config, i) for i in range(3))
    except (KeyError, TypeError, IndexError) as exc:
        build.problem(f"config cannot give the device's topics (ft, tp, t): {exc!r}")
        return build.result(family="tasmota")
    device_type = all_device_types(device_types)["tasmota"]
    friendly = config.get("fn")
    first_friendly = friendly[0] if isinstance(friendly, list) and friendly else None
    name = text(config.get("dn")) or text(first_friendly) or text(topic)
    uri = f"tasmota:{text(topic)}"
    device_tags = tags(
        [
            ("vendor", "tasmota"),
            ("model", config.get("md")),
            ("mac", config.get("mac", mac)),
            ("sw", config.get("sw")),
        ]
    )
    device = {"uri": uri, "name": name, "type": device_type, "tags": device_tags}
    texts = config.get("state")
    states = [
        texts[i]
        if isinstance(texts, list) and len(texts) > i and isinstance(texts[i], str)
        else default
        for i, default in enumerate(STATES)
    ]

    if sensors is not None:
        _sensor_rule(build, f"{prefix}/{mac}/sensors", tele, sensors, device)
    relays = config.get("rl")
    relay_indexes = [
        i
        for i, kind in enumerate(relays if isinstance(relays, list) else [])
        if kind in RELAY_TYPES and not isinstance(kind, bool)
    ][:32]
    if relays is not None and not isinstance(relays, list):
        build.problem("config 'rl' is not a list; no relays")
    if relay_indexes:
        readings = {}
        for i in relay_indexes:
            reading = "state" if i == 0 else f"state_{i + 1}"
            power = "(POWER || POWER1)" if i == 0 else f"POWER{i + 1}"
            readings[reading] = on_off_path(power, states[1], states[0])
            build.ranks[reading] = 20
        state_rule = {"topic": tele + "STATE", "device": device, "service": "state"}
        # The relays by the device's own state texts; the rest (dimmer, Wi-Fi) as
        # tasmota.yaml reads it. A relay's state never becomes the device's primary.
        state_rule |= {"payload": "json", "readings": readings, "convention": "tasmota"}
        build.rule(key, {**state_rule, "primary": []})
    for i in relay_indexes:
        answered = "POWER || POWER1" if i == 0 else f"POWER{i + 1}"
        reply = {
            "topic": stat + "RESULT",
            "timeout": REPLY_TIMEOUT,
            "match": [{"path": answered, "exists": True}],
        }
        suffix = "" if i == 0 else f"_{i + 1}"
        for service, payload in (("on", states[1]), ("off", states[0]), ("toggle", states[2])):
            problem = payload_problem(payload, "state text")
            if problem is not None:
                build.problem(problem)
                continue
            publish = {"topic": f"{cmnd}POWER{i + 1}", "payload": payload, "qos": DEFAULT_QOS}
            command = {"service": service + suffix, "device": uri, "device_type": device_type}
            build.command(key, {**command, "publish": publish, "reply": reply})
    online, offline = config.get("onln", "Online"), config.get("ofln", "Offline")
    if isinstance(online, str) and isinstance(offline, str):
        availability = {"online": [online.strip()], "offline": [offline.strip()]}
        lwt = {"topic": tele + "LWT", "device": device, "payload": "text"}
        build.rule(key, {**lwt, "availability": availability})
    else:
        build.problem("config 'onln'/'ofln' are not text; no availability")
    return build.result(uri, "tasmota", name, device_type)


def _sensor_rule(build: Builder, source: str, tele: str, sensors: Any, device: Document) -> None:
    """The SENSOR rule: Tasmota's convention (adapter/mapping/conventions.py) names the
    readings and gives their units, as `mappings/tasmota.yaml` does, so a hand-written rule
    and discovery forward the same readings under the same names."""
    document = sensors.get("sn") if isinstance(sensors, dict) else None
    if not isinstance(document, dict):
        build.problem(f"{source}: no sensor JSON 'sn'")
        return
    names = [name for name, _, _ in tasmota_convention(document)]
    if not names:
        build.problem(f"{source}: no numbers in the sensor JSON; no SENSOR rule")
        return
    primary = [name for name in SENSOR_PRIMARIES if name in names] or names[:1]
    rule = {"topic": tele + "SENSOR", "device": device, "service": "sepl_get"}
    build.rule(source, {**rule, "payload": "json", "convention": "tasmota", "primary": primary})
