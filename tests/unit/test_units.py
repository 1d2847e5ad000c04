"""Units of readings: the spellings devices use, energy to kWh and power to W whatever
the device counts in, units read from the message (Tasmota's TempUnit), and the units
in the event's metadata (D10 as amended)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from adapter.mapping import Mapped, MappingError, MappingSet, compile_text
from adapter.mapping.units import canonical, normalise

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "unit", "factor"),
    [
        ("W", "W", 1.0),
        ("kW", "W", 1000.0),
        ("mW", "W", 0.001),
        ("kWh", "kWh", 1.0),
        ("Wh", "kWh", 0.001),
        ("mWh", "kWh", 1e-6),
        ("MWh", "kWh", 1000.0),
        ("Wmin", "kWh", 1 / 60_000),
        ("J", "kWh", 1 / 3_600_000),
        ("C", "°C", 1.0),
        ("F", "°F", 1.0),
        (" °C ", "°C", 1.0),
        ("lux", "lx", 1.0),
        ("mbar", "hPa", 1.0),
        ("ug/m3", "µg/m³", 1.0),
        ("furlongs", "furlongs", 1.0),  # unknown: kept as given, never guessed
    ],
)
def test_units_are_normalised_and_energy_and_power_converted(
    given: str, unit: str, factor: float
) -> None:
    found_unit, found_factor = canonical(given)
    assert found_unit == unit and found_factor == pytest.approx(factor)


def test_milli_and_mega_are_not_confused() -> None:
    assert normalise("mWh") == "mWh" and normalise("MWh") == "MWh"
    assert canonical("mwh") == ("mwh", 1.0)  # an unknown spelling stays what it was


def mapping(readings: str, payload: str = "json") -> MappingSet:
    text = f"""
family: test
device_type: "iot#test"
rules:
  - id: r
    topic: "t/{{d}}"
    device: {{uri: "test:{{d}}"}}
    payload: {payload}
    readings: {readings}
    primary: power
"""
    rules, commands = compile_text(text, "m.yaml")
    return MappingSet(rules, commands)


def mapped(mappings: MappingSet, payload: str) -> Mapped:
    outcome = mappings.map("t/x", payload.encode(), NOW)
    assert isinstance(outcome, Mapped)
    return outcome


def test_declared_units_convert_and_travel_in_the_metadata() -> None:
    m = mapping(
        "{power: {path: apower, unit: kW}, energy: {path: total, unit: Wmin},"
        " voltage: {path: v, unit: V}, count: n}"
    )
    out = mapped(m, '{"apower": 0.085, "total": 600000, "v": 231, "n": 3}')
    assert out.readings == {"power": 85.0, "energy": 10.0, "voltage": 231.0, "count": 3.0}
    assert out.units == {"power": "W", "energy": "kWh", "voltage": "V"}
    metadata = json.loads(out.metadata)
    assert metadata["units"] == {"power": "W", "energy": "kWh", "voltage": "V"}
    assert metadata["readings"]["energy"] == 10.0


def test_scale_and_unit_multiply() -> None:
    m = mapping("{power: {path: p, scale: 0.5, unit: kW}}")
    assert mapped(m, '{"p": 2}').readings == {"power": 1000.0}


def test_a_unit_read_from_the_message() -> None:
    m = mapping("{temperature: {path: T, unit: {path: TempUnit}}, power: {path: P, unit: W}}")
    assert mapped(m, '{"T": 21.5, "TempUnit": "C", "P": 5}').units == {
        "temperature": "°C",
        "power": "W",
    }
    assert mapped(m, '{"T": 70.7, "TempUnit": "F", "P": 5}').units["temperature"] == "°F"
    # No unit in the message: the reading stays, without a unit.
    out = mapped(m, '{"T": 21.5, "P": 5}')
    assert out.readings["temperature"] == 21.5 and "temperature" not in out.units


def test_a_missing_value_is_missing_not_zero() -> None:
    out = mapped(mapping("{power: {path: P, unit: kW}, energy: {path: E, unit: Wh}}"), '{"P": 1}')
    assert out.readings == {"power": 1000.0}
    assert out.missing == ("energy",)
    assert out.units == {"power": "W"}
    assert "energy" not in json.loads(out.metadata)["units"]


def test_no_units_no_units_key() -> None:
    out = mapped(mapping("{power: P}"), '{"P": 1}')
    assert out.units == {} and "units" not in json.loads(out.metadata)


@pytest.mark.parametrize(
    "spec",
    [
        "{power: {path: P, unit: 5}}",
        "{power: {path: P, unit: ''}}",
        "{power: {path: P, unit: {x: 1}}}",
    ],
)
def test_a_bad_unit_is_one_error_with_its_place(spec: str) -> None:
    with pytest.raises(MappingError, match=r"m\.yaml:\d+:\d+: reading 'power': unit must be"):
        mapping(spec)


def test_a_conversion_keeps_finite_numbers_finite() -> None:
    out = mapped(mapping("{power: {path: P, unit: kW}}"), '{"P": 1e306}')
    assert out.readings == {} and out.missing == ("power",)
    assert not any(math.isinf(v) for v in out.readings.values())


def rule_file(extra: str) -> MappingSet:
    text = f"""
