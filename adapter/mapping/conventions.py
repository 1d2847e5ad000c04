"""Family conventions (issue [12]): the readings a family's JSON carries by its documented
layout, named after what they measure and with their units, for the messages whose keys
depend on the device (which sensors a Tasmota has, which components a Shelly Gen2 has).

A rule says `convention: tasmota` or `convention: shelly-gen2` and gets every reading the
message carries; declared `readings` of the same rule win over a convention's. The
discovery of Tasmota names its readings with the same function, so a hand-written rule and
discovery agree. Pure: a decoded JSON document in, `(name, value, unit)` triples out.

Channel suffixes follow the device's own numbering: Tasmota's `POWER2` is `state_2`, its
`DS18B20-2` `temperature_2`; a Shelly's `switch:1` is `state_1` and `power_1`. The first
channel (`POWER`/`POWER1`, `switch:0`, `relay/0`) has no suffix, so a single-channel device
reads `state`, `power`, `energy`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

from adapter.mapping.rules import as_number
from adapter.mapping.units import canonical

# (name, value, unit): a reading a convention found; the value is already converted.
Found = tuple[str, float, str | None]
Convention = Callable[[Any, Mapping[str, str]], list[Found]]


def _number(value: Any, unit: str | None) -> tuple[float, str | None] | None:
    """The value in the unit the adapter reports (kWh, W), or None when not a number."""
    if unit is None:
        number = as_number(value)
        return None if number is None else (number, None)
    reported, factor = canonical(unit)  # cached
    number = as_number(value, factor)
    return None if number is None else (number, reported)


@functools.lru_cache(maxsize=4096)
def snake(text: str) -> str:
    """`ApparentPower` -> `apparent_power`, `PM2.5` -> `pm2_5`, `eCO2` -> `eco2`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def suffixed(name: str, channel: int | str | None) -> str:
    return name if channel is None or channel == "" else f"{name}_{channel}"


# --- Tasmota -----------------------------------------------------------------------------

# ENERGY fields (Sonoff POW, metering plugs, smart meters): name, unit as Tasmota counts
# (docs/devices/Sonoff-Pow.md; hatasmota's sensor table), and whether the channels of an
# array add up to the device's total (power does, voltage does not).
TASMOTA_ENERGY: dict[str, tuple[str, str | None, bool]] = {
    "Total": ("energy", "kWh", True),
    "Today": ("energy_today", "kWh", True),
    "Yesterday": ("energy_yesterday", "kWh", True),
    "Power": ("power", "W", True),
    "ApparentPower": ("apparent_power", "VA", True),
    "ReactivePower": ("reactive_power", "var", True),
    "Factor": ("power_factor", None, False),
    "Voltage": ("voltage", "V", False),
    "Current": ("current", "A", True),
    "Frequency": ("frequency", "Hz", False),
    "ImportActive": ("energy_import", "kWh", True),
    "ExportActive": ("energy_export", "kWh", True),
    "ImportReactive": ("energy_import_reactive", "kvarh", True),
    "ExportReactive": ("energy_export_reactive", "kvarh", True),
    "TotalTariff": ("energy_tariff", "kWh", False),
    "ExportTariff": ("energy_export_tariff", "kWh", False),
    "PhaseAngle": ("phase_angle", "°", False),
    "Period": ("energy_period", "Wh", True),
}
TASMOTA_ENERGY_SKIP = frozenset({"TotalStartTime"})

