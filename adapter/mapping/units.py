"""Units of readings (issue [12], D10 as amended): the spellings devices use, and the
conversions that make every energy reading kWh and every power reading W, whatever the
device counts in. A unit this module does not know is kept as given, never guessed.
Pure."""

from __future__ import annotations

import functools

# What devices and discovery data write -> the symbol the adapter reports.
ALIASES: dict[str, str] = {
    "C": "°C",
    "°C": "°C",
    "degC": "°C",
    "celsius": "°C",
    "F": "°F",
    "°F": "°F",
    "degF": "°F",
    "fahrenheit": "°F",
    "K": "K",
    "W": "W",
    "w": "W",
    "kW": "kW",
    "mW": "mW",
    "Wh": "Wh",
    "kWh": "kWh",
    "MWh": "MWh",
    "mWh": "mWh",
    "Wmin": "Wmin",
    "W·min": "Wmin",
    "J": "J",
    "V": "V",
    "mV": "mV",
    "A": "A",
    "mA": "mA",
    "VA": "VA",
    "var": "var",
    "VAr": "var",
    "Hz": "Hz",
    "%": "%",
    "lx": "lx",
    "lux": "lx",
    "ppm": "ppm",
    "ppb": "ppb",
    "hPa": "hPa",
    "Pa": "Pa",
    "mbar": "hPa",
    "µg/m³": "µg/m³",
    "ug/m3": "µg/m³",
    "µg/m3": "µg/m³",
    "dBm": "dBm",
    "lqi": "lqi",
    "s": "s",
    "km/h": "km/h",
    "m/s": "m/s",
    "mm": "mm",
    "m³": "m³",
    "m3": "m³",
    "L": "L",
    "l": "L",
}

# Reported unit -> (the unit it becomes, the factor that converts it).
CONVERSIONS: dict[str, tuple[str, float]] = {
    "Wh": ("kWh", 1e-3),
    "mWh": ("kWh", 1e-6),
    "MWh": ("kWh", 1e3),
    "Wmin": ("kWh", 1 / 60_000),  # Shelly Gen1 relays count watt-minutes
    "J": ("kWh", 1 / 3_600_000),
    "kW": ("W", 1e3),
    "mW": ("W", 1e-3),
}


def normalise(text: str) -> str:
    """The adapter's symbol for a unit as a device writes it; unknown ones as given."""
    stripped = text.strip()
    # Exact spellings only: lower-casing would take mWh (milli) for MWh (mega).
    return ALIASES.get(stripped, stripped)


@functools.lru_cache(maxsize=1024)
def canonical(text: str) -> tuple[str, float]:
    """(unit, factor): the unit a reading given in `text` is reported in, and the factor
    that converts its numbers; (text normalised, 1.0) when no conversion applies."""
    unit = normalise(text)
    return CONVERSIONS.get(unit, (unit, 1.0))


# The units of properties that name what they measure, for rules that take every number of
# a message (`all_readings`): Zigbee2MQTT's property names and the unit its exposes give
# them for every device that has them.
PROPERTY_UNITS: dict[str, str] = {
    "temperature": "°C",
    "local_temperature": "°C",
    "device_temperature": "°C",
    "current_heating_setpoint": "°C",
    "occupied_heating_setpoint": "°C",
    "humidity": "%",
    "soil_moisture": "%",
    "pressure": "hPa",
    "power": "W",
    "energy": "kWh",
    # not voltage: Zigbee2MQTT reports a plug's in V and a battery device's in mV; its
    # exposes (bridge/devices) say which
    "current": "A",
    "battery": "%",
    "illuminance": "lx",
    "illuminance_lux": "lx",
    "co2": "ppm",
    "voc": "ppb",
    "pm25": "µg/m³",
    "pm10": "µg/m³",
    "formaldehyd": "mg/m³",
    "linkquality": "lqi",
    "position": "%",
    "pi_heating_demand": "%",
    "valve_position": "%",
    "color_temp": "mired",
    "noise": "dB",
    "frequency": "Hz",
}
