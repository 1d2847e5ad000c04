"""What Tasmota's discovery config does not say: the default state texts, the relay kinds
switched with POWER<n>, and the units of the values its sensors JSON holds."""

from __future__ import annotations

from collections.abc import Mapping

STATES = ("OFF", "ON", "TOGGLE", "HOLD")  # `state` entries 0..3 when the config has none
RELAY_TYPES = (1, 2)  # `rl` entries: 1 relay, 2 light; both switched with POWER<n>
SKIPPED = frozenset({"Time", "Epoch"})  # top-level keys of the sensors JSON: no readings
# Units Tasmota does not announce (ENERGY and common sensors, as in its web UI).
ENERGY_UNITS: Mapping[str, str] = {
    "Power": "W",
    "ApparentPower": "VA",
    "ReactivePower": "var",
    "Voltage": "V",
    "Current": "A",
    "Frequency": "Hz",
    "Total": "kWh",
    "TotalTariff": "kWh",
    "Today": "kWh",
    "Yesterday": "kWh",
    "ExportActive": "kWh",
    "ExportTariff": "kWh",
    "ImportActive": "kWh",
    "ImportReactive": "kvarh",
    "ExportReactive": "kvarh",
    "Period": "Wh",
    "PhaseAngle": "°",
}
LEAF_UNITS: Mapping[str, str] = {"Humidity": "%", "Illuminance": "lx", "CarbonDioxide": "ppm"}