# Quantities inside a sensor's object (BME280, AM2301, SCD40, DS18B20, ANALOG, ...). A unit
# of None with a unit key: the unit is the message's own (`TempUnit`, `PressureUnit`).
TASMOTA_QUANTITIES: dict[str, tuple[str, str | None]] = {
    "Temperature": ("temperature", "TempUnit"),
    "DewPoint": ("dew_point", "TempUnit"),
    "Humidity": ("humidity", "%"),
    "Pressure": ("pressure", "PressureUnit"),
    "SeaPressure": ("sea_pressure", "PressureUnit"),
    "Illuminance": ("illuminance", "lx"),
    "CarbonDioxide": ("co2", "ppm"),
    "eCO2": ("eco2", "ppm"),  # estimated from VOC (SGP30, CCS811), not measured CO2
    "TVOC": ("voc", "ppb"),
    "Distance": ("distance", "cm"),
    "Gas": ("gas_resistance", "kΩ"),
    "PM1": ("pm1", "µg/m³"),
    "PM2.5": ("pm25", "µg/m³"),
    "PM10": ("pm10", "µg/m³"),
    "UvIndex": ("uv_index", None),
    "Moisture": ("moisture", "%"),
    "Weight": ("weight", "kg"),
    "Voltage": ("voltage", "V"),
    "Current": ("current", "A"),
    "Power": ("power", "W"),
    "Range": ("range", None),
}
TASMOTA_UNIT_KEYS = {"TempUnit": "°C", "PressureUnit": "hPa", "SpeedUnit": "km/h"}
# Top-level keys that are no readings (times, texts, settings echoed in STATE).
TASMOTA_SKIP = frozenset(
    {
        "Time",
        "Epoch",
        "TempUnit",
        "PressureUnit",
        "SpeedUnit",
        "Uptime",
        "Heap",
        "SleepMode",
        "Sleep",
        "LoadAvg",
        "MqttCount",
        "Color",
        "HSBColor",
        "Channel",
        "Scheme",
        "Fade",
        "Speed",
        "LedTable",
        "Berry",
        "Id",
        "Wifi",
    }
)
_TASMOTA_INDEXED = re.compile(r"^(?P<kind>.*?)(?:[-_](?P<index>\d+))?$")
_TASMOTA_POWER = re.compile(r"^POWER(?P<n>[1-8]?)$")
_TASMOTA_SWITCH = re.compile(r"^(?P<kind>Switch|Button)(?P<n>\d+)$")
_TASMOTA_ANALOG = re.compile(r"^A(?P<n>\d+)$")
_TRAILING_INDEX = re.compile(r"^(?P<key>[A-Za-z]+?)(?P<n>\d+)$")


def tasmota(document: Any, values: Mapping[str, str] | None = None) -> list[Found]:
    """Readings of a Tasmota JSON message: `SENSOR`, `STATE`, `RESULT`, and the
    `StatusSNS`/`StatusSTS` answers to `Status 8`/`10`/`11`."""
    found = _Found()
    if not isinstance(document, dict):
        return found.readings
    for wrapper in ("StatusSNS", "StatusSTS"):
        if isinstance(document.get(wrapper), dict):
            document = document[wrapper]
    units = {
        key: canonical(str(document[key]))[0] if isinstance(document.get(key), str) else default
        for key, default in TASMOTA_UNIT_KEYS.items()
    }
    add = found.add
    for key, value in document.items():
        if key in TASMOTA_SKIP:
            continue
        if key == "ENERGY" and isinstance(value, dict):
            _tasmota_energy(value, add)
        elif isinstance(value, dict):
            _tasmota_sensor(key, value, units, add)
        elif key.startswith("POWER") and (power := _TASMOTA_POWER.match(key)) is not None:
            n = power["n"]
            add(suffixed("state", n if n not in ("", "1") else None), value, None)
        elif key == "Dimmer":
            add("dimmer", value, "%")
        elif key == "CT":
            add("color_temp", value, "mired")
        elif key == "UptimeSec":
            add("uptime", value, "s")
        elif (switch := _TASMOTA_SWITCH.match(key)) is not None:
            add(f"{switch['kind'].lower()}_{switch['n']}", value, None)
        # Other numbers at the top are no sensor's (Tasmota puts every sensor in an object
        # of its own): left out rather than guessed at.
    wifi = document.get("Wifi")
    if isinstance(wifi, dict):
        add("rssi", wifi.get("RSSI"), "%")  # Tasmota's RSSI is a quality in %
        add("signal", wifi.get("Signal"), "dBm")
    return found.readings


