"""Zero-configuration devices (issue [8]): Home Assistant abbreviations and `~`, value
templates, rules generated from Tasmota and Home Assistant discovery payloads of the shapes
in shared/device-conventions.md (§1.5, §2.3, §2.4, §3.1), merging with hand-written rules,
and hostile discovery data. Pure: no broker."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.discovery import (
    DISCOVERED_PRIORITY,
    HA_ABBREVIATIONS,
    HA_DEVICE_ABBREVIATIONS,
    HA_ENTITY_ABBREVIATIONS,
    HA_ORIGIN_ABBREVIATIONS,
    STATE_FILE,
    DiscoveryError,
    DiscoverySource,
    GeneratedDevice,
    expand,
    ha_rules,
    merge,
    parse_ha_topic,
    parse_template,
    parse_value_template,
    reading_name,
    tasmota_rules,
    tasmota_topic,
)
from adapter.mapping import (
    AvailabilityChange,
    CommandRule,
    Mapped,
    MappingSet,
    Outcome,
    Rule,
    compile_text,
    load_directory,
)
from adapter.mapping.compile import compile_document, path_of

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
EMPTY = MappingSet([], [])


def mapped(outcome: Outcome | None) -> Mapped:
    assert isinstance(outcome, Mapped), outcome
    return outcome


def availability(outcome: Outcome | None) -> AvailabilityChange:
    assert isinstance(outcome, AvailabilityChange), outcome
    return outcome


def generated(device: GeneratedDevice | None) -> GeneratedDevice:
    assert device is not None
    return device


def alone(*devices: GeneratedDevice | None) -> MappingSet:
    """The generated rules with an empty mappings directory."""
    merged, _ = merge(EMPTY, devices)
    return merged


# --- real payload shapes -------------------------------------------------------------------

# home-assistant/core tests/components/tasmota/test_common.py DEFAULT_CONFIG
TASMOTA_DEFAULT_CONFIG: dict[str, Any] = {
    "ip": "192.168.15.10",
    "dn": "Tasmota",
    "fn": ["Test", "Beer", "Milk", "Four", None],
    "hn": "tasmota_49A3BC-0956",
    "if": 0,
    "lk": 1,
    "mac": "00000049A3BC",
    "md": "Sonoff Basic",
    "ofln": "Offline",
    "onln": "Online",
    "state": ["OFF", "ON", "TOGGLE", "HOLD"],
    "sw": "8.4.0.2",
    "swn": [None, None, None, None, None],
    "t": "tasmota_49A3BC",
    "ft": "%topic%/%prefix%/",
    "tp": ["cmnd", "stat", "tele"],
    "rl": [0, 0, 0, 0, 0, 0, 0, 0],
    "swc": [-1, -1, -1, -1, -1, -1, -1, -1],
    "btn": [0, 0, 0, 0],
    "so": {"4": 0, "11": 0, "13": 0, "17": 1, "20": 0, "30": 0, "68": 0, "73": 0, "82": 0},
    "ty": 0,
    "lt_st": 0,
    "ver": 1,
}
# home-assistant/core tests/components/tasmota/test_sensor.py LIST_SENSOR_CONFIG (+ "ver")
TASMOTA_LIST_SENSORS: dict[str, Any] = {
    "sn": {
        "Time": "2020-09-25T12:47:15",
        "ENERGY": {
            "TotalStartTime": "2018-11-23T15:33:47",
            "Total": 0.017,
            "TotalTariff": [0.000, 0.017],
            "Yesterday": 0.000,
            "Today": 0.002,
            "ExportActive": 0.000,
            "ExportTariff": [0.000, 0.000],
            "Period": 0.00,
            "Power": 0.00,
            "ApparentPower": 7.84,
            "ReactivePower": -7.21,
            "Factor": 0.39,
            "Frequency": 50.0,
            "Voltage": 234.31,
            "Current": 0.039,
            "ImportActive": 12.580,
            "ImportReactive": 0.002,
            "ExportReactive": 39.131,
            "PhaseAngle": 290.45,
        },
    },
    "ver": 1,
}
# A plug with an energy meter and one relay, default FullTopic %prefix%/%topic%/.
PLUG_CONFIG: dict[str, Any] = {
    **TASMOTA_DEFAULT_CONFIG,
    "dn": "Kitchen plug",
    "hn": "pow1-4711",
    "mac": "A4CF12B3C4D5",
    "md": "Sonoff Pow R2",
    "sw": "13.1.0",
    "t": "pow1",
    "ft": "%prefix%/%topic%/",
    "rl": [1, 0, 0, 0, 0, 0, 0, 0],
}
# tasmota/docs docs/devices/Sonoff-Pow.md: the sensors of the discovery message and a
# real tele/pow1/SENSOR.
PLUG_SENSORS: dict[str, Any] = {
    "sn": {
        "Time": "2018-02-15T17:37:10",
        "ENERGY": {
            "TotalStartTime": "2018-11-14T18:39:40",
            "Total": 6.294,
            "Yesterday": 5.340,
            "Today": 0.954,
            "Period": 217,
            "Power": 2635,
            "ApparentPower": 2650,
            "ReactivePower": 282,
            "Factor": 0.99,
            "Voltage": 227,
            "Current": 11.661,
        },
    },
    "ver": 1,
}
POW_TELEMETRY = (
    b'{"Time":"2018-02-15T17:37:10","ENERGY":{"TotalStartTime":"2018-11-14T18:39:40",'
    b'"Total":6.294,"Yesterday":5.340,"Today":0.954,"Period":217,"Power":2635,'
    b'"ApparentPower":2650,"ReactivePower":282,"Factor":0.99,"Voltage":227,"Current":11.661}}'
)

# ESPHome node "livingroom" (device-conventions.md §2.3), abbreviated keys, with `~`.
ESPHOME_DEVICE = {
    "ids": "a4cf12b3c4d5",
    "name": "livingroom",
    "sw": "esphome v2024.6.1 Jun 20 2024, 10:00:00",
    "mdl": "nodemcuv2",
    "mf": "espressif",
}
ESPHOME_SENSOR_TOPIC = "homeassistant/sensor/livingroom/living_room_temperature/config"
ESPHOME_SENSOR = {
    "~": "livingroom/sensor/living_room_temperature",
    "dev_cla": "temperature",
    "unit_of_meas": "°C",
    "stat_cla": "measurement",
    "name": "Living Room Temperature",
    "stat_t": "~/state",
    "avty_t": "livingroom/status",
    "uniq_id": "ESPsensorliving_room_temperature",
    "dev": ESPHOME_DEVICE,
}
ESPHOME_SWITCH_TOPIC = "homeassistant/switch/livingroom/my_relay/config"
ESPHOME_SWITCH = {
    "~": "livingroom/switch/my_relay",
    "name": "My Relay",
    "stat_t": "~/state",
    "cmd_t": "~/command",
    "avty_t": "livingroom/status",
    "uniq_id": "ESPswitchmy_relay",
    "dev": ESPHOME_DEVICE,
    "o": {"name": "ESPHome", "sw": "2024.6.1", "url": "https://esphome.io"},
}

# Zigbee2MQTT (device-conventions.md §2.4) as its Home Assistant extension announces it:
# full keys, `value_template`, `json_attributes_topic`, availability list (2.x JSON form).
Z2M_SENSOR_TOPIC = "homeassistant/sensor/0x00158d00022cb428/temperature/config"
Z2M_SENSOR: dict[str, Any] = {
    "availability": [
        {"topic": "zigbee2mqtt/bridge/state", "value_template": "{{ value_json.state }}"},
        {
            "topic": "zigbee2mqtt/living_room/availability",
            "value_template": "{{ value_json.state }}",
        },
    ],
    "availability_mode": "all",
    "device": {
        "identifiers": ["zigbee2mqtt_0x00158d00022cb428"],
        "manufacturer": "Aqara",
        "model": "Temperature and humidity sensor (WSDCGQ11LM)",
        "name": "living_room",
        "via_device": "zigbee2mqtt_bridge_0x00124b0022a0b0e1",
    },
    "device_class": "temperature",
    "enabled_by_default": True,
    "json_attributes_topic": "zigbee2mqtt/living_room",
    "object_id": "living_room_temperature",
    "origin": {"name": "Zigbee2MQTT", "sw": "1.40.2", "url": "https://www.zigbee2mqtt.io"},
    "state_class": "measurement",
    "state_topic": "zigbee2mqtt/living_room",
    "unique_id": "0x00158d00022cb428_temperature_zigbee2mqtt",
    "unit_of_measurement": "°C",
    "value_template": "{{ value_json.temperature }}",
}
Z2M_HUMIDITY_TOPIC = "homeassistant/sensor/0x00158d00022cb428/humidity/config"
Z2M_HUMIDITY = {
    **Z2M_SENSOR,
    "device_class": "humidity",
    "object_id": "living_room_humidity",
    "unique_id": "0x00158d00022cb428_humidity_zigbee2mqtt",
    "unit_of_measurement": "%",
    "value_template": "{{ value_json.humidity }}",
}
Z2M_BATTERY_TOPIC = "homeassistant/sensor/0x00158d00022cb428/battery/config"
Z2M_BATTERY = {
    **Z2M_SENSOR,
    "device_class": "battery",
    "entity_category": "diagnostic",
    "object_id": "living_room_battery",
    "unique_id": "0x00158d00022cb428_battery_zigbee2mqtt",
    "unit_of_measurement": "%",
    "value_template": "{{ value_json.battery }}",
}
Z2M_TELEMETRY = (
    b'{"temperature":29.1,"linkquality":55,"humidity":34.6,"pressure":987.1,"battery":100,'
    b'"voltage":3035,"last_seen":"2019-03-08T19:28:17+03:00"}'
)


def z2m_device(name: str, ieee: str) -> dict[str, Any]:
    return {
        "identifiers": [f"zigbee2mqtt_{ieee}"],
        "manufacturer": "IKEA",
        "model": "TRADFRI control outlet",
        "name": name,
    }


def z2m_switch(name: str, ieee: str) -> dict[str, Any]:
    return {
        "availability": [
            {"topic": "zigbee2mqtt/bridge/state", "value_template": "{{ value_json.state }}"},
            {
                "topic": f"zigbee2mqtt/{name}/availability",
                "value_template": "{{ value_json.state }}",
            },
        ],
        "command_topic": f"zigbee2mqtt/{name}/set",
        "device": z2m_device(name, ieee),
        "object_id": f"{name}",
        "origin": {"name": "Zigbee2MQTT", "sw": "1.40.2"},
        "payload_off": "OFF",
        "payload_on": "ON",
        "state_topic": f"zigbee2mqtt/{name}",
        "unique_id": f"{ieee}_switch_zigbee2mqtt",
        "value_template": "{{ value_json.state }}",
    }


# --- abbreviations and ~ -------------------------------------------------------------------


def test_abbreviation_table_has_the_common_keys() -> None:
    expected = {
        "stat_t": "state_topic",
        "cmd_t": "command_topic",
        "avty_t": "availability_topic",
        "avty": "availability",
        "pl_avail": "payload_available",
        "pl_not_avail": "payload_not_available",
        "uniq_id": "unique_id",
        "obj_id": "object_id",
        "dev": "device",
        "ids": "identifiers",
        "mf": "manufacturer",
        "mdl": "model",
        "name": "name",
        "sw": "sw_version",
        "cns": "connections",
        "unit_of_meas": "unit_of_measurement",
        "val_tpl": "value_template",
        "json_attr_t": "json_attributes_topic",
        "dev_cla": "device_class",
        "stat_cla": "state_class",
        "pl_on": "payload_on",
        "pl_off": "payload_off",
        "stat_on": "state_on",
        "stat_off": "state_off",
        "bri_cmd_t": "brightness_command_topic",
        "bri_stat_t": "brightness_state_topic",
        "cmps": "components",
        "p": "platform",
        "o": "origin",
        "t": "topic",
        "stat_val_tpl": "state_value_template",
    }
    for short, full in expected.items():
        assert HA_ABBREVIATIONS[short] == full
    for table in (HA_DEVICE_ABBREVIATIONS, HA_ORIGIN_ABBREVIATIONS):  # one meaning each
        assert all(HA_ENTITY_ABBREVIATIONS.get(k, v) == v for k, v in table.items())


def test_expand_expands_device_origin_and_availability_and_resolves_base() -> None:
    payload = {
        "~": "home/kitchen/plug",
        "stat_t": "~/state",
        "cmd_t": "~/set",
        "json_attr_t": "attrs/~",
        "name": "~/not a topic",
        "pl_on": "~",
        "avty": [{"t": "~/online", "pl_avail": "yes"}, {"topic": "bridge/state"}],
        "dev": {"ids": ["abc"], "mf": "Acme", "mdl": "P1", "sw": "1.0", "cns": [["mac", "x"]]},
        "o": {"name": "bla2mqtt", "sw": "2.1", "url": "https://example.invalid"},
    }
    original = copy.deepcopy(payload)
    result = expand(payload)
    assert payload == original  # not changed
    assert "~" not in result
    assert result["state_topic"] == "home/kitchen/plug/state"
    assert result["command_topic"] == "home/kitchen/plug/set"
    assert result["json_attributes_topic"] == "attrs/home/kitchen/plug"
    assert result["name"] == "~/not a topic"  # only keys ending in "topic"
    assert result["payload_on"] == "~"
    assert result["availability"] == [
        {"topic": "home/kitchen/plug/online", "payload_available": "yes"},
        {"topic": "bridge/state"},
    ]
    assert result["device"] == {
        "identifiers": ["abc"],
        "manufacturer": "Acme",
        "model": "P1",
        "sw_version": "1.0",
        "connections": [["mac", "x"]],
    }
    assert result["origin"] == {
        "name": "bla2mqtt",
        "sw_version": "2.1",
        "support_url": "https://example.invalid",
    }


def test_expand_device_based_discovery_components() -> None:
    payload = {
        "~": "sensors/bedroom",
        "dev": {"ids": "ea334450945afc", "name": "Kitchen"},
        "o": {"name": "bla2mqtt"},
        "cmps": {
            "t1": {"p": "sensor", "dev_cla": "temperature", "stat_t": "~/state"},
            "h1": {"p": "sensor", "~": "other", "stat_t": "~/state", "avty_t": "~/lwt"},
            "junk": 5,
        },
        "stat_t": "~/shared",
    }
    result = expand(payload)
    assert result["state_topic"] == "sensors/bedroom/shared"
    components = result["components"]
    assert components["t1"] == {
        "platform": "sensor",
        "device_class": "temperature",
        "state_topic": "sensors/bedroom/state",
    }
    assert components["h1"]["state_topic"] == "other/state"
    assert components["h1"]["availability_topic"] == "other/lwt"
    assert components["junk"] == 5


def test_expand_abbreviated_key_wins_and_odd_values_stay() -> None:
    result = expand({"stat_t": "a", "state_topic": "b", "dev": "not an object", "avty": 7})
    assert result == {"state_topic": "a", "device": "not an object", "availability": 7}


@pytest.mark.parametrize("payload", [[], "x", None, 3])
def test_expand_refuses_what_is_no_object(payload: Any) -> None:
    with pytest.raises(DiscoveryError):
        expand(payload)


# --- value templates -----------------------------------------------------------------------

ACCEPTED = [
    ("{{ value }}", "@", False, {"x": 1}, {"x": 1}),
    ("{{value}}", "@", False, "23.5", "23.5"),
    ("{{ value_json }}", "@", True, 5, 5),
    ("{{ value_json.temperature }}", "temperature", True, {"temperature": 21.5}, 21.5),
    ("{{value_json.temperature}}", "temperature", True, {"temperature": 21.5}, 21.5),
    ("{{ value_json.ENERGY.Power }}", "ENERGY.Power", True, {"ENERGY": {"Power": 7}}, 7),
    ("{{ value_json['x'] }}", "x", True, {"x": 2}, 2),
    ('{{ value_json["PM2.5"] }}', '"PM2.5"', True, {"PM2.5": 3}, 3),
    (
        "{{ value_json['DS18B20-1'].Temperature }}",
        '"DS18B20-1".Temperature',
        True,
        {"DS18B20-1": {"Temperature": 4}},
        4,
    ),
    ("{{ value_json.Current[0] }}", "Current[0]", True, {"Current": [1.3, 2.1]}, 1.3),
    ("{{ value_json.a[-1] }}", "a[-1]", True, {"a": [1, 2]}, 2),
    (
        "{{ value_json['switch:0'].apower }}",
        '"switch:0".apower',
        True,
        {"switch:0": {"apower": 9}},
        9,
    ),
    ("{{ value_json.x | float }}", "x", True, {"x": "1.5"}, "1.5"),
    ("{{ value_json.x|float(0) }}", "x", True, {"x": 1}, 1),
    ("{{ value_json.x | round(1) }}", "x", True, {"x": 1.25}, 1.25),
    ("{{ value_json.x | float | round(2) }}", "x", True, {"x": 1}, 1),
    ("{{ value_json.x | is_defined }}", "x", True, {"x": 1}, 1),
    ("{{- value_json.x -}}", "x", True, {"x": 1}, 1),
    ("  {{ value_json.x }}\n", "x", True, {"x": 1}, 1),
    ("{{ value | float }}", "@", False, "1", "1"),
    ('{{ value_json["a \'b"] }}', '"a \'b"', True, {"a 'b": 6}, 6),
]


@pytest.mark.parametrize(("text", "path", "is_json", "document", "value"), ACCEPTED)
def test_value_templates_understood(
    text: str, path: str, is_json: bool, document: Any, value: Any
) -> None:
    parsed = parse_template(text)
    assert parsed is not None
    assert (parsed.path, parsed.json) == (path, is_json)
    assert path_of(parsed.path).search(document) == value
    assert parse_value_template(text) == path


REJECTED = [
    "{{ value_json.x | int }}",
    "{{ value_json.x * 10 }}",
    "{{ value_json.x / 1000 | round(1) }}",
    "{{ value_json.x if value_json.x is defined else 0 }}",
    "{{ (value_json.x | float) }}",
    "{{ value_json.x | default(0) }}",
    "{{ value_json.x | round(1, 'floor') }}",
    "{{ value_json.x }} W",
    "{{ value_json.a }}{{ value_json.b }}",
    "{% if value == 'on' %}1{% endif %}",
    "{{ states('sensor.x') }}",
    "{{ value_jsonx }}",
    "{{ valuex }}",
    "{{ value_json.0 }}",
    "{{ value_json['a\\'b'] }}",
    "{{ value_json[x] }}",
    "{{ value_json. }}",
    "{{ }}",
    "value_json.x",
    "",
    "{{ value_json.x ",
]


@pytest.mark.parametrize("text", REJECTED)
def test_value_templates_not_understood(text: str) -> None:
    assert parse_template(text) is None
    assert parse_value_template(text) is None


@pytest.mark.parametrize("text", [None, 5, ["{{ value }}"], {"a": 1}, "{{ value }}" + " " * 2000])
def test_value_templates_of_other_types(text: Any) -> None:
    assert parse_value_template(text) is None


def test_reading_names() -> None:
    assert reading_name(["ENERGY", "Power"]) == "energy_power"
    assert reading_name(["DS18B20-1", "Temperature"]) == "ds18b20_1_temperature"
    assert reading_name(["SDS0X1", "PM2.5"]) == "sds0x1_pm2_5"
    assert reading_name(["ENERGY", "TotalTariff", 1]) == "energy_totaltariff_1"
    assert reading_name(["°"]) == "value"


# --- Tasmota -------------------------------------------------------------------------------


def test_tasmota_default_config_with_custom_fulltopic() -> None:
    device = generated(tasmota_rules("00000049A3BC", TASMOTA_DEFAULT_CONFIG, TASMOTA_LIST_SENSORS))
    assert device.key == "tasmota/discovery/00000049A3BC/config"
    assert (device.uri, device.name, device.family) == (
        "tasmota:tasmota_49A3BC",
        "Tasmota",
        "tasmota",
    )
    assert device.problems == []
    assert device.commands == []  # rl: no relays
    topics = sorted(rule.pattern.text for rule in device.rules)
    assert topics == ["tasmota_49A3BC/tele/LWT", "tasmota_49A3BC/tele/SENSOR"]
    for rule in device.rules:
        assert rule.id.startswith("discovered:tasmota/discovery/00000049A3BC/config:")
        assert rule.priority == DISCOVERED_PRIORITY
    sensor = next(r for r in device.rules if r.pattern.text.endswith("SENSOR"))
    assert sensor.where == "tasmota/discovery/00000049A3BC/sensors"
    # Named by Tasmota's convention, as mappings/tasmota.yaml names them.
    assert sensor.convention == "tasmota" and sensor.readings == ()
    assert sensor.primary == "power"

    mappings = alone(device)
    event = mapped(
        mappings.map(
            "tasmota_49A3BC/tele/SENSOR", json.dumps(TASMOTA_LIST_SENSORS["sn"]).encode(), NOW
        )
    )
    assert event.device.uri == "tasmota:tasmota_49A3BC"
    assert event.device.name == "Tasmota"
    tags = dict(event.device.tags)
    assert tags["model"] == "Sonoff Basic"
    assert tags["mac"] == "00000049A3BC"
    assert tags["sw"] == "8.4.0.2"
    assert event.readings["voltage"] == 234.31
    assert event.readings["reactive_power"] == -7.21
    assert event.readings["energy_tariff_2"] == 0.017
    assert event.readings["phase_angle"] == 290.45
    assert "time" not in event.readings and "energy_total_start_time" not in event.readings
    assert event.units["power"] == "W"
    assert event.units["voltage"] == "V"
    assert event.units["energy"] == "kWh"
    assert event.units["energy_import_reactive"] == "kvarh"
    assert json.loads(event.metadata)["primary"] == "power"
    assert event.missing == ()
    assert availability(mappings.map("tasmota_49A3BC/tele/LWT", b"Online", NOW)).online is True
    assert availability(mappings.map("tasmota_49A3BC/tele/LWT", b"Offline", NOW)).online is False


def test_tasmota_plug_default_layout_telemetry_availability_and_commands() -> None:
    device = generated(tasmota_rules("A4CF12B3C4D5", PLUG_CONFIG, PLUG_SENSORS))
    assert device.problems == []
    mappings = alone(device)
    event = mapped(mappings.map("tele/pow1/SENSOR", POW_TELEMETRY, NOW))
    assert event.device.uri == "tasmota:pow1"
    assert event.device.name == "Kitchen plug"
    assert event.readings["power"] == 2635
    assert event.readings["current"] == 11.661
    assert event.readings["power_factor"] == 0.99
    assert json.loads(event.metadata)["primary"] == "power"
    assert event.service == "sepl_get"
    state = mapped(mappings.map("tele/pow1/STATE", b'{"POWER":"ON","Wifi":{"RSSI":30}}', NOW))
    assert state.readings == {"state": 1.0, "rssi": 30.0}
    assert state.service == "state"
    assert json.loads(state.metadata)["primary"] is None  # the device's stays its power
    off = mapped(mappings.map("tele/pow1/STATE", b'{"POWER1":"OFF"}', NOW))
    assert off.readings == {"state": 0.0}
    assert availability(mappings.map("tele/pow1/LWT", b"Offline", NOW)).online is False
    assert mappings.map("tele/pow2/SENSOR", POW_TELEMETRY, NOW) is None  # another device

    for service, payload in (("on", "ON"), ("off", "OFF"), ("toggle", "TOGGLE")):
        plan = mappings.plan_command("tasmota:pow1", service, "")
        assert plan is not None
        assert (plan.topic, plan.payload, plan.reply_topic) == (
            "cmnd/pow1/POWER1",
            payload,
            "stat/pow1/RESULT",
        )
        assert mappings.reply_data(plan, b'{"POWER":"ON"}') == '{"POWER":"ON"}'
        assert mappings.reply_data(plan, b'{"Dimmer":5}') is None
    assert mappings.plan_command("tasmota:pow2", "on", "") is None
    assert mappings.produces("tasmota:pow1")


def test_tasmota_state_texts_and_several_relays() -> None:
    config = {**PLUG_CONFIG, "state": ["AUS", "AN", "UM", "HALTEN"], "rl": [1, 2, 0, 1]}
    device = generated(tasmota_rules("A4CF12B3C4D5", config, None))
    assert not any(r.pattern.text.endswith("SENSOR") for r in device.rules)  # no sensors yet
    services = sorted(c.service for c in device.commands)
    assert services == [
        "off",
        "off_2",
        "off_4",
        "on",
        "on_2",
        "on_4",
        "toggle",
        "toggle_2",
        "toggle_4",
    ]
    mappings = alone(device)
    plan = mappings.plan_command("tasmota:pow1", "on_4", "")
    assert plan is not None and (plan.topic, plan.payload) == ("cmnd/pow1/POWER4", "AN")
    reply = mappings.plan_command("tasmota:pow1", "off", "")
    assert reply is not None and reply.payload == "AUS"
    assert mappings.reply_data(reply, b'{"POWER4":"AN"}') is None  # not relay 1's answer
    assert mappings.reply_data(reply, b'{"POWER1":"AUS"}') is not None
    state = mapped(
        mappings.map("tele/pow1/STATE", b'{"POWER1":"AN","POWER2":"AUS","POWER4":"X"}', NOW)
    )
    assert state.readings == {"state": 1.0, "state_2": 0.0}  # by the device's state texts
    assert state.missing == ("state_4",)


def test_tasmota_topics_as_the_firmware_builds_them() -> None:
    config = {**TASMOTA_DEFAULT_CONFIG, "ft": "tasmota/%hostname%/%id%/%prefix%/"}
    assert tasmota_topic(config, 2) == "tasmota/tasmota_49A3BC-0956/00000049A3BC/tele/"
    config = {**TASMOTA_DEFAULT_CONFIG, "ft": "home/%topic%"}  # no %prefix%, no trailing /
    assert tasmota_topic(config, 0) == "home/tasmota_49A3BC/cmnd/"
    assert tasmota_topic(config, 1) == "home/tasmota_49A3BC/"
    config = {**TASMOTA_DEFAULT_CONFIG, "ft": "%prefix%//%topic%/", "tp": ["c", "s", "t"]}
    assert tasmota_topic(config, 2) == "t/tasmota_49A3BC/"
    device = generated(
        tasmota_rules("00000049A3BC", {**TASMOTA_DEFAULT_CONFIG, "ft": "home/%topic%"}, None)
    )
    assert sorted(r.pattern.text for r in device.rules) == ["home/tasmota_49A3BC/LWT"]


def test_tasmota_primary_and_quoted_paths() -> None:
    sensors = {
        "sn": {
            "Time": "2024-01-01T00:00:00",
            "Epoch": 1704067200,
            "SDS0X1": {"PM2.5": 3.1, "PM10": 7.2},
            "DS18B20-1": {"Id": "00000566CC39", "Temperature": 20.6},
            "DS18B20-2": {"Id": "0000056712AB", "Temperature": 21.0},
            "TempUnit": "F",
        },
    }
    device = generated(tasmota_rules("00000049A3BC", {**PLUG_CONFIG, "rl": []}, sensors))
    sensor = device.rules[0]
    assert sensor.primary == "temperature_1"
    event = mapped(alone(device).map("tele/pow1/SENSOR", json.dumps(sensors["sn"]).encode(), NOW))
    assert event.readings == {
        "pm25": 3.1,
        "pm10": 7.2,
        "temperature_1": 20.6,
        "temperature_2": 21.0,
    }
    assert event.units == {
        "pm25": "µg/m³",
        "pm10": "µg/m³",
        "temperature_1": "°F",
        "temperature_2": "°F",
    }
    only = generated(tasmota_rules("00000049A3BC", PLUG_CONFIG, {"sn": {"ANALOG": {"A0": 512}}}))
    assert only.rules[0].primary == "analog"


def test_tasmota_removed_and_name_fallbacks() -> None:
    assert tasmota_rules("00000049A3BC", None, TASMOTA_LIST_SENSORS) is None
    assert tasmota_rules("00000049A3BC", {}, None) is None
    config = {k: v for k, v in TASMOTA_DEFAULT_CONFIG.items() if k != "dn"}
    assert generated(tasmota_rules("00000049A3BC", config, None)).name == "Test"
    config = {k: v for k, v in config.items() if k != "fn"}
    assert generated(tasmota_rules("00000049A3BC", config, None)).name == "tasmota_49A3BC"


@pytest.mark.parametrize("mac", ["", "00:00:49", "abc", "A/B", "A+B", "A#", "A\x00", 5, None])
def test_tasmota_bad_mac_is_a_discovery_error(mac: Any) -> None:
    with pytest.raises(DiscoveryError):
        tasmota_rules(mac, TASMOTA_DEFAULT_CONFIG, None)


HOSTILE_TASMOTA = [
    ("config a list", ["t", "x"], "not a JSON object"),
    ("no topic", {**PLUG_CONFIG, "t": None}, "no topic"),
    ("topic a number", {**PLUG_CONFIG, "t": 5}, "no topic"),
    ("no ft", {k: v for k, v in PLUG_CONFIG.items() if k != "ft"}, "topics"),
    ("ft a list", {**PLUG_CONFIG, "ft": ["%topic%"]}, "topics"),
    ("tp short", {**PLUG_CONFIG, "tp": ["cmnd"]}, "topics"),
    ("tp numbers", {**PLUG_CONFIG, "tp": [1, 2, 3]}, "topics"),
    (
        "hostname missing",
        {**{k: v for k, v in PLUG_CONFIG.items() if k != "hn"}, "ft": "%hostname%/%prefix%/"},
        "topics",
    ),
    ("plus in topic", {**PLUG_CONFIG, "t": "a+b"}, "wildcards"),
    ("hash in topic", {**PLUG_CONFIG, "t": "a/#"}, "wildcards"),
    ("NUL in topic", {**PLUG_CONFIG, "t": "a\x00b"}, "U+0000"),
    ("placeholder in topic", {**PLUG_CONFIG, "t": "{topic}"}, "literally"),
    ("surrogate in topic", {**PLUG_CONFIG, "t": "a\ud800"}, "UTF-8"),
    ("plus in prefix", {**PLUG_CONFIG, "tp": ["cmnd", "stat", "+"]}, "wildcards"),
    ("rl a number", {**PLUG_CONFIG, "rl": 1}, "not a list"),
    ("lwt texts", {**PLUG_CONFIG, "onln": 1, "ofln": None}, "availability"),
    ("placeholder state text", {**PLUG_CONFIG, "state": ["{data}", "ON", "TOGGLE"]}, "placeholder"),
]


@pytest.mark.parametrize(
    ("config", "problem"), [c[1:] for c in HOSTILE_TASMOTA], ids=[c[0] for c in HOSTILE_TASMOTA]
)
def test_tasmota_hostile_configs_are_problems(config: Any, problem: str) -> None:
    device = generated(tasmota_rules("A4CF12B3C4D5", config, PLUG_SENSORS))
    assert any(problem in p for p in device.problems), device.problems
    alone(device)  # whatever was made compiles


@pytest.mark.parametrize(
    "sensors",
    [
        {},
        {"sn": None},
        {"sn": [1, 2]},
        {"sn": "x"},
        {"sn": {"A": {"B": {"C": {"D": {"E": {"F": {"G": {"H": {"I": {"J": 1}}}}}}}}}}},
        {"sn": {f"S{i}": i for i in range(500)}},
        {"sn": {"A": float("nan"), "B": float("inf"), "C": 10**400, "D": True, "E": None}},
        {"sn": {"Time": 5, "Epoch": 1}},
        [],
    ],
)
def test_tasmota_hostile_sensors(sensors: Any) -> None:
    device = generated(tasmota_rules("A4CF12B3C4D5", PLUG_CONFIG, sensors))
    mappings = alone(device)
    sensor = [r for r in device.rules if r.pattern.text.endswith("SENSOR")]
    for rule in sensor:
        assert rule.convention == "tasmota"
        if isinstance(sensors, dict) and isinstance(sensors.get("sn"), dict):
            event = mapped(
                mappings.map("tele/pow1/SENSOR", json.dumps(sensors["sn"]).encode(), NOW)
            )
            assert 0 < len(event.readings) <= 500
            assert not {"a", "b", "c", "d", "e", "time", "epoch"} & set(event.readings)
    if not sensor:
        assert device.problems
    mappings.map("tele/pow1/SENSOR", b"{}", NOW)


# --- Home Assistant: ESPHome -------------------------------------------------------------


def test_esphome_sensor_in_discovery_form() -> None:
    device = generated(ha_rules(ESPHOME_SENSOR_TOPIC, ESPHOME_SENSOR))
    assert device.problems == []
    # One device per node, named and tagged as esphome.yaml names it; the entity is a
    # reading named by its object id, with the unit the discovery gives.
    assert (device.uri, device.family) == ("esphome:livingroom", "esphome")
    assert device.device_uris == ["esphome:livingroom"]
    mappings = alone(device)
    event = mapped(mappings.map("livingroom/sensor/living_room_temperature/state", b"23.5", NOW))
    assert event.device.uri == "esphome:livingroom"
    assert event.device.name == "livingroom"
    assert event.device.device_type == "iot#esphome-node"
    assert dict(event.device.tags) == {"family": "esphome"}
    assert event.readings == {"living_room_temperature": 23.5}
    assert event.units == {"living_room_temperature": "°C"}
    assert json.loads(event.metadata)["primary"] == "living_room_temperature"
    assert event.rule.priority == -1  # wins over esphome.yaml, which knows no units
    status = availability(mappings.map("livingroom/status", b"offline", NOW))
    assert (status.device.uri, status.online) == ("esphome:livingroom", False)


def test_esphome_switch_states_and_commands() -> None:
    device = generated(ha_rules(ESPHOME_SWITCH_TOPIC, ESPHOME_SWITCH))
    assert device.problems == []
    mappings = alone(device)
    on = mapped(mappings.map("livingroom/switch/my_relay/state", b"ON", NOW))
    assert (on.device.uri, on.service, on.readings) == (
        "esphome:livingroom",
        "state",
        {"state_my_relay": 1.0},
    )
    assert mapped(mappings.map("livingroom/switch/my_relay/state", b"OFF", NOW)).readings == {
        "state_my_relay": 0.0
    }
    for service, payload in (("on", "ON"), ("off", "OFF"), ("toggle", "TOGGLE")):
        plan = mappings.plan_command("esphome:livingroom", service + "_my_relay", "")
        assert plan is not None
        assert (plan.topic, plan.payload, plan.reply_topic) == (
            "livingroom/switch/my_relay/command",
            payload,
            "livingroom/switch/my_relay/state",
        )
        assert plan.rule.qos == 1
        assert mappings.reply_data(plan, b"ON") == "ON"


def test_esphome_entities_of_one_node_share_the_node_availability() -> None:
    merged, notes = merge(
        EMPTY,
        [
            ha_rules(ESPHOME_SENSOR_TOPIC, ESPHOME_SENSOR),
            ha_rules(ESPHOME_SWITCH_TOPIC, ESPHOME_SWITCH),
        ],
    )
    assert notes == []
    status = [r for r in merged.rules if r.pattern.text == "livingroom/status"]
    assert len(status) == 1
    assert merged.conflicts() == []


# --- Home Assistant: Zigbee2MQTT ---------------------------------------------------------


def test_zigbee2mqtt_sensor_entities_become_one_device() -> None:
    devices = [
        ha_rules(Z2M_SENSOR_TOPIC, Z2M_SENSOR),
        ha_rules(Z2M_HUMIDITY_TOPIC, Z2M_HUMIDITY),
        ha_rules(Z2M_BATTERY_TOPIC, Z2M_BATTERY),
    ]
    for device in devices:
        assert device is not None and device.problems == []
        assert (device.uri, device.family) == ("z2m:living_room", "zigbee2mqtt")
    merged, notes = merge(EMPTY, devices)
    assert notes == []
    assert merged.conflicts() == []
    event = mapped(merged.map("zigbee2mqtt/living_room", Z2M_TELEMETRY, NOW))
    assert event.device.uri == "z2m:living_room"
    assert event.device.name == "living_room"
    assert event.device.device_type == "iot#zigbee2mqtt-device"
    assert event.readings == {"battery": 100.0, "humidity": 34.6, "temperature": 29.1}
    assert json.loads(event.metadata)["primary"] == "temperature"
    tags = dict(event.device.tags)
    assert tags["family"] == "zigbee2mqtt"
    assert tags["manufacturer"] == "Aqara"
    assert event.units == {"temperature": "°C", "humidity": "%", "battery": "%"}
    assert (event.rule.where.count(";"), event.rule.priority) == (2, DISCOVERED_PRIORITY)
    # availability as Zigbee2MQTT 2.x sends it
    change = availability(
        merged.map("zigbee2mqtt/living_room/availability", b'{"state":"offline"}', NOW)
    )
    assert (change.device.uri, change.online) == ("z2m:living_room", False)
    bridge = availability(merged.map("zigbee2mqtt/bridge/state", b'{"state":"online"}', NOW))
    assert bridge.device.uri == "z2m:living_room"  # the only Zigbee2MQTT device here


def test_zigbee2mqtt_bridge_availability_shared_by_devices_follows_none() -> None:
    devices = [
        ha_rules(Z2M_SENSOR_TOPIC, Z2M_SENSOR),
        ha_rules(
            "homeassistant/switch/0x000b57fffe111111/switch/config",
            z2m_switch("plug", "0x000b57fffe111111"),
        ),
    ]
    merged, notes = merge(EMPTY, devices)
    assert merged.map("zigbee2mqtt/bridge/state", b'{"state":"offline"}', NOW) is None
    assert any(
        "'zigbee2mqtt/bridge/state' is announced for 2 discovered devices" in n for n in notes
    )
    assert availability(
        merged.map("zigbee2mqtt/plug/availability", b'{"state":"online"}', NOW)
    ).online


def test_zigbee2mqtt_switch_commands_and_state() -> None:
    device = generated(
        ha_rules(
            "homeassistant/switch/0x000b57fffe111111/switch/config",
            z2m_switch("kitchen/plug", "0x000b57fffe111111"),
        )
    )
    assert device.uri == "z2m:kitchen/plug"  # friendly names may hold '/'
    mappings = alone(device)
    event = mapped(mappings.map("zigbee2mqtt/kitchen/plug", b'{"state":"ON","power":12}', NOW))
    assert event.readings == {"state": 1.0}
    plan = mappings.plan_command("z2m:kitchen/plug", "on", "")
    assert plan is not None
    assert (plan.topic, plan.payload, plan.reply_topic) == (
        "zigbee2mqtt/kitchen/plug/set",
        "ON",
        "zigbee2mqtt/kitchen/plug",
    )
    assert mappings.reply_data(plan, b'{"state":"ON","power":3}') == "ON"
    assert mappings.reply_data(plan, b'{"power":3}') is None


def test_zigbee2mqtt_binary_sensor_with_boolean_payloads() -> None:
    config = {
        **Z2M_SENSOR,
        "device_class": "door",
        "object_id": "living_room_contact",
        "payload_off": True,  # Zigbee2MQTT: contact true means closed
        "payload_on": False,
        "value_template": "{{ value_json.contact }}",
    }
    config.pop("unit_of_measurement")
    device = generated(
        ha_rules("homeassistant/binary_sensor/0x00158d00022cb428/contact/config", config)
    )
    assert device.problems == []
    mappings = alone(device)
    assert mapped(mappings.map("zigbee2mqtt/living_room", b'{"contact":false}', NOW)).readings == {
        "contact": 1.0
    }
    assert mapped(mappings.map("zigbee2mqtt/living_room", b'{"contact":true}', NOW)).readings == {
        "contact": 0.0
    }
    assert mapped(mappings.map("zigbee2mqtt/living_room", b'{"contact":"x"}', NOW)).missing == (
        "contact",
    )


# --- Home Assistant: other sources -------------------------------------------------------


def test_device_based_discovery_with_components() -> None:
    topic = "homeassistant/device/bedroom01/config"
    payload = {
        "dev": {"ids": "ea334450945afc", "name": "Bedroom", "mf": "Bla electronics", "mdl": "xya"},
        "o": {"name": "bla2mqtt", "sw": "2.1"},
        "cmps": {
            "temp01ae_t": {
                "p": "sensor",
                "dev_cla": "temperature",
                "unit_of_meas": "°C",
                "val_tpl": "{{ value_json.temperature }}",
                "uniq_id": "temp01ae_t",
            },
            "temp01ae_h": {
                "p": "sensor",
                "dev_cla": "humidity",
                "unit_of_meas": "%",
                "val_tpl": "{{ value_json.humidity}}",
                "uniq_id": "temp01ae_h",
            },
            "motion": {
                "p": "binary_sensor",
                "stat_t": "sensorBedroom/motion",
                "pl_on": "1",
                "pl_off": "0",
            },
            "cover": {"p": "cover", "cmd_t": "x/set"},
            "bad": "not an object",
        },
        "stat_t": "sensorBedroom/state",
        "avty_t": "sensorBedroom/lwt",
        "pl_avail": "up",
        "pl_not_avail": "down",
        "qos": 2,
    }
    device = generated(ha_rules(topic, payload))
    assert (device.uri, device.family, device.name) == (
        "ha:device/ea334450945afc",
        "homeassistant",
        "Bedroom",
    )
    assert any("component 'cover' is not supported" in p for p in device.problems)
    assert any("'bad' is not an object" in p for p in device.problems)
    merged, notes = merge(EMPTY, [device])
    assert notes == []
    event = mapped(merged.map("sensorBedroom/state", b'{"temperature":19.5,"humidity":40}', NOW))
    assert event.device.uri == "ha:device/ea334450945afc"
    assert event.readings == {"temperature": 19.5, "humidity": 40.0}
    assert json.loads(event.metadata)["primary"] == "temperature"
    tags = dict(event.device.tags)
    assert tags["origin"] == "bla2mqtt" and tags["model"] == "xya"
    assert event.units["temperature"] == "°C"
    motion = mapped(merged.map("sensorBedroom/motion", b"1", NOW))
    assert (motion.device.uri, motion.readings) == ("ha:device/ea334450945afc", {"motion": 1.0})
    assert tags == dict(motion.device.tags)  # one device, one set of tags
    assert availability(merged.map("sensorBedroom/lwt", b"down", NOW)).online is False
    assert len([r for r in merged.rules if r.pattern.text == "sensorBedroom/lwt"]) == 1


def test_generic_switch_light_number() -> None:
    switch = {
        "~": "homeassistant/switch/irrigation",
        "name": "garden",
        "cmd_t": "~/set",
        "stat_t": "~/state",
        "pl_on": "1",
        "pl_off": "0",
        "stat_on": "on",
        "stat_off": "off",
        "uniq_id": "garden-irrigation-1",
    }
    device = generated(ha_rules("homeassistant/switch/irrigation/config", switch))
    assert (device.uri, device.name) == ("ha:entity/garden-irrigation-1", "garden")
    mappings = alone(device)
    assert mapped(mappings.map("homeassistant/switch/irrigation/state", b"on", NOW)).readings == {
        "state_irrigation": 1.0  # a channel, as its commands (on_irrigation) name it
    }
    plan = mappings.plan_command("ha:entity/garden-irrigation-1", "on_irrigation", "")
    assert plan is not None and (plan.topic, plan.payload) == (
        "homeassistant/switch/irrigation/set",
        "1",
    )

    light = {
        "schema": "json",
        "name": "Lamp",
        "cmd_t": "zb/lamp/set",
        "stat_t": "zb/lamp",
        "dev": {"ids": ["lamp-1"], "name": "Lamp"},
    }
    lamp = generated(ha_rules("homeassistant/light/lamp/light/config", light))
    assert lamp.problems == []
    mappings = alone(lamp)
    plan = mappings.plan_command("ha:device/lamp-1", "on", "")
    assert plan is not None
    assert (plan.topic, json.loads(plan.payload)) == ("zb/lamp/set", {"state": "ON"})
    assert mappings.reply_data(plan, b'{"state":"ON","brightness":3}') == "ON"
    assert mapped(mappings.map("zb/lamp", b'{"state":"OFF"}', NOW)).readings == {"state": 0.0}

    basic = {
        "cmd_t": "l2/set",
        "stat_t": "l2/state",
        "stat_val_tpl": "{{ value_json.POWER }}",
        "dev": {"ids": ["lamp-2"]},
    }
    lamp2 = alone(ha_rules("homeassistant/light/lamp2/config", basic))
    assert mapped(lamp2.map("l2/state", b'{"POWER":"ON"}', NOW)).readings == {"power": 1.0}
    plan = lamp2.plan_command("ha:device/lamp-2", "off_lamp2", "")
    assert plan is not None and plan.payload == "OFF"

    template = generated(
        ha_rules("homeassistant/light/lamp3/config", {**basic, "schema": "template"})
    )
    assert any("schema 'template' is not supported" in p for p in template.problems)

    number = {
        "cmd_t": "heater/target/set",
        "stat_t": "heater/target",
        "unit_of_meas": "°C",
        "dev": {"ids": ["heater-1"], "name": "Heater"},
    }
    heater = alone(ha_rules("homeassistant/number/heater/target/config", number))
    assert mapped(heater.map("heater/target", b"21.5", NOW)).readings == {"target": 21.5}
    plan = heater.plan_command("ha:device/heater-1", "set_target", "22")
    assert plan is not None and (plan.topic, plan.payload) == ("heater/target/set", "22")


def test_templates_not_understood_are_reported_not_guessed() -> None:
    config = {
        **Z2M_SENSOR,
        "value_template": "{{ (value_json.power | float) * 1000 }}",
        "availability": [
            {
                "topic": "zigbee2mqtt/living_room/availability",
                "value_template": "{{ value_json.state | upper }}",
            }
        ],
    }
    device = generated(ha_rules(Z2M_SENSOR_TOPIC, config))
    assert device.rules == []
    assert any(
        p.startswith("sensor 'temperature': not understood: value_template '{{ (value_json.power")
        for p in device.problems
    )
    assert any("not understood: availability template" in p for p in device.problems)
    switch = {**z2m_switch("plug", "0x1"), "command_template": '{"state": "{{ value }}"}'}
    plug = generated(ha_rules("homeassistant/switch/0x1/switch/config", switch))
    assert plug.commands == []
    assert any("not understood: command_template" in p for p in plug.problems)


def test_non_numeric_sensors_and_missing_state_topic() -> None:
    config = {
        **Z2M_SENSOR,
        "device_class": "timestamp",
        "value_template": "{{ value_json.last_seen }}",
    }
    device = generated(ha_rules("homeassistant/sensor/0x00158d00022cb428/last_seen/config", config))
    assert any("'timestamp' is not a number" in p for p in device.problems)
    assert all(r.availability is not None for r in device.rules)
    config = {k: v for k, v in Z2M_SENSOR.items() if k != "state_topic"}
    device = generated(ha_rules(Z2M_SENSOR_TOPIC, config))
    assert any("no state_topic" in p for p in device.problems)


def test_removed_configs() -> None:
    assert ha_rules(Z2M_SENSOR_TOPIC, None) is None
    assert ha_rules(Z2M_SENSOR_TOPIC, {}) is None
    assert ha_rules("homeassistant/device/x/config", None) is None
    kept = ha_rules(Z2M_HUMIDITY_TOPIC, Z2M_HUMIDITY)
    merged = alone(ha_rules(Z2M_SENSOR_TOPIC, Z2M_SENSOR), kept)
    assert merged.produces("z2m:living_room")
    after = alone(ha_rules(Z2M_SENSOR_TOPIC, None), kept)  # one entity removed
    assert after.produces("z2m:living_room")
    assert mapped(after.map("zigbee2mqtt/living_room", Z2M_TELEMETRY, NOW)).readings == {
        "humidity": 34.6
    }
    assert not alone(None).produces("z2m:living_room")  # the device's last config removed


@pytest.mark.parametrize(
    "topic",
    [
        "homeassistant/sensor/config",
        "homeassistant/sensor/a/b/c/config",
        "homeassistant/sensor/x/state",
        "homeassistant/sensor/a b/config",
        "homeassistant/sensor/+/config",
        "homeassistant/sensor/#/config",
        "homeassistant/sensor/a\x00/config",
        "homeassistant/sen-sor/a/config",
        "tasmota/discovery/ABC/config",
        "",
    ],
)
def test_not_a_discovery_topic_is_a_discovery_error(topic: str) -> None:
    with pytest.raises(DiscoveryError):
        ha_rules(topic, Z2M_SENSOR)


def test_discovery_topic_parsing_and_other_prefix() -> None:
    assert parse_ha_topic("homeassistant/sensor/node_1/obj-2/config") == (
        "sensor",
        "node_1",
        "obj-2",
    )
    assert parse_ha_topic("homeassistant/device/dev1/config") == ("device", None, "dev1")
    device = ha_rules("ha/disc/switch/x/config", z2m_switch("plug", "0x1"), prefix="ha/disc")
    assert generated(device).key == "ha/disc/switch/x/config"


HOSTILE_HA: list[tuple[str, Any, str]] = [
    ("payload a list", [1, 2], "not a JSON object"),
    ("state topic with +", {**Z2M_SENSOR, "state_topic": "zigbee2mqtt/+"}, "wildcards"),
    ("state topic with #", {**Z2M_SENSOR, "state_topic": "zigbee2mqtt/#"}, "wildcards"),
    ("state topic with NUL", {**Z2M_SENSOR, "state_topic": "zigbee2mqtt/a\x00"}, "U+0000"),
    ("state topic a placeholder", {**Z2M_SENSOR, "state_topic": "zigbee2mqtt/{name}"}, "literally"),
    ("state topic empty", {**Z2M_SENSOR, "state_topic": ""}, "not a topic"),
    ("state topic a number", {**Z2M_SENSOR, "state_topic": 5}, "not a topic"),
    ("state topic surrogate", {**Z2M_SENSOR, "state_topic": "a/\udcff"}, "UTF-8"),
    ("availability not a list", {**Z2M_SENSOR, "availability": "x"}, "not a list"),
    ("availability entry", {**Z2M_SENSOR, "availability": [5]}, "not an object"),
    ("availability topic +", {**Z2M_SENSOR, "availability": [{"topic": "+"}]}, "wildcards"),
    (
        "availability payloads",
        {**Z2M_SENSOR, "availability": [{"topic": "a", "payload_available": []}]},
        "not values",
    ),
    ("template a number", {**Z2M_SENSOR, "value_template": 5}, "not understood"),
    ("payload_on a list", {**z2m_switch("p", "0x1"), "payload_on": [1]}, "not a value"),
    (
        "payload_on a placeholder",
        {**z2m_switch("p", "0x1"), "state_on": "ON", "payload_on": "{data}"},
        "placeholder",
    ),
    ("command topic with #", {**z2m_switch("p", "0x1"), "command_topic": "a/#"}, "wildcards"),
    (
        "no command topic",
        {k: v for k, v in z2m_switch("p", "0x1").items() if k != "command_topic"},
        "no command_topic",
    ),
]


@pytest.mark.parametrize(
    ("payload", "problem"), [h[1:] for h in HOSTILE_HA], ids=[h[0] for h in HOSTILE_HA]
)
def test_hostile_home_assistant_payloads_are_problems(payload: Any, problem: str) -> None:
    device = generated(ha_rules("homeassistant/switch/0x1/switch/config", payload))
    assert any(problem in p for p in device.problems), device.problems
    merged = alone(device)
    merged.map("zigbee2mqtt/living_room", b"{}", NOW)


def test_hostile_device_texts_are_made_safe() -> None:
    config = {
        **Z2M_SENSOR,
        "origin": {"name": "other"},
        "device": {
            "identifiers": [{"x": 1}, "id{topic}\x00;x"],
            "name": "Room {name}\n",
            "model": "m:o;d{x}",
            "manufacturer": ["not", "text"],
        },
    }
    device = generated(ha_rules(Z2M_SENSOR_TOPIC, config))
    assert device.uri == "ha:device/id(topic);x"
    event = mapped(alone(device).map("zigbee2mqtt/living_room", Z2M_TELEMETRY, NOW))
    assert event.device.name == "Room (name)"
    tags = dict(event.device.tags)
    assert tags["model"] == "m_o_d(x)"
    assert "manufacturer" not in tags
    event.device.validate()


# --- merging with hand-written rules -----------------------------------------------------


def test_hand_written_rule_for_the_same_topic_wins_and_is_reported() -> None:
    rules, commands = compile_text(
        """