family: test
device_type: "iot#test"
rules:
  - id: r
    topic: "t/{{d}}"
    device: {{uri: "test:{{d}}"}}
{extra}
"""
    rules, commands = compile_text(text, "m.yaml")
    return MappingSet(rules, commands)


PLUG = (
    '{"state":"ON","power":85.3,"energy":12.7,"voltage":231,"current":0.37,'
    '"linkquality":120,"child_lock":"UNLOCK","update":{"state":"idle"},'
    '"last_seen":"2026-12-03T12:00:00+01:00","update_available":false,"power_on_behavior":null}'
)


def test_all_readings_takes_every_number_boolean_and_on_off_word() -> None:
    m = rule_file(
        "    all_readings: {exclude: [update_available]}\n    primary: [power, temperature]\n"
    )
    out = mapped(m, PLUG)
    assert out.readings == {
        "state": 1.0,
        "power": 85.3,
        "energy": 12.7,
        "voltage": 231.0,
        "current": 0.37,
        "linkquality": 120.0,
    }
    # No unit for voltage from the name alone: Zigbee2MQTT gives V for plugs, mV for
    # battery devices.
    assert out.units == {"power": "W", "energy": "kWh", "current": "A", "linkquality": "lqi"}
    assert out.primary == "power" and out.missing == ()
    sensor = mapped(m, '{"temperature": 21.5, "humidity": 40, "contact": false}')
    assert sensor.readings == {"temperature": 21.5, "humidity": 40.0, "contact": 0.0}
    assert sensor.units == {"temperature": "°C", "humidity": "%"}
    assert sensor.primary == "temperature"
    assert json.loads(sensor.metadata)["primary"] == "temperature"


def test_declared_readings_win_and_units_and_names_can_be_given() -> None:
    m = rule_file(
        "    readings: {power: {path: power, unit: kW}}\n"
        "    all_readings: {units: {energy: Wh}, names: {illuminance_lux: illuminance}}\n"
    )
    out = mapped(m, '{"power": 0.5, "energy": 1500, "illuminance_lux": 80}')
    assert out.readings == {"power": 500.0, "energy": 1.5, "illuminance": 80.0}
    assert out.units == {"power": "W", "energy": "kWh", "illuminance": "lx"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    all_readings: 5\n", "all_readings must be a mapping"),
        ("    all_readings: {exclude: x}\n", "exclude is a list"),
        ("    all_readings: {units: {a: 1}}\n", "units maps a property name to a text"),
        ("    all_readings: true\n    payload: text\n", "JSON payload"),
        ("    readings: {a: a}\n    primary: [a, b]\n", "primary 'b' is not one of"),
        ('    readings: {a: a}\n    primary: [""]\n', "primary is a reading's name or a list"),
    ],
)
def test_bad_all_readings_and_primaries_are_errors(extra: str, message: str) -> None:
    with pytest.raises(MappingError, match=message):
        rule_file(extra)