class _Found:
    """The readings of one message, each name once (a plain list: one per message)."""

    def __init__(self) -> None:
        self.readings: list[Found] = []
        self.taken: set[str] = set()

    def add(self, name: str, value: Any, unit: str | None, kind: str = "") -> None:
        # _number, written out: a call less for each of a message's dozen readings.
        if unit is None:
            number = as_number(value)
        else:
            unit, factor = canonical(unit)  # cached
            number = as_number(value, factor)
        if number is None:
            return
        taken = self.taken
        if name in taken and kind:
            # Two sensors of different kinds measure the same (an AM2301 and a DS18B20):
            # the first keeps the plain name, the next is named after its kind.
            name = f"{name}_{snake(kind)}"
        if name in taken:
            return
        taken.add(name)
        self.readings.append((name, number, unit))


Add = Callable[..., None]


def _tasmota_energy(energy: dict[str, Any], add: Add) -> None:
    for key, value in energy.items():
        if key in TASMOTA_ENERGY_SKIP:
            continue
        known = TASMOTA_ENERGY.get(key)
        name, unit, adds_up = known if known is not None else (snake(key), None, False)
        channels: list[Any] | None = None
        if isinstance(value, list):
            channels = value
        elif isinstance(value, dict):  # {"Phase1": 0.017, "Phase2": 0.017}
            channels = list(value.values())
        if channels is None:
            add(name, value, unit)
            continue
        numbers = [_number(v, unit) for v in channels]
        whole = [n[0] for n in numbers if n is not None]
        if whole and len(whole) == len(numbers) and key not in ("TotalTariff", "ExportTariff"):
            # The device's whole: the sum of what adds up, else the first channel.
            add(name, sum(whole) if adds_up else whole[0], canonical(unit)[0] if unit else None)
        for index, channel in enumerate(channels, start=1):
            add(f"{name}_{index}", channel, unit)


def _tasmota_sensor(sensor: str, body: dict[str, Any], units: dict[str, str], add: Add) -> None:
    match = _TASMOTA_INDEXED.match(sensor)
    kind = match["kind"] if match and match["kind"] else sensor
    index = match["index"] if match else None
    for key, value in body.items():
        if key in ("Id", "Name"):
            continue
        sub_index = index
        base = key
        analog = _TASMOTA_ANALOG.match(key) if kind == "ANALOG" else None
        if analog is not None:
            n = analog["n"]
            add(suffixed("analog", None if n == "0" else n), value, None, kind)
            continue
        trailing = None if key in TASMOTA_QUANTITIES else _TRAILING_INDEX.match(key)
        if trailing is not None and trailing["key"] in TASMOTA_QUANTITIES:
            # ANALOG's "Temperature1", "Illuminance1": the quantity of ADC input 1.
            base, sub_index = trailing["key"], trailing["n"]
        if isinstance(value, dict):  # TX23 {"Speed": {"Act": 12.3, "Avg": ...}}
            for inner, number in value.items():
                unit = units["SpeedUnit"] if key == "Speed" else None
                add(suffixed(f"{snake(key)}_{snake(inner)}", sub_index), number, unit, kind)
            continue
        quantity = TASMOTA_QUANTITIES.get(base)
        name, unit = quantity if quantity is not None else (snake(base), None)
        if unit in units:
            unit = units[unit]
        add(suffixed(name, sub_index), value, unit, kind)


# --- Shelly Gen2+ ------------------------------------------------------------------------