family: mine
rules:
  - id: my-plug
    topic: tele/pow1/SENSOR
    device: {uri: "tasmota:pow1", name: "My plug"}
    readings: {watts: ENERGY.Power}
commands:
  - id: my-on
    service: "on"
    device: "tasmota:{topic}"
    publish: {topic: "cmnd/{topic}/Power", payload: "1"}
""",
        "m.yaml",
    )
    hand = MappingSet(rules, commands)
    merged, notes = merge(hand, [tasmota_rules("A4CF12B3C4D5", PLUG_CONFIG, PLUG_SENSORS)])
    event = mapped(merged.map("tele/pow1/SENSOR", POW_TELEMETRY, NOW))
    assert (event.rule.id, event.readings) == ("my-plug", {"watts": 2635.0})
    assert any(
        n.startswith(
            "rule 'my-plug' (m.yaml:4:5) overrides discovered rule "
            "'discovered:tasmota/discovery/A4CF12B3C4D5/config:1' "
            "(tasmota/discovery/A4CF12B3C4D5/sensors) on topic 'tele/pow1/SENSOR'"
        )
        for n in notes
    ), notes
    assert any(
        n.startswith("command 'my-on' (m.yaml:") and "'on' of 'tasmota:pow1'" in n for n in notes
    )
    plan = merged.plan_command("tasmota:pow1", "on", "")
    assert plan is not None and (plan.rule.id, plan.topic) == ("my-on", "cmnd/pow1/Power")
    plan = merged.plan_command("tasmota:pow1", "off", "")  # not overridden: the generated one
    assert plan is not None and plan.rule.id.startswith("discovered:")
    assert availability(merged.map("tele/pow1/LWT", b"Online", NOW)).rule.id.startswith(
        "discovered:"
    )
    assert len(hand.rules) == 1 and len(merged.rules) > 1  # the hand-written set is not changed


def test_bundled_mappings_override_and_give_the_same_device() -> None:
    bundled = load_directory(REPO / "mappings")
    devices = [
        tasmota_rules("A4CF12B3C4D5", PLUG_CONFIG, PLUG_SENSORS),
        ha_rules(ESPHOME_SENSOR_TOPIC, ESPHOME_SENSOR),
        ha_rules(Z2M_SENSOR_TOPIC, Z2M_SENSOR),
    ]
    irrigation = {"~": "homeassistant/switch/irrigation", "cmd_t": "~/set", "stat_t": "~/state"}
    devices.append(ha_rules("homeassistant/switch/irrigation/config", irrigation))
    merged, notes = merge(bundled, devices)
    assert merged.files == bundled.files
    # reserved.yaml keeps homeassistant/... from the catch-alls, but a state topic there that
    # a discovery config names is taken (HA's own examples put them there)
    irrigation_state = mapped(merged.map("homeassistant/switch/irrigation/state", b"ON", NOW))
    assert irrigation_state.readings == {"state_irrigation": 1.0}
    assert merged.map("homeassistant/switch/other/state", b"ON", NOW) is None
    # the same platform device whichever rule takes the message
    assert mapped(merged.map("tele/pow1/SENSOR", POW_TELEMETRY, NOW)).device.uri == "tasmota:pow1"
    assert mapped(merged.map("tele/pow1/SENSOR", POW_TELEMETRY, NOW)).rule.id == "tasmota-sensor"
    # ESPHome's discovered rule wins over esphome.yaml's catch-all: the same device and
    # reading name, with the unit esphome.yaml cannot know.
    esp = mapped(merged.map("livingroom/sensor/living_room_temperature/state", b"23.5", NOW))
    assert esp.rule.id.startswith("discovered:homeassistant/sensor/livingroom/")
    assert (esp.device.uri, esp.readings, esp.units) == (
        "esphome:livingroom",
        {"living_room_temperature": 23.5},
        {"living_room_temperature": "°C"},
    )
    hand = mapped(bundled.map("livingroom/sensor/living_room_temperature/state", b"23.5", NOW))
    assert (hand.device, set(hand.readings)) == (esp.device, set(esp.readings))
    z2m = mapped(merged.map("zigbee2mqtt/living_room", Z2M_TELEMETRY, NOW))
    assert (z2m.rule.id, z2m.device.uri) == ("z2m-device", "z2m:living_room")
    text = "\n".join(notes)
    for hand_id in (
        "tasmota-sensor",
        "tasmota-lwt",
        "tasmota-state",
        "esphome-status",
        "z2m-device",
        "z2m-availability",
    ):
        assert f"rule '{hand_id}' (" in text, hand_id
    assert "ignore rule 'z2m-ignore-bridge'" in text
    for command in ("tasmota-on", "tasmota-off", "tasmota-toggle"):
        assert f"command '{command}' (" in text


def test_merge_contradictions_are_reported() -> None:
    a = {
        "stat_t": "shared/topic",
        "val_tpl": "{{ value_json.t }}",
        "dev": {"ids": ["dev-a"], "name": "A"},
    }
    b = {**a, "dev": {"ids": ["dev-b"], "name": "B"}}
    merged, notes = merge(
        EMPTY,
        [
            ha_rules("homeassistant/sensor/a/t/config", a),
            ha_rules("homeassistant/sensor/b/t/config", b),
        ],
    )
    assert mapped(merged.map("shared/topic", b'{"t":1}', NOW)).device.uri == "ha:device/dev-a"
    assert any("take the same topic 'shared/topic'" in n for n in notes)
    # one device, two configs reading different things under one name
    c = {**a, "val_tpl": "{{ value_json.x.t }}"}
    d = {**a, "val_tpl": "{{ value_json.x_t }}"}
    merged, notes = merge(
        EMPTY,
        [
            ha_rules("homeassistant/sensor/a/c/config", c),
            ha_rules("homeassistant/sensor/a/d/config", d),
        ],
    )
    event = mapped(merged.map("shared/topic", b'{"x":{"t":1},"x_t":2}', NOW))
    assert event.readings == {"x_t": 1.0, "x_t_2": 2.0}
    assert any("is named 'x_t_2'" in n for n in notes)
    # the same config twice, and an id taken by a hand-written rule
    device = generated(ha_rules("homeassistant/sensor/a/c/config", c))
    merged, notes = merge(EMPTY, [device, device])
    assert any("given twice" in n for n in notes)
    rules, _ = compile_text(
        f"rules:\n  - id: '{device.rules[0].id}'\n    topic: x/y\n    device: d\n", "m.yaml"
    )
    merged, notes = merge(MappingSet(rules, []), [device])
    assert any("has the id of a hand-written rule" in n for n in notes)


def test_device_prefix_and_device_types() -> None:
    device = tasmota_rules(
        "A4CF12B3C4D5", PLUG_CONFIG, PLUG_SENSORS, device_types={"tasmota": "iot#real-1"}
    )
    merged, _ = merge(MappingSet([], [], "site1"), [device])
    event = mapped(merged.map("tele/pow1/SENSOR", POW_TELEMETRY, NOW))
    assert (event.device.uri, event.device.device_type) == ("site1:tasmota:pow1", "iot#real-1")
    assert merged.plan_command("site1:tasmota:pow1", "on", "") is not None
    assert merged.plan_command("tasmota:pow1", "on", "") is None
    assert merged.device_types()["iot#real-1"] == frozenset(
        {"sepl_get", "state", "on", "off", "toggle"}
    )
    other = tasmota_rules("00000049A3BC", TASMOTA_DEFAULT_CONFIG, None, "tas/disc")
    assert generated(other).key == "tas/disc/00000049A3BC/config"


# --- the documents: what the mapping compiler makes rules of ----------------------------


def sample_devices() -> list[GeneratedDevice]:
    lamp = {"schema": "json", "cmd_t": "zb/lamp/set", "stat_t": "zb/lamp", "dev": {"ids": ["l"]}}
    heater = {
        "cmd_t": "heater/set",
        "stat_t": "heater",
        "unit_of_meas": "°C",
        "dev": {"ids": ["h"]},
    }
    return [
        generated(device)
        for device in (
            tasmota_rules("A4CF12B3C4D5", PLUG_CONFIG, PLUG_SENSORS),
            tasmota_rules("00000049A3BC", TASMOTA_DEFAULT_CONFIG, TASMOTA_LIST_SENSORS),
            ha_rules(ESPHOME_SENSOR_TOPIC, ESPHOME_SENSOR),
            ha_rules(ESPHOME_SWITCH_TOPIC, ESPHOME_SWITCH),
            ha_rules(Z2M_SENSOR_TOPIC, Z2M_SENSOR),
            ha_rules("homeassistant/switch/0x1/switch/config", z2m_switch("p", "0x1")),
            ha_rules("homeassistant/light/lamp/config", lamp),
            ha_rules("homeassistant/number/heater/target/config", heater),
        )
    ]


def test_generated_rules_are_what_the_compiler_makes_of_the_documents() -> None:
    for device in sample_devices():
        assert device.problems == []
        rules: list[Rule] = []
        commands: list[CommandRule] = []
        for source, document in device.documents.items():
            assert source in (device.key, device.key.replace("/config", "/sensors"))
            document_rules, document_commands = compile_document(document, source)
            rules += document_rules
            commands += document_commands
            # The same document as a mapping file gives the same rules.
            text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
            file_rules, file_commands = compile_text(text, "discovered.yaml")
            assert document_rules == [replace(r, where=source) for r in file_rules]
            assert document_commands == [replace(c, where=source) for c in file_commands]
        assert (rules, commands) == (device.rules, device.commands)


def test_generated_documents_in_the_mapping_schema() -> None:
    device = generated(tasmota_rules("A4CF12B3C4D5", PLUG_CONFIG, PLUG_SENSORS))
    sensors = device.documents["tasmota/discovery/A4CF12B3C4D5/sensors"]
    assert (sensors["family"], sensors["device_type"]) == ("tasmota", "iot#tasmota-plug")
    [sensor] = sensors["rules"]
    assert sensor["id"] == "discovered:tasmota/discovery/A4CF12B3C4D5/config:1"
    assert (sensor["topic"], sensor["literal"], sensor["priority"]) == (
        "tele/pow1/SENSOR",
        True,
        DISCOVERED_PRIORITY,
    )
    assert (sensor["convention"], sensor["primary"]) == ("tasmota", ["power"])
    config = device.documents["tasmota/discovery/A4CF12B3C4D5/config"]
    on = next(c for c in config["commands"] if c["service"] == "on")
    assert on["publish"] == {"topic": "cmnd/pow1/POWER1", "payload": "ON", "qos": 1}
    assert on["reply"] == {
        "topic": "stat/pow1/RESULT",
        "timeout": "5s",
        "match": [{"path": "POWER || POWER1", "exists": True}],
    }
    lwt = next(r for r in config["rules"] if "availability" in r)
    assert lwt["availability"] == {"online": ["Online"], "offline": ["Offline"]}
    json.dumps(device.documents)  # plain data


def test_discovery_source_reads_the_state_an_earlier_version_wrote(tmp_path: Path) -> None:
    # discovery.json as the adapter has always written it: the payloads as they came.
    config = "tasmota/discovery/A4CF12B3C4D5/config"
    sensors = "tasmota/discovery/A4CF12B3C4D5/sensors"
    stored = {
        config: json.dumps(PLUG_CONFIG),
        sensors: json.dumps(PLUG_SENSORS),
        Z2M_SENSOR_TOPIC: json.dumps(Z2M_SENSOR),
        "elsewhere/x/config": "{}",  # no discovery topic of these prefixes: left out
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(stored, indent=1, sort_keys=True))
    source = DiscoverySource("tasmota/discovery", "homeassistant", tmp_path, settle=0)
    assert source.filters() == [
        "tasmota/discovery/+/config",
        "tasmota/discovery/+/sensors",
        "homeassistant/+/+/config",
        "homeassistant/+/+/+/config",
    ]
    merged = source.merged(EMPTY)
    assert mapped(merged.map("tele/pow1/SENSOR", POW_TELEMETRY, NOW)).readings["power"] == 2635
    z2m = mapped(merged.map("zigbee2mqtt/living_room", Z2M_TELEMETRY, NOW))
    assert z2m.device.uri == "z2m:living_room"
    assert source.take_removed() == []
    assert not source.take(sensors, json.dumps(PLUG_SENSORS).encode())  # nothing new
    # An empty config removes the device; the file keeps what is left.
    assert source.owns(config) and source.take(config, b"")
    assert source.take_removed() == ["tasmota:pow1"]
    assert not source.merged(EMPTY).produces("tasmota:pow1")
    assert set(json.loads((tmp_path / STATE_FILE).read_text())) == {sensors, Z2M_SENSOR_TOPIC}
    # After the settle time, configs not announced again since the start are dropped.
    assert source.settle_due()
    assert source.take_removed() == ["z2m:living_room"]
    assert set(json.loads((tmp_path / STATE_FILE).read_text())) == {sensors}  # announced
    assert source.merged(EMPTY).rules == []


# --- fuzzing with the real shapes --------------------------------------------------------

JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    float("nan"),
    10**30,
    "",
    "+",
    "#",
    "a/+/b",
    "x\x00",
    "{data}",
    "{x}",
    "~",
    "\udcff",
    "ON",
    [],
    [None],
    {},
    {"a": [1, {"b": 2}]},
    ["ON", "OFF"],
    "{{ value_json.x }}",
    "{{ value | int }}",
]


def _mutate(node: Any, rng: random.Random) -> Any:
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        if rng.random() < 0.3:
            node[key] = rng.choice(JUNK)
        else:
            node[key] = _mutate(node[key], rng)
    elif isinstance(node, list) and node:
        index = rng.randrange(len(node))
        node[index] = rng.choice(JUNK) if rng.random() < 0.5 else _mutate(node[index], rng)
    elif rng.random() < 0.5:
        return rng.choice(JUNK)
    return node


def test_fuzzed_discovery_payloads_never_raise() -> None:
    rng = random.Random(8)
    samples: list[tuple[str, Any]] = [
        (ESPHOME_SENSOR_TOPIC, ESPHOME_SENSOR),
        (ESPHOME_SWITCH_TOPIC, ESPHOME_SWITCH),
        (Z2M_SENSOR_TOPIC, Z2M_SENSOR),
        ("homeassistant/switch/0x1/switch/config", z2m_switch("p", "0x1")),
        ("homeassistant/light/l/config", {"schema": "json", "cmd_t": "l/set", "stat_t": "l"}),
        (
            "homeassistant/device/d/config",
            {"dev": {"ids": "d"}, "cmps": {"a": {"p": "sensor", "stat_t": "s"}}},
        ),
    ]
    topics = ["zigbee2mqtt/living_room", "livingroom/status", "tele/pow1/SENSOR", "s", "l", "x/+"]
    payloads = [b"{}", b"ON", b'{"state":"ON","temperature":1}', b"\xff", b"[1]", b"null"]
    for round_ in range(80):
        devices: list[GeneratedDevice | None] = []
        for topic, sample in samples:
            payload = copy.deepcopy(sample)
            for _ in range(rng.randint(1, 3)):
                payload = _mutate(payload, rng)
            try:
                devices.append(ha_rules(topic, payload))
            except DiscoveryError:
                pytest.fail(f"DiscoveryError for a valid topic: {payload!r}")
        for config, sensors in (
            (PLUG_CONFIG, PLUG_SENSORS),
            (TASMOTA_DEFAULT_CONFIG, TASMOTA_LIST_SENSORS),
        ):
            c, s = copy.deepcopy(config), copy.deepcopy(sensors)
            for _ in range(rng.randint(1, 3)):
                c, s = _mutate(c, rng), _mutate(s, rng)
            devices.append(tasmota_rules("A4CF12B3C4D5", c, s))
        merged, _ = merge(EMPTY, devices)
        for rule in merged.rules[: 10 + round_ % 5]:
            for payload_bytes in payloads:
                merged.map(rule.pattern.text, payload_bytes, NOW)
        for topic in topics:
            merged.map(topic, rng.choice(payloads), NOW)
        for command in merged.commands[:5]:
            merged.plan_command(command.device, command.service, "x")


# --- Home Assistant: names of what a reading measures ----------------------------------

# rtl_433's discovery script (rtl_433_mqtt_hass.py): a bare {{ value }} per entity, object
# ids that name the radio device, the quantity only in the device class.
RTL433_BASE = "rtl_433/host/devices/Acurite-Tower/A/1234"
RTL433_DEVICE = {
    "identifiers": ["Acurite-Tower-A-1234"],
    "name": "Acurite-Tower-A-1234",
    "model": "Acurite-Tower",
    "manufacturer": "rtl_433",
}


def test_ha_readings_are_named_by_device_class_or_entity_name() -> None:
    temperature = {
        "device_class": "temperature",
        "name": "Temperature",
        "state_topic": f"{RTL433_BASE}/temperature_C",
        "unit_of_measurement": "°C",
        "value_template": "{{ value|float }}",
        "device": RTL433_DEVICE,
    }
    humidity = {
        **temperature,
        "device_class": "humidity",
        "name": "Humidity",
        "state_topic": f"{RTL433_BASE}/humidity",
        "unit_of_measurement": "%",
    }
    rain = {  # no device class: the entity's name
        **temperature,
        "device_class": None,
        "name": "Rain total",
        "state_topic": f"{RTL433_BASE}/rain_mm",
        "unit_of_measurement": "mm",
    }
    merged, notes = merge(
        EMPTY,
        [
            ha_rules("homeassistant/sensor/acurite_tower_a_1234/acurite_tower_a_1234_t/config",
                     temperature),
            ha_rules("homeassistant/sensor/acurite_tower_a_1234/acurite_tower_a_1234_h/config",
                     humidity),
            ha_rules("homeassistant/sensor/acurite_tower_a_1234/acurite_tower_a_1234_r/config",
                     rain),
        ],
    )  # fmt: skip
    assert notes == []
    uri = "ha:device/Acurite-Tower-A-1234"
    event = mapped(merged.map(f"{RTL433_BASE}/temperature_C", b"21.4", NOW))
    assert (event.device.uri, event.readings, event.units) == (
        uri,
        {"temperature": 21.4},
        {"temperature": "°C"},
    )
    event = mapped(merged.map(f"{RTL433_BASE}/humidity", b"40", NOW))
    assert (event.device.uri, event.readings, event.units) == (
        uri,
        {"humidity": 40.0},
        {"humidity": "%"},
    )
    event = mapped(merged.map(f"{RTL433_BASE}/rain_mm", b"12.5", NOW))
    assert (event.readings, event.units) == ({"rain_total": 12.5}, {"rain_total": "mm"})


# --- Zigbee2MQTT: the retained bridge/devices list ----------------------------------------

# Shapes of bridge/devices entries as the Zigbee2MQTT docs ("MQTT topics and messages",
# zigbee2mqtt/bridge/devices; "Exposes") give them.
Z2M_DEVICES = [
    {"ieee_address": "0x00124b0000000000", "type": "Coordinator", "friendly_name": "Coordinator",
     "definition": None},
    {"ieee_address": "0xa4c1380000000001", "type": "Router", "friendly_name": "kitchen/plug",
     "supported": True,
     "definition": {"model": "TS011F_plug_1", "vendor": "TuYa",
                    "description": "Smart plug (with power monitoring)",
                    "exposes": [
                        {"type": "switch", "features": [
                            {"type": "binary", "name": "state", "property": "state", "access": 7,
                             "value_on": "ON", "value_off": "OFF", "value_toggle": "TOGGLE"}]},
                        {"type": "numeric", "name": "power", "property": "power", "access": 5,
                         "unit": "W"},
                        {"type": "numeric", "name": "voltage", "property": "voltage",
                         "access": 5, "unit": "V"},
                        {"type": "numeric", "name": "energy", "property": "energy",
                         "access": 5, "unit": "kWh"},
                        {"type": "enum", "name": "power_outage_memory",
                         "property": "power_outage_memory", "access": 7,
                         "values": ["on", "off", "restore"]},
                        {"type": "numeric", "name": "linkquality", "property": "linkquality",
                         "access": 1, "unit": "lqi"}]}},
    {"ieee_address": "0x00158d0000000002", "type": "EndDevice", "friendly_name": "hall/door",
     "definition": {"model": "MCCGQ11LM", "vendor": "Aqara",
                    "exposes": [
                        {"type": "binary", "name": "contact", "property": "contact",
                         "access": 1, "value_on": False, "value_off": True},
                        {"type": "numeric", "name": "battery", "property": "battery",
                         "access": 1, "unit": "%"},
                        {"type": "numeric", "name": "voltage", "property": "voltage",
                         "access": 1, "unit": "mV"}]}},
    {"ieee_address": "0x00158d0000000003", "type": "Router", "friendly_name": "dual",
     "definition": {"model": "QBKG12LM", "vendor": "Aqara",
                    "exposes": [
                        {"type": "switch", "endpoint": "left", "features": [
                            {"type": "binary", "name": "state", "property": "state_left",
                             "access": 7, "value_on": "ON", "value_off": "OFF",
                             "value_toggle": "TOGGLE", "endpoint": "left"}]},
                        {"type": "numeric", "name": "power", "property": "power", "access": 5,
                         "unit": "W"}]}},
]  # fmt: skip


def test_zigbee2mqtt_device_list_gives_units_and_commands(tmp_path: Path) -> None:
    source = DiscoverySource(None, None, tmp_path, settle=0, z2m_base="zigbee2mqtt")
    assert source.filters() == ["zigbee2mqtt/bridge/devices"]
    assert source.owns("zigbee2mqtt/bridge/devices")
    assert source.take("zigbee2mqtt/bridge/devices", json.dumps(Z2M_DEVICES).encode())
    merged = source.merged(load_directory(REPO / "mappings"))
    plug = mapped(
        merged.map(
            "zigbee2mqtt/kitchen/plug",
            b'{"state":"ON","power":85.3,"energy":12.7,"voltage":231,"linkquality":120,'
            b'"power_outage_memory":"restore","update":{"state":"idle"}}',
            NOW,
        )
    )
    assert plug.device.uri == "z2m:kitchen/plug"
    assert plug.readings == {
        "state": 1.0,
        "power": 85.3,
        "voltage": 231.0,
        "energy": 12.7,
        "linkquality": 120.0,
    }
    assert plug.units == {"power": "W", "voltage": "V", "energy": "kWh", "linkquality": "lqi"}
    assert json.loads(plug.metadata)["primary"] == "power"
    door = mapped(
        merged.map("zigbee2mqtt/hall/door", b'{"contact":true,"battery":91,"voltage":3005}', NOW)
    )
    assert (door.readings, door.units) == (
        {"contact": 0.0, "battery": 91.0, "voltage": 3005.0},  # contact true: closed, as exposed
        {"battery": "%", "voltage": "mV"},
    )
    # A device the list does not name: zigbee2mqtt.yaml's rule.
    other = mapped(merged.map("zigbee2mqtt/elsewhere", b'{"temperature":20}', NOW))
    assert other.rule.id == "z2m-device"
    # Writable properties become commands; a second endpoint's switch its own channel.
    plan = merged.plan_command("z2m:kitchen/plug", "set_power_outage_memory", "restore", {})
    assert plan is not None and (plan.topic, json.loads(plan.payload)) == (
        "zigbee2mqtt/kitchen/plug/set",
        {"power_outage_memory": "restore"},
    )
    plan = merged.plan_command("z2m:dual", "off_left", "", {})
    assert plan is not None and json.loads(plan.payload) == {"state_left": "OFF"}
    assert merged.plan_command("z2m:kitchen/plug", "on", "", {}) is not None  # the file's
    # A device that leaves the list is removed.
    assert source.take("zigbee2mqtt/bridge/devices", json.dumps(Z2M_DEVICES[:2]).encode())
    assert sorted(source.take_removed()) == ["z2m:dual", "z2m:hall/door"]
