"""The bundled mapping files against real device payloads (device-conventions.md).

Every message goes through the whole bundled directory (as the adapter loads it) and
through its own file alone, and both must give the same outcome. Disabled files are
compiled with `enabled: true` patched in, so their rules are checked too.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapter.mapping import (
    AvailabilityChange,
    Mapped,
    MappingSet,
    Outcome,
    Rejected,
    compile_text,
    load_directory,
)
from adapter.mapping.rules import CommandRefused
from adapter.topic import TopicPattern

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CORRELATION = {"id": "7", "transaction": "c0ffee01"}

ENABLED = {
    "esphome.yaml",
    "openmqttgateway.yaml",
    "reserved.yaml",
    "shelly-gen1.yaml",
    "shelly-gen2.yaml",
    "tasmota.yaml",
    "zigbee2mqtt.yaml",
}
DISABLED = {"ha-statestream.yaml", "tasmota-custom-fulltopic.yaml"}
NAMESPACES = {
    "esphome.yaml": "esphome:",
    "ha-statestream.yaml": "ha:",
    "openmqttgateway.yaml": "omg:",
    "shelly-gen1.yaml": "shelly:",
    "shelly-gen2.yaml": "shelly:",
    "tasmota-custom-fulltopic.yaml": "tasmota:",
    "tasmota.yaml": "tasmota:",
    "zigbee2mqtt.yaml": "z2m:",
}


def file_text(name: str, *, enable: bool = False) -> str:
    text = (MAPPINGS / name).read_text(encoding="utf-8")
    if enable:  # same length and lines: positions in errors stay right
        text = text.replace("\nenabled: false\n", "\nenabled: true \n")
    return text


@functools.cache
def single(name: str) -> MappingSet:
    rules, commands = compile_text(file_text(name, enable=True), name)
    return MappingSet(rules, commands)


@pytest.fixture(scope="module")
def bundled() -> MappingSet:
    return load_directory(MAPPINGS)


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> MappingSet:
    """The bundled directory with the disabled files enabled too."""
    directory = tmp_path_factory.mktemp("all-enabled")
    for path in MAPPINGS.glob("*.yaml"):
        (directory / path.name).write_text(file_text(path.name, enable=True), encoding="utf-8")
    return load_directory(directory)


# --- the files themselves ---------------------------------------------------------------


def test_the_bundled_files_are_the_documented_ones() -> None:
    assert {p.name for p in MAPPINGS.glob("*.yaml")} == ENABLED | DISABLED
    assert not list(MAPPINGS.glob("*.yml"))


@pytest.mark.parametrize("name", sorted(ENABLED | DISABLED))
def test_every_file_compiles_and_is_enabled_as_documented(name: str) -> None:
    rules, commands = compile_text(file_text(name), name)
    enabled_rules, enabled_commands = compile_text(file_text(name, enable=True), name)
    assert enabled_rules, "every bundled file has rules"
    if name in DISABLED:
        assert (rules, commands) == ([], [])
    else:
        assert [r.id for r in rules] == [r.id for r in enabled_rules]
        assert [c.id for c in commands] == [c.id for c in enabled_commands]


def test_the_enabled_files_load_without_conflicts(bundled: MappingSet) -> None:
    assert bundled.conflicts() == []
    assert {Path(f).name for f in bundled.files} == ENABLED | DISABLED
    assert {rule.where.split(":")[0].rsplit("/", 1)[-1] for rule in bundled.rules} == ENABLED


def test_enabling_the_disabled_files_gives_no_conflict_either(everything: MappingSet) -> None:
    assert everything.conflicts() == []
    names = {rule.where.split(":")[0].rsplit("/", 1)[-1] for rule in everything.rules}
    assert names == ENABLED | DISABLED


def test_rule_and_command_ids_are_unique_across_all_files(everything: MappingSet) -> None:
    rule_ids = [r.id for r in everything.rules]
    command_ids = [c.id for c in everything.commands]
    assert len(set(rule_ids)) == len(rule_ids)
    assert len(set(command_ids)) == len(command_ids)


@pytest.mark.parametrize("name", sorted(NAMESPACES))
def test_devices_are_namespaced_by_family_with_placeholder_types(name: str) -> None:
    mappings = single(name)
    namespace = NAMESPACES[name]
    for rule in mappings.rules:
        if rule.ignore:
            continue
        assert rule.device.uri.startswith(namespace), rule.id
        assert rule.device.device_type.startswith("iot#"), rule.id
    for command in mappings.commands:
        assert command.device.startswith(namespace), command.id
        assert command.device_type.startswith("iot#"), command.id
    assert "real" in file_text(name)  # the comment: a real platform needs real type ids


def test_device_types_and_services_of_the_bundle(bundled: MappingSet) -> None:
    types = bundled.device_types()
    assert types["iot#tasmota-plug"] >= {"sepl_get", "on", "off", "toggle", "dimmer", "color"}
    assert set(types) == {
        "iot#tasmota-plug",
        "iot#esphome-node",
        "iot#shelly-gen1",
        "iot#shelly-gen2",
        "iot#zigbee2mqtt-device",
        "iot#omg-device",
    }
    assert "" not in types  # ignore rules make no device type


def _filters_intersect(a: str, b: str) -> bool:
    """Is there a topic both MQTT filters match?"""
    la, lb = a.split("/"), b.split("/")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


FORBIDDEN_PUBLISH = [
    "homeassistant/+/+/config",
    "homeassistant/+/+/+/config",
    "homeassistant/status",
    "tasmota/discovery/#",
]


def test_no_command_publishes_to_discovery_or_ha_status(everything: MappingSet) -> None:
    assert _filters_intersect("homeassistant/+/+/config", "homeassistant/switch/x/config")
    assert not _filters_intersect("+/switch/+/command", "homeassistant/+/+/config")
    for command in everything.commands:
        # {channel} stands inside a level (POWER{channel}): as the relay it names
        topic_filter = TopicPattern.compile(command.topic.replace("{channel}", "1")).mqtt_filter
        for forbidden in FORBIDDEN_PUBLISH:
            assert not _filters_intersect(topic_filter, forbidden), (command.id, forbidden)
        assert command.payload not in ("", None), command.id  # an empty payload deletes
        assert command.qos == 1


def test_ignore_rules_subscribe_to_nothing(bundled: MappingSet) -> None:
    assert "homeassistant/#" not in bundled.filters
    assert "tasmota/discovery/#" not in bundled.filters
    assert "zigbee2mqtt/#" in bundled.filters


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    file: str
    topic: str
    payload: str
    uri: str
    name: str
    device_type: str
    service: str
    readings: dict[str, float]
    primary: str | None
    missing: tuple[str, ...] = ()
    time: datetime = RECEIVED
    tags: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] | None = None  # None: not checked


POW_SENSOR = (
    '{"Time":"2018-02-15T17:37:10","ENERGY":{"TotalStartTime":"2018-11-14T18:39:40",'
    '"Total":6.294,"Yesterday":5.340,"Today":0.954,"Period":217,"Power":2635,'
    '"ApparentPower":2650,"ReactivePower":282,"Factor":0.99,"Voltage":227,"Current":11.661}}'
)
TASMOTA_STATE = (
    '{"Time":"2021-01-01T12:00:00","Uptime":"0T18:36:12","UptimeSec":67000,"Heap":25,'
    '"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER":"ON","Dimmer":40,'
    '"Wifi":{"AP":1,"SSId":"home","BSSId":"30:B5:C2:5D:C3:D6","Channel":1,"Mode":"11n",'
    '"RSSI":76,"Signal":-62,"LinkCount":1,"Downtime":"0T00:00:03"}}'
)
POW_READINGS = {
    "energy": 6.294,
    "energy_yesterday": 5.34,
    "energy_today": 0.954,
    "energy_period": 0.217,  # Wh since the last telemetry
    "power": 2635,
    "apparent_power": 2650,
    "reactive_power": 282,
    "power_factor": 0.99,
    "voltage": 227,
    "current": 11.661,
}
POW_UNITS = {
    "energy": "kWh",
    "energy_yesterday": "kWh",
    "energy_today": "kWh",
    "energy_period": "kWh",
    "power": "W",
    "apparent_power": "VA",
    "reactive_power": "var",
    "voltage": "V",
    "current": "A",
}
TASMOTA = "iot#tasmota-plug"
TASMOTA_TAGS = {"vendor": "tasmota"}

EVENTS = [
    Event(
        "tasmota.yaml",
        "tele/pow1/SENSOR",
        POW_SENSOR,
        "tasmota:pow1",
        "Tasmota pow1",
        TASMOTA,
        "sepl_get",
        POW_READINGS,
        "power",
        units=POW_UNITS,
        tags=TASMOTA_TAGS,
    ),
    Event(  # multi-phase: each phase suffixed, the whole device summed (voltage: phase 1)
        "tasmota.yaml",
        "tele/meter/SENSOR",
        '{"Time":"2020-09-25T12:47:15","ENERGY":{"Total":{"Phase1":0.017,"Phase2":0.017},'
        '"Today":0.002,"Power":[10.5,20.25],"Voltage":[230.1,231.2],"Current":[1.320,2.100]}}',
        "tasmota:meter",
        "Tasmota meter",
        TASMOTA,
        "sepl_get",
        {
            "energy": 0.034,
            "energy_1": 0.017,
            "energy_2": 0.017,
            "energy_today": 0.002,
            "power": 30.75,
            "power_1": 10.5,
            "power_2": 20.25,
            "voltage": 230.1,
            "voltage_1": 230.1,
            "voltage_2": 231.2,
            "current": 3.42,
            "current_1": 1.32,
            "current_2": 2.1,
        },
        "power",
    ),
    Event(  # HA's Tasmota fixture: TotalTariff arrays next to a scalar Total
        "tasmota.yaml",
        "tele/tasmota_49A3BC/SENSOR",
        '{"Time": "2020-09-25T12:47:15", "ENERGY": {"TotalStartTime": "2018-11-23T15:33:47",'
        ' "Total": 0.017, "TotalTariff": [0.000, 0.017], "Yesterday": 0.000, "Today": 0.002,'
        ' "Power": 0.00, "ApparentPower": 7.84, "Voltage": 234.31, "Current": 0.039}}',
        "tasmota:tasmota_49A3BC",
        "Tasmota tasmota_49A3BC",
        TASMOTA,
        "sepl_get",
        {
            "power": 0.0,
            "apparent_power": 7.84,
            "voltage": 234.31,
            "current": 0.039,
            "energy_today": 0.002,
            "energy_yesterday": 0.0,
            "energy": 0.017,
            "energy_tariff_1": 0.0,
            "energy_tariff_2": 0.017,
        },
        "power",
    ),
    Event(
        "tasmota.yaml",
        "tele/tasmota/SENSOR",
        '{"Time":"2017-02-16T10:13:52", "DS18B20":{"Temperature":20.6}}',
        "tasmota:tasmota",
        "Tasmota tasmota",
        TASMOTA,
        "sepl_get",
        {"temperature": 20.6},
        "temperature",
        units={"temperature": "°C"},  # TempUnit absent: Tasmota's default
    ),
    Event(
        "tasmota.yaml",
        "tele/cellar/SENSOR",
        '{"Time":"2021-03-01T08:00:00","DS18B20-1":{"Id":"00000566CC39","Temperature":12.5},'
        '"DS18B20-2":{"Id":"0000048EC44C","Temperature":13.0},"TempUnit":"C"}',
        "tasmota:cellar",
        "Tasmota cellar",
        TASMOTA,
        "sepl_get",
        {"temperature_1": 12.5, "temperature_2": 13.0},
        "temperature_1",
        units={"temperature_1": "°C", "temperature_2": "°C"},
    ),
    Event(
        "tasmota.yaml",
        "tele/bath/SENSOR",
        '{"Time":"2019-01-10T22:47:56","AM2301":{"Temperature":22.4,"Humidity":40.8,'
        '"DewPoint":8.3},"TempUnit":"C"}',
        "tasmota:bath",
        "Tasmota bath",
        TASMOTA,
        "sepl_get",
        {"temperature": 22.4, "humidity": 40.8, "dew_point": 8.3},
        "temperature",
        units={"temperature": "°C", "humidity": "%", "dew_point": "°C"},
    ),
    Event(
        "tasmota.yaml",
        "tele/attic/SENSOR",
        '{"Time":"2021-01-01T12:00:00","BME280":{"Temperature":21.3,"Humidity":45.2,'
        '"DewPoint":9.0,"Pressure":1012.4},"PressureUnit":"hPa","TempUnit":"C"}',
        "tasmota:attic",
        "Tasmota attic",
        TASMOTA,
        "sepl_get",
        {"temperature": 21.3, "humidity": 45.2, "dew_point": 9.0, "pressure": 1012.4},
        "temperature",
    ),
    Event(
        "tasmota.yaml",
        "tele/kitchen/STATE",
        TASMOTA_STATE,
        "tasmota:kitchen",
        "Tasmota kitchen",
        TASMOTA,
        "state",
        {"state": 1, "dimmer": 40, "rssi": 76, "signal": -62, "uptime": 67000},
        None,
        units={"dimmer": "%", "rssi": "%", "signal": "dBm", "uptime": "s"},
    ),
    Event(  # SetOption26: POWER1 even with one relay
        "tasmota.yaml",
        "tele/kitchen/STATE",
        '{"Time":"2021-01-01T12:00:00","UptimeSec":5,"POWER1":"OFF","Wifi":{"RSSI":50,'
        '"Signal":-75}}',
        "tasmota:kitchen",
        "Tasmota kitchen",
        TASMOTA,
        "state",
        {"state": 0, "rssi": 50, "signal": -75, "uptime": 5},
        None,
    ),
    Event(
        "tasmota.yaml",
        "stat/kitchen/POWER",
        "ON",
        "tasmota:kitchen",
        "Tasmota kitchen",
        TASMOTA,
        "power_state",
        {"state": 1},
        None,
    ),
    Event(  # a StateText changed to other words: sent, but no reading
        "tasmota.yaml",
        "stat/kitchen/POWER",
        "AN",
        "tasmota:kitchen",
        "Tasmota kitchen",
        TASMOTA,
        "power_state",
        {},
        None,
        missing=("state",),
    ),
    Event(
        "tasmota-custom-fulltopic.yaml",
        "pow1/tele/SENSOR",
        POW_SENSOR,
        "tasmota:pow1",
        "Tasmota pow1",
        TASMOTA,
        "sepl_get",
        POW_READINGS,
        "power",
        units=POW_UNITS,
    ),
    Event(
        "tasmota-custom-fulltopic.yaml",
        "tasmota_49A3BC/tele/SENSOR",
        '{"Time":"2017-02-16T10:13:52", "DS18B20":{"Temperature":20.6}}',
        "tasmota:tasmota_49A3BC",
        "Tasmota tasmota_49A3BC",
        TASMOTA,
        "sepl_get",
        {"temperature": 20.6},
        "temperature",
    ),
    Event(
        "tasmota-custom-fulltopic.yaml",
        "kitchen/stat/POWER",
        "OFF",
        "tasmota:kitchen",
        "Tasmota kitchen",
        TASMOTA,
        "power_state",
        {"state": 0},
        None,
    ),
    Event(
        "esphome.yaml",
        "livingroom/sensor/living_room_temperature/state",
        "23.5",
        "esphome:livingroom",
        "livingroom",
        "iot#esphome-node",
        "sepl_get",
        {"living_room_temperature": 23.5},
        None,
        tags={"family": "esphome"},
    ),
    Event(  # an object id that says what it measures is the node's primary
        "esphome.yaml",
        "plug1/sensor/power/state",
        "85.3",
        "esphome:plug1",
        "plug1",
        "iot#esphome-node",
        "sepl_get",
        {"power": 85.3},
        "power",
    ),
    Event(
        "esphome.yaml",
        "livingroom/switch/my_relay/state",
        "ON",
        "esphome:livingroom",
        "livingroom",
        "iot#esphome-node",
        "state",
        {"state_my_relay": 1},
        None,
    ),
    Event(
        "esphome.yaml",
        "livingroom/binary_sensor/motion/state",
        "OFF",
        "esphome:livingroom",
        "livingroom",
        "iot#esphome-node",
        "state",
        {"motion": 0},
        None,
    ),
    Event(
        "shelly-gen1.yaml",
        "shellies/shelly1pm-ABC123/relay/0/power",
        "47.11",
        "shelly:shelly1pm-ABC123",
        "Shelly shelly1pm-ABC123",
        "iot#shelly-gen1",
        "sepl_get",
        {"power": 47.11},
        "power",
        tags={"family": "shelly", "generation": "1"},
        units={"power": "W"},
    ),
    Event(  # relay 1 of a Shelly 2.5: its channel's suffix
        "shelly-gen1.yaml",
        "shellies/shellyswitch25-ABC123/relay/1/power",
        "12.5",
        "shelly:shellyswitch25-ABC123",
        "Shelly shellyswitch25-ABC123",
        "iot#shelly-gen1",
        "sepl_get",
        {"power_1": 12.5},
        None,
        units={"power_1": "W"},
    ),
    Event(  # watt-minutes to kWh
        "shelly-gen1.yaml",
        "shellies/shellyplug-s-ABC123/relay/0/energy",
        "600",
        "shelly:shellyplug-s-ABC123",
        "Shelly shellyplug-s-ABC123",
        "iot#shelly-gen1",
        "energy",
        {"energy": 0.01},
        None,
        units={"energy": "kWh"},
    ),
    Event(
        "shelly-gen1.yaml",
        "shellies/shellyswitch25-ABC123/relay/1",
        "on",
        "shelly:shellyswitch25-ABC123",
        "Shelly shellyswitch25-ABC123",
        "iot#shelly-gen1",
        "state",
        {"state_1": 1},
        None,
    ),
    Event(
        "shelly-gen1.yaml",
        "shellies/shelly1pm-ABC123/temperature",
        "45.3",
        "shelly:shelly1pm-ABC123",
        "Shelly shelly1pm-ABC123",
        "iot#shelly-gen1",
        "sepl_get",
        {"device_temperature": 45.3},
        None,
        units={"device_temperature": "°C"},
    ),
    Event(
        "shelly-gen2.yaml",
        "shellyplus1pm-a8032abe54dc/status/switch:0",
        '{"id":0, "source":"HTTP", "output":false, "apower":47.11, "voltage":232.0,'
        ' "current":0.000, "pf":0.00, "aenergy":{"total":5.125,"by_minute":[0.000,0.000,0.000],'
        '"minute_ts":1675718520},"temperature":{"tC":25.3, "tF":77.5}}',
        "shelly:shellyplus1pm-a8032abe54dc",
        "Shelly shellyplus1pm-a8032abe54dc",
        "iot#shelly-gen2",
        "sepl_get",
        {
            "power": 47.11,
            "voltage": 232.0,
            "current": 0.0,
            "power_factor": 0.0,
            "energy": 0.005125,
            "device_temperature": 25.3,
            "state": 0,
        },
        "power",
        tags={"family": "shelly", "generation": "2"},
        units={
            "power": "W",
            "voltage": "V",
            "current": "A",
            "energy": "kWh",
            "device_temperature": "°C",
        },
    ),
    Event(
        "shelly-gen2.yaml",
        "shellypro4pm-f008d1d8b8b8/events/rpc",
        '{"src": "shellypro4pm-f008d1d8b8b8", "dst": "user_1", "method": "NotifyStatus",'
        ' "params": {"ts": 1631186545.04, "switch:0": {"id": 0, "output": true,'
        ' "source": "button"}}}',
        "shelly:shellypro4pm-f008d1d8b8b8",
        "Shelly shellypro4pm-f008d1d8b8b8",
        "iot#shelly-gen2",
        "sepl_get",
        {"state": 1},
        None,
        time=datetime.fromtimestamp(1631186545.04, UTC),
    ),
    Event(  # a partial update of switch:1 (only its energy changed)
        "shelly-gen2.yaml",
        "shellypro4pm-f008d1d8b8b8/events/rpc",
        '{"src":"shellypro4pm-f008d1d8b8b8","dst":"user_1","method":"NotifyStatus",'
        '"params":{"ts":1631186600.5,"switch:1":{"id":1,"aenergy":{"total":1200.0,'
        '"by_minute":[0,0,0],"minute_ts":1631186600}}}}',
        "shelly:shellypro4pm-f008d1d8b8b8",
        "Shelly shellypro4pm-f008d1d8b8b8",
        "iot#shelly-gen2",
        "sepl_get",
        {"energy_1": 1.2},
        None,
        time=datetime.fromtimestamp(1631186600.5, UTC),
        units={"energy_1": "kWh"},
    ),
    Event(  # Shelly Plus H&T: temperature:0, humidity:0, devicepower:0 in a full status
        "shelly-gen2.yaml",
        "shellyplusht-08b61fcb7f3c/events/rpc",
        '{"src":"shellyplusht-08b61fcb7f3c","dst":"shellyplusht-08b61fcb7f3c/events",'
        '"method":"NotifyFullStatus","params":{"ts":1700000000.0,'
        '"devicepower:0":{"id":0,"battery":{"V":5.6,"percent":82},"external":{"present":false}},'
        '"humidity:0":{"id":0,"rh":48.3},"temperature:0":{"id":0,"tC":21.9,"tF":71.4},'
        '"wifi":{"sta_ip":"10.0.0.9","status":"got ip","ssid":"home","rssi":-58}}}',
        "shelly:shellyplusht-08b61fcb7f3c",
        "Shelly shellyplusht-08b61fcb7f3c",
        "iot#shelly-gen2",
        "sepl_get",
        {
            "battery": 82,
            "battery_voltage": 5.6,
            "external_power": 0,
            "humidity": 48.3,
            "temperature": 21.9,
            "rssi": -58,
        },
        "temperature",
        time=datetime.fromtimestamp(1700000000.0, UTC),
        units={
            "battery": "%",
            "battery_voltage": "V",
            "humidity": "%",
            "temperature": "°C",
            "rssi": "dBm",
        },
    ),
    Event(
        "zigbee2mqtt.yaml",
        "zigbee2mqtt/0x00158d00022cb428",
        '{"temperature":29.1,"linkquality":55,"humidity":34.6,"pressure":987.1,"battery":100,'
        '"voltage":3035,"last_seen":"2019-03-08T19:28:17+03:00"}',
        "z2m:0x00158d00022cb428",
        "0x00158d00022cb428",
        "iot#zigbee2mqtt-device",
        "sepl_get",
        {
            "temperature": 29.1,
            "humidity": 34.6,
            "pressure": 987.1,
            "battery": 100,
            "linkquality": 55,
            "voltage": 3035,
        },
        "temperature",
        time=datetime(2019, 3, 8, 16, 28, 17, tzinfo=UTC),
        tags={"family": "zigbee2mqtt"},
    ),
    Event(  # a friendly name with '/'; no last_seen: the receive time
        "zigbee2mqtt.yaml",
        "zigbee2mqtt/kitchen/floor_light",
        '{"state": "ON", "brightness": 215, "color_temp": 325}',
        "z2m:kitchen/floor_light",
        "kitchen/floor_light",
        "iot#zigbee2mqtt-device",
        "sepl_get",
        {"state": 1, "brightness": 215, "color_temp": 325},
        "state",
    ),
    Event(
        "zigbee2mqtt.yaml",
        "zigbee2mqtt/living/WSDCGQ01LM",
        '{"temperature": 27.34, "humidity": 44.72, "last_seen": 1552062497000}',
        "z2m:living/WSDCGQ01LM",
        "living/WSDCGQ01LM",
        "iot#zigbee2mqtt-device",
        "sepl_get",
        {"temperature": 27.34, "humidity": 44.72},
        "temperature",
        time=datetime(2019, 3, 8, 16, 28, 17, tzinfo=UTC),
    ),
    Event(  # numbers as text
        "openmqttgateway.yaml",
        "home/OpenMQTTGateway/BTtoMQTT/4C33A6603C79",
        '{"hum":"52.6","tempc":"19.2","tempf":"66.56"}',
        "omg:4C33A6603C79",
        "BLE 4C33A6603C79",
        "iot#omg-device",
        "sepl_get",
        {"temperature": 19.2, "humidity": 52.6},
        "temperature",
        missing=("battery", "rssi"),
        tags={"family": "openmqttgateway"},
    ),
    Event(
        "openmqttgateway.yaml",
        "home/OpenMQTTGateway/BTtoMQTT/45E174126E00",
        '{"id":"45:e1:74:12:6e:00","rssi":-89,"distance":21.51847,'
        '"servicedata":"fe0000000000000000000000000000000000000000"}',
        "omg:45E174126E00",
        "BLE 45E174126E00",
        "iot#omg-device",
        "sepl_get",
        {"rssi": -89},
        None,
        missing=("temperature", "humidity", "battery"),
    ),
    Event(
        "openmqttgateway.yaml",
        "home/garage/BTtoMQTT/A4C1385A9F2B",
        '{"tempc":21.5,"hum":40,"batt":87,"rssi":-70,"UTCtime":"2023-12-26T19:10:20Z"}',
        "omg:A4C1385A9F2B",
        "BLE A4C1385A9F2B",
        "iot#omg-device",
        "sepl_get",
        {"temperature": 21.5, "humidity": 40, "battery": 87, "rssi": -70},
        "temperature",
        time=datetime(2023, 12, 26, 19, 10, 20, tzinfo=UTC),
    ),
    Event(
        "openmqttgateway.yaml",
        "home/OpenMQTTGateway/433toMQTT",
        '{"value":1315156,"protocol":1,"length":24,"delay":317}',
        "omg:OpenMQTTGateway",
        "OpenMQTTGateway OpenMQTTGateway",
        "iot#omg-device",
        "rf433",
        {"value": 1315156, "protocol": 1},
        "value",
    ),
    Event(
        "ha-statestream.yaml",
        "homeassistant/light/master_bedroom_dimmer/state",
        "on",
        "ha:light.master_bedroom_dimmer",
        "light.master_bedroom_dimmer",
        "iot#ha-entity",
        "state",
        {"value": 1},
        "value",
        tags={"family": "homeassistant", "domain": "light"},
    ),
    Event(
        "ha-statestream.yaml",
        "homeassistant/sensor/outside_temperature/state",
        "23.5",
        "ha:sensor.outside_temperature",
        "sensor.outside_temperature",
        "iot#ha-entity",
        "state",
        {"value": 23.5},
        "value",
    ),
    Event(
        "ha-statestream.yaml",
        "homeassistant/sensor/outside_temperature/state",
        "unavailable",
        "ha:sensor.outside_temperature",
        "sensor.outside_temperature",
        "iot#ha-entity",
        "state",
        {},
        None,
        missing=("value",),
    ),
]


def _check_event(outcome: Outcome | None, case: Event) -> None:
    assert isinstance(outcome, Mapped), outcome
    assert outcome.device.uri == case.uri
    assert outcome.device.name == case.name
    assert outcome.device.device_type == case.device_type
    outcome.device.validate()
    if case.tags:
        assert dict(outcome.device.tags) == case.tags
    assert outcome.service == case.service
    assert outcome.readings == pytest.approx(case.readings)
    assert set(outcome.readings) == set(case.readings)
    assert outcome.missing == case.missing
    assert outcome.data == case.payload  # the payload exactly as published (D10)
    assert outcome.time == case.time
    metadata = json.loads(outcome.metadata)
    if case.units is not None:
        assert outcome.units == case.units
        assert metadata.get("units", {}) == case.units
    assert metadata["topic"] == case.topic
    assert metadata["primary"] == case.primary
    assert metadata["readings"] == pytest.approx(case.readings)


@pytest.mark.parametrize("case", EVENTS, ids=lambda c: f"{c.file}:{c.topic}")
def test_device_payloads_become_events(
    case: Event, bundled: MappingSet, everything: MappingSet
) -> None:
    payload = case.payload.encode()
    _check_event(single(case.file).map(case.topic, payload, RECEIVED), case)
    _check_event(everything.map(case.topic, payload, RECEIVED), case)
    if case.file in ENABLED:
        _check_event(bundled.map(case.topic, payload, RECEIVED), case)
    else:  # a disabled family's topic is taken by nothing else
        assert bundled.map(case.topic, payload, RECEIVED) is None


GEN2 = "shellyplus1-a8032abe54dc"
LIGHT = "kitchen/floor_light"
XIAOMI = "0x00158d00022cb428"
Z2M_AVAILABILITY = f"zigbee2mqtt/{LIGHT}/availability"
AVAILABILITY = [
    ("tasmota.yaml", "tele/kitchen/LWT", "Online", "tasmota:kitchen", True),
    ("tasmota.yaml", "tele/kitchen/LWT", "Offline", "tasmota:kitchen", False),
    ("tasmota.yaml", "tele/kitchen/LWT", "Rebooting", "tasmota:kitchen", None),
    ("tasmota-custom-fulltopic.yaml", "kitchen/tele/LWT", "Online", "tasmota:kitchen", True),
    ("esphome.yaml", "livingroom/status", "online", "esphome:livingroom", True),
    ("esphome.yaml", "livingroom/status", "offline", "esphome:livingroom", False),
    ("shelly-gen1.yaml", "shellies/shelly1-B929CC/online", "true", "shelly:shelly1-B929CC", True),
    ("shelly-gen1.yaml", "shellies/shelly1-B929CC/online", "false", "shelly:shelly1-B929CC", False),
    ("shelly-gen2.yaml", f"{GEN2}/online", "true", f"shelly:{GEN2}", True),
    ("shelly-gen2.yaml", f"{GEN2}/online", "false", f"shelly:{GEN2}", False),
    ("zigbee2mqtt.yaml", Z2M_AVAILABILITY, '{"state":"online"}', f"z2m:{LIGHT}", True),
    ("zigbee2mqtt.yaml", Z2M_AVAILABILITY, '{"state": "offline"}', f"z2m:{LIGHT}", False),
    ("zigbee2mqtt.yaml", f"zigbee2mqtt/{XIAOMI}/availability", "online", f"z2m:{XIAOMI}", True),
    ("zigbee2mqtt.yaml", f"zigbee2mqtt/{XIAOMI}/availability", "offline", f"z2m:{XIAOMI}", False),
    ("openmqttgateway.yaml", "home/OpenMQTTGateway/LWT", "online", "omg:OpenMQTTGateway", True),
    ("openmqttgateway.yaml", "home/OpenMQTTGateway/LWT", "offline", "omg:OpenMQTTGateway", False),
    ("openmqttgateway.yaml", "home/OpenMQTTGateway/LWT", "Online", "omg:OpenMQTTGateway", True),
    ("openmqttgateway.yaml", "home/OpenMQTTGateway/LWT", "Offline", "omg:OpenMQTTGateway", False),
]  # fmt: skip


@pytest.mark.parametrize(("file", "topic", "payload", "uri", "online"), AVAILABILITY)
def test_availability_payloads_change_the_online_state(
    file: str,
    topic: str,
    payload: str,
    uri: str,
    online: bool | None,
    bundled: MappingSet,
    everything: MappingSet,
) -> None:
    sets = [single(file), everything] + ([bundled] if file in ENABLED else [])
    for mappings in sets:
        outcome = mappings.map(topic, payload.encode(), RECEIVED)
        assert isinstance(outcome, AvailabilityChange), outcome
        assert (outcome.device.uri, outcome.online) == (uri, online)


DROPPED = [
    "cmnd/kitchen/POWER",  # Tasmota's empty POWER on connect; HA's polls
    "stat/kitchen/RESULT",  # command replies are not events
    "tele/kitchen/INFO1",
    "tasmota/discovery/00000049A3BC/config",
    "tasmota/discovery/00000049A3BC/sensors",
    "homeassistant/status",
    "homeassistant/sensor/livingroom/living_room_temperature/config",
    "homeassistant/switch/irrigation/config",
    "homeassistant/switch/irrigation/set",
    "homeassistant/light/master_bedroom_dimmer/brightness",
    "homeassistant/light/master_bedroom_dimmer/last_updated",
    "livingroom/switch/my_relay/command",
    "shellies/announce",
    "shellies/command",
    "shellies/shelly1-B929CC/relay/0/command",
    "shellyplus1-a8032abe54dc/rpc",
    "sepl-adapter/rpc",
    "zigbee2mqtt/bridge/state",
    "zigbee2mqtt/bridge/devices",
    "zigbee2mqtt/bridge/response/device/rename",
    "zigbee2mqtt/kitchen/floor_light/set",
    "zigbee2mqtt/kitchen/floor_light/set/state",
    "zigbee2mqtt/kitchen/floor_light/get",
    "home/OpenMQTTGateway/commands/MQTTto433",
    "$SYS/broker/uptime",
]


@pytest.mark.parametrize("topic", DROPPED)
def test_foreign_and_own_traffic_is_not_forwarded(
    topic: str, bundled: MappingSet, everything: MappingSet
) -> None:
    for payload in (b"", b"online", b'{"state":"ON"}', b"ON"):
        assert bundled.map(topic, payload, RECEIVED) is None, (topic, payload)
        assert everything.map(topic, payload, RECEIVED) is None, (topic, payload)


def test_statestream_values_are_dropped_while_it_is_disabled(bundled: MappingSet) -> None:
    # reserved.yaml keeps them from the ESPHome catch-all rules
    for topic in ("homeassistant/switch/irrigation/state", "homeassistant/sensor/x/state"):
        assert bundled.candidates(topic)[0][0].id == "reserved-homeassistant"
        assert bundled.map(topic, b"on", RECEIVED) is None
    # without reserved.yaml, ESPHome's catch-all would take them
    alone = single("esphome.yaml")
    assert isinstance(alone.map("homeassistant/status", b"online", RECEIVED), AvailabilityChange)


def test_esphome_nan_is_rejected(bundled: MappingSet) -> None:
    outcome = bundled.map("livingroom/sensor/t/state", b"nan", RECEIVED)
    assert isinstance(outcome, Rejected)
    assert outcome.rule.id == "esphome-sensor"


def test_shelly_gen2_components_become_readings_and_events_are_dropped(
    bundled: MappingSet,
) -> None:
    status = b'{"id":0,"state":false}'
    outcome = bundled.map("shellyplus1-a8032abe54dc/status/input:0", status, RECEIVED)
    assert isinstance(outcome, Mapped) and outcome.readings == {"input": 0}
    event = b'{"src":"shellyplus1-x","dst":"u","method":"NotifyEvent","params":{"ts":1.0}}'
    assert bundled.map("shellyplus1-x/events/rpc", event, RECEIVED) is None
    switch1 = b'{"method":"NotifyStatus","params":{"ts":1.0,"switch:1":{"output":true}}}'
    outcome = bundled.map("shellyplus1-x/events/rpc", switch1, RECEIVED)
    assert isinstance(outcome, Mapped) and outcome.readings == {"state_1": 1}
    gone = b'{"method":"NotifyStatus","params":{"ts":1.0,"switch:0":{"apower":null}}}'
    outcome = bundled.map("shellyplus1-x/events/rpc", gone, RECEIVED)
    assert isinstance(outcome, Mapped) and outcome.readings == {}  # null is no 0


def test_fixed_root_families_win_over_the_catch_alls(bundled: MappingSet) -> None:
    outcome = bundled.map("zigbee2mqtt/status", b'{"temperature": 20}', RECEIVED)
    assert isinstance(outcome, Mapped) and outcome.device.uri == "z2m:status"
    outcome = bundled.map("shellies/switch/relay/state", b"on", RECEIVED)
    assert isinstance(outcome, Mapped) and outcome.rule.id == "shelly-gen1-relay-state"


def test_tasmota_custom_and_default_layouts_side_by_side(everything: MappingSet) -> None:
    default = everything.map("tele/kitchen/SENSOR", POW_SENSOR.encode(), RECEIVED)
    custom = everything.map("kitchen/tele/SENSOR", POW_SENSOR.encode(), RECEIVED)
    assert isinstance(default, Mapped) and isinstance(custom, Mapped)
    assert default.rule.id == "tasmota-sensor"
    assert custom.rule.id == "tasmota-custom-sensor"
    assert default.device == custom.device


# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    file: str
    device: str
    service: str
    data: str
    topic: str
    payload: str | dict[str, object]  # a dict: compared as JSON
    reply_topic: str | None
    reply: str | None = None  # a reply payload that matches
    reply_data: str | None = None  # what it gives
    not_reply: str | None = None  # a message on the reply topic that is no reply


COMMANDS = [
    Command(
        "tasmota.yaml", "tasmota:kitchen", "on", "", "cmnd/kitchen/POWER", "ON",
        "stat/kitchen/RESULT", '{"POWER":"ON"}', '{"POWER":"ON"}', '{"Dimmer":40}',
    ),
    Command(
        "tasmota.yaml", "tasmota:kitchen", "off", "", "cmnd/kitchen/POWER", "OFF",
        "stat/kitchen/RESULT", '{"POWER1":"OFF"}', '{"POWER1":"OFF"}', '{"Uptime":"1T00:00:00"}',
    ),
    Command(
        "tasmota.yaml", "tasmota:kitchen", "toggle", "", "cmnd/kitchen/POWER", "TOGGLE",
        "stat/kitchen/RESULT", '{"POWER":"OFF"}', '{"POWER":"OFF"}',
    ),
    Command(
        "tasmota.yaml", "tasmota:bulb", "dimmer", "40", "cmnd/bulb/Dimmer", "40",
        "stat/bulb/RESULT", '{"POWER":"ON","Dimmer":40}', '{"POWER":"ON","Dimmer":40}',
        '{"POWER":"ON"}',
    ),
    Command(
        "tasmota.yaml", "tasmota:bulb", "color", "#FF0000", "cmnd/bulb/Color", "#FF0000",
        "stat/bulb/RESULT", '{"POWER":"ON","Dimmer":100,"Color":"FF0000"}',
        '{"POWER":"ON","Dimmer":100,"Color":"FF0000"}', '{"POWER":"ON"}',
    ),
    Command(
        "tasmota.yaml", "tasmota:strip", "on", "3", "cmnd/strip/POWER3", "ON",
        "stat/strip/RESULT", '{"POWER3":"ON"}', '{"POWER3":"ON"}', '{"Dimmer":40}',
    ),
    Command(
        "tasmota-custom-fulltopic.yaml", "tasmota:kitchen", "on", "", "kitchen/cmnd/POWER",
        "ON", "kitchen/stat/RESULT", '{"POWER":"ON"}', '{"POWER":"ON"}',
    ),
    Command(
        "esphome.yaml", "esphome:livingroom", "on", "my_relay",
        "livingroom/switch/my_relay/command", "ON", "livingroom/switch/my_relay/state",
        "ON", "ON",
    ),
    Command(
        "esphome.yaml", "esphome:livingroom", "toggle", '{"channel": "my_relay"}',
        "livingroom/switch/my_relay/command", "TOGGLE", "livingroom/switch/my_relay/state",
        "OFF", "OFF",
    ),
    Command(
        "shelly-gen1.yaml", "shelly:shelly1-B929CC", "off", "",
        "shellies/shelly1-B929CC/relay/0/command", "off", "shellies/shelly1-B929CC/relay/0",
        "off", "off",
    ),
    Command(
        "shelly-gen1.yaml", "shelly:shellyswitch25-ABC123", "toggle", "1",
        "shellies/shellyswitch25-ABC123/relay/1/command", "toggle",
        "shellies/shellyswitch25-ABC123/relay/1", "on", "on",
    ),
    Command(
        "shelly-gen2.yaml", "shelly:shellyplus1-a8032abe54dc", "on", "",
        "shellyplus1-a8032abe54dc/rpc",
        {"id": "7", "src": "sepl-adapter", "method": "Switch.Set", "params": {"id": 0, "on": True}},
        "sepl-adapter/rpc",
        '{"id":"7","src":"shellyplus1-a8032abe54dc","dst":"sepl-adapter","result":{"was_on":false}}',
        '{"was_on": false}',
        '{"id":"6","src":"shellyplus1-a8032abe54dc","dst":"sepl-adapter","result":{"was_on":true}}',
    ),
    Command(
        "shelly-gen2.yaml", "shelly:shellyplus1-a8032abe54dc", "off", "",
        "shellyplus1-a8032abe54dc/rpc",
        {"id": "7", "src": "sepl-adapter", "method": "Switch.Set",
         "params": {"id": 0, "on": False}},
        "sepl-adapter/rpc",
        '{"id":"7","src":"x","dst":"sepl-adapter","error":{"code":-103,"message":"bad"}}',
        '{"code": -103, "message": "bad"}',
    ),
    Command(
        "shelly-gen2.yaml", "shelly:shellypro4pm-f008d1d8b8b8", "toggle", "2",
        "shellypro4pm-f008d1d8b8b8/rpc",
        {"id": "7", "src": "sepl-adapter", "method": "Switch.Toggle", "params": {"id": 2}},
        "sepl-adapter/rpc", '{"id":"7","result":{"was_on":true}}', '{"was_on": true}',
    ),
    Command(
        "zigbee2mqtt.yaml", "z2m:kitchen/floor_light", "on", "",
        "zigbee2mqtt/kitchen/floor_light/set", {"state": "ON"}, "zigbee2mqtt/kitchen/floor_light",
        '{"state":"ON","brightness":215}', '{"state":"ON","brightness":215}', '{"linkquality":5}',
    ),
    Command(
        "zigbee2mqtt.yaml", "z2m:0x00158d00022cb428", "off", "",
        "zigbee2mqtt/0x00158d00022cb428/set", {"state": "OFF"}, "zigbee2mqtt/0x00158d00022cb428",
        '{"state":"OFF"}', '{"state":"OFF"}',
    ),
    Command(
        "zigbee2mqtt.yaml", "z2m:kitchen/floor_light", "toggle", "",
        "zigbee2mqtt/kitchen/floor_light/set", {"state": "TOGGLE"},
        "zigbee2mqtt/kitchen/floor_light", '{"state":"OFF"}', '{"state":"OFF"}',
    ),
    Command(
        "zigbee2mqtt.yaml", "z2m:kitchen/floor_light", "set", '{"brightness": 128}',
        "zigbee2mqtt/kitchen/floor_light/set", {"brightness": 128},
        "zigbee2mqtt/kitchen/floor_light", '{"state":"ON","brightness":128}',
        '{"state":"ON","brightness":128}',
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", COMMANDS, ids=lambda c: f"{c.file}:{c.device}:{c.service}")
def test_commands_become_publishes_and_replies_answer_them(
    case: Command, bundled: MappingSet, everything: MappingSet
) -> None:
    sets = [single(case.file)]
    if case.file in ENABLED:
        sets.append(bundled)
    # The device's registered type picks between families that share a namespace (Shelly).
    device_type = single(case.file).commands[0].device_type
    for mappings in sets:
        plan = mappings.plan_command(case.device, case.service, case.data, CORRELATION, device_type)
        assert plan is not None
        assert plan.topic == case.topic
        if isinstance(case.payload, dict):
            assert json.loads(plan.payload) == case.payload
        else:
            assert plan.payload == case.payload
        assert plan.reply_topic == case.reply_topic
        if case.reply is not None:
            assert MappingSet.reply_data(plan, case.reply.encode()) == case.reply_data
        if case.not_reply is not None:
            assert MappingSet.reply_data(plan, case.not_reply.encode()) is None


@pytest.mark.parametrize(
    ("device", "service"),
    [
        ("esphome:livingroom/sensor/living_room_temperature", "on"),  # before [12]'s uris
        ("shelly:shelly1-B929CC/relay/0", "on"),
        ("shelly:shellyplus1-a8032abe54dc/switch:1", "on"),
        ("omg:4C33A6603C79", "on"),
        ("tasmota:kitchen", "dance"),
        ("tasmota:+", "on"),  # a wildcard would make an invalid publish topic
        ("tasmota:a/b", "on"),
    ],
)
def test_commands_without_a_rule_are_not_planned(
    device: str, service: str, bundled: MappingSet
) -> None:
    assert bundled.plan_command(device, service, "", CORRELATION) is None


@pytest.mark.parametrize(
    ("device", "data", "reason"),
    [
        ("tasmota:strip", "9", "channel '9' is not one of this device's ([1-8])"),
        ("tasmota:strip", "ON", "channel 'ON' is not one of this device's ([1-8])"),
        ("shelly:shelly1-B929CC", "a", "channel 'a' is not one of this device's ([0-9])"),
        ("esphome:livingroom", "", "name the channel in the command's data ([a-z0-9_]+)"),
    ],
)
def test_commands_for_a_channel_the_device_lacks_are_refused(
    device: str, data: str, reason: str, bundled: MappingSet
) -> None:
    with pytest.raises(CommandRefused) as refused:
        bundled.plan_command(device, "on", data, CORRELATION)
    assert str(refused.value) == reason


def test_a_command_without_a_channel_takes_the_only_one_the_device_has(
    bundled: MappingSet,
) -> None:
    # ESPHome's switches have no default channel: a node that reported one switch (its
    # reading state_relay) takes that one; with two, the data must name one.
    plan = bundled.plan_command("esphome:plug1", "on", "", CORRELATION, None, ["relay"])
    assert plan is not None and plan.topic == "plug1/switch/relay/command"
    with pytest.raises(CommandRefused) as refused:
        bundled.plan_command("esphome:plug1", "on", "", CORRELATION, None, ["a", "b"])
    assert str(refused.value).endswith("; the device has a, b")
    # A default (Tasmota's relay 1) wins over what the device reported.
    plan = bundled.plan_command("tasmota:strip", "on", "", CORRELATION, None, ["2"])
    assert plan is not None and plan.topic == "cmnd/strip/POWER"


def test_shelly_generations_share_uris_but_not_commands(bundled: MappingSet) -> None:
    gen1 = bundled.plan_command("shelly:x", "on", "", CORRELATION, "iot#shelly-gen1")
    gen2 = bundled.plan_command("shelly:x", "on", "", CORRELATION, "iot#shelly-gen2")
    assert gen1 is not None and gen1.topic == "shellies/x/relay/0/command"
    assert gen2 is not None and gen2.topic == "x/rpc"


def test_device_prefix_namespaces_the_bundle(tmp_path: Path) -> None:
    shutil.copy(MAPPINGS / "tasmota.yaml", tmp_path / "tasmota.yaml")
    shutil.copy(MAPPINGS / "zigbee2mqtt.yaml", tmp_path / "zigbee2mqtt.yaml")
    mappings = load_directory(tmp_path, device_prefix="site1")
    outcome = mappings.map("zigbee2mqtt/kitchen/floor_light", b'{"state":"ON"}', RECEIVED)
    assert isinstance(outcome, Mapped) and outcome.device.uri == "site1:z2m:kitchen/floor_light"
    plan = mappings.plan_command("site1:z2m:kitchen/floor_light", "on", "", CORRELATION)
    assert plan is not None and plan.topic == "zigbee2mqtt/kitchen/floor_light/set"
    assert mappings.plan_command("z2m:kitchen/floor_light", "on", "", CORRELATION) is None