# Per component kind: (path in its status, reading name, unit as the device counts). The
# Switch, Cover, Light, PM1, EM, EM1, Temperature, Humidity, DevicePower and Input pages of
# the Gen2 API docs give the fields and units (energy in Wh, power in W).
_ENERGY_FIELDS: tuple[tuple[str, str, str | None], ...] = (
    ("apower", "power", "W"),
    ("voltage", "voltage", "V"),
    ("current", "current", "A"),
    ("pf", "power_factor", None),
    ("freq", "frequency", "Hz"),
    ("aenergy.total", "energy", "Wh"),
    ("ret_aenergy.total", "energy_returned", "Wh"),
    ("temperature.tC", "device_temperature", "°C"),
)
_EM_PHASES = tuple(
    item
    for phase in "abc"
    for item in (
        (f"{phase}_act_power", f"power_{phase}", "W"),
        (f"{phase}_aprt_power", f"apparent_power_{phase}", "VA"),
        (f"{phase}_voltage", f"voltage_{phase}", "V"),
        (f"{phase}_current", f"current_{phase}", "A"),
        (f"{phase}_pf", f"power_factor_{phase}", None),
        (f"{phase}_freq", f"frequency_{phase}", "Hz"),
        (f"{phase}_total_act_energy", f"energy_{phase}", "Wh"),
        (f"{phase}_total_act_ret_energy", f"energy_returned_{phase}", "Wh"),
    )
)
SHELLY_GEN2: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "switch": (("output", "state", None), *_ENERGY_FIELDS),
    "light": (("output", "state", None), ("brightness", "brightness", "%"), *_ENERGY_FIELDS),
    "cover": (("current_pos", "position", "%"), *_ENERGY_FIELDS),
    "pm1": _ENERGY_FIELDS,
    "em1": (
        ("act_power", "power", "W"),
        ("aprt_power", "apparent_power", "VA"),
        ("voltage", "voltage", "V"),
        ("current", "current", "A"),
        ("pf", "power_factor", None),
        ("freq", "frequency", "Hz"),
    ),
    "em1data": (
        ("total_act_energy", "energy", "Wh"),
        ("total_act_ret_energy", "energy_returned", "Wh"),
    ),
    "em": (
        ("total_act_power", "power", "W"),
        ("total_aprt_power", "apparent_power", "VA"),
        ("total_current", "current", "A"),
        ("n_current", "current_n", "A"),
        *_EM_PHASES,
    ),
    "emdata": (
        ("total_act", "energy", "Wh"),
        ("total_act_ret", "energy_returned", "Wh"),
        *_EM_PHASES,
    ),
    "temperature": (("tC", "temperature", "°C"),),
    "humidity": (("rh", "humidity", "%"),),
    "illuminance": (("lux", "illuminance", "lx"),),
    "voltmeter": (("voltage", "voltage", "V"),),
    "devicepower": (
        ("battery.percent", "battery", "%"),
        ("battery.V", "battery_voltage", "V"),
        ("external.present", "external_power", None),
    ),
    "input": (("state", "input", None), ("percent", "input", "%")),
    "smoke": (("alarm", "smoke", None),),
    "flood": (("alarm", "flood", None),),
    "wifi": (("rssi", "rssi", "dBm"),),
}
_COMPONENT = re.compile(r"^(?P<kind>[a-z0-9]+)(?::(?P<n>\d+))?$")


def _field(status: dict[str, Any], path: str) -> Any:
    value: Any = status
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def shelly_gen2(document: Any, values: Mapping[str, str] | None = None) -> list[Found]:
    """Readings of a Shelly Gen2+ message: a `NotifyStatus`/`NotifyFullStatus` frame (its
    `params`), a component's status on `<id>/status/<component>` (the component named by
    the rule's `{component}` placeholder), or a whole `Shelly.GetStatus` result. Fields a
    partial update leaves out are no readings; `null` (a field gone) neither."""
    readings: list[Found] = []
    if not isinstance(document, dict):
        return readings
    component = (values or {}).get("component")
    if component is not None and "params" not in document:
        statuses: dict[str, Any] = {component: document}
    else:
        params = document.get("params", document)
        statuses = params if isinstance(params, dict) else {}
    for key, status in statuses.items():
        match = _COMPONENT.match(key)
        if match is None or not isinstance(status, dict):
            continue
        fields = SHELLY_GEN2.get(match["kind"])
        if fields is None:
            continue
        n = match["n"]
        channel = None if n in (None, "0") else n
        for path, name, unit in fields:
            converted = _number(_field(status, path), unit)
            if converted is not None:
                readings.append((suffixed(name, channel), converted[0], converted[1]))
    return readings


CONVENTIONS: dict[str, Convention] = {"tasmota": tasmota, "shelly-gen2": shelly_gen2}
