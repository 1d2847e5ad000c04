"""What the bundled mappings named otherwise before issue [12], and what it is now: the
split device uris (`shelly:<id>/relay/<n>`, `shelly:<id>/switch:<n>`,
`esphome:<node>/<component>/<object>`) that became one device per physical device, and
the readings that were renamed or counted in another unit (a Shelly's energy in Wh is
kWh now). The history, the outbox and the state directory are migrated with it, so an
upgrade loses nothing and an average never mixes units. Pure.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from adapter.mapping.units import PROPERTY_UNITS

# The layout of the devices in the state directory; 2 is one device per physical device.
DEVICE_LAYOUT = 2


class Renamed(NamedTuple):
    """A reading of the history as it is now named: device, name, the factor its stored
    values are multiplied by, and its unit (None: not known)."""

    device: str
    name: str
    factor: float = 1.0
    unit: str | None = None


# A uri: an optional DEVICE_PREFIX ("site1:"), the family, the rest.
_URI = re.compile(r"^(?P<pre>(?:[^:]*:)*?)(?P<family>shelly|esphome|tasmota|z2m):(?P<rest>.*)$")
_SHELLY_RELAY = re.compile(r"^(?P<id>[^/]+)/relay/(?P<n>\d+)$")
_SHELLY_SWITCH = re.compile(r"^(?P<id>[^/]+)/switch:(?P<n>\d+)$")
_ESPHOME_ENTITY = re.compile(r"^(?P<node>[^/]+)/(?P<component>[a-z_]+)/(?P<object>[^/]+)$")
_TASMOTA_RELAY = re.compile(r"^power_state(?:_(?P<n>\d+))?$")

# Old reading name -> (new name, factor, unit): Shelly Gen1 relays counted energy in Wh
# (watt-minutes / 60), Gen2 switches' energy_total was aenergy.total in Wh.
_SHELLY_GEN1: dict[str, tuple[str, float, str | None]] = {
    "power": ("power", 1.0, "W"),
    "energy": ("energy", 1e-3, "kWh"),
    "state": ("state", 1.0, None),
}
_SHELLY_GEN2: dict[str, tuple[str, float, str | None]] = {
    "power": ("power", 1.0, "W"),
    "voltage": ("voltage", 1.0, "V"),
    "current": ("current", 1.0, "A"),
    "energy_total": ("energy", 1e-3, "kWh"),
    "temperature": ("device_temperature", 1.0, "°C"),
    "state": ("state", 1.0, None),
}
# tasmota.yaml's names, and those its discovery made from ENERGY (energy_<field>).
_TASMOTA: dict[str, tuple[str, float, str | None]] = {
    "energy_total": ("energy", 1.0, "kWh"),
    "energy_today": ("energy_today", 1.0, "kWh"),
    "energy_yesterday": ("energy_yesterday", 1.0, "kWh"),
    "power": ("power", 1.0, "W"),
    "voltage": ("voltage", 1.0, "V"),
    "current": ("current", 1.0, "A"),
    "energy_power": ("power", 1.0, "W"),
    "energy_voltage": ("voltage", 1.0, "V"),
    "energy_current": ("current", 1.0, "A"),
    "energy_apparentpower": ("apparent_power", 1.0, "VA"),
    "energy_reactivepower": ("reactive_power", 1.0, "var"),
    "energy_factor": ("power_factor", 1.0, None),
    "energy_frequency": ("frequency", 1.0, "Hz"),
    "dimmer": ("dimmer", 1.0, "%"),
    "signal": ("signal", 1.0, "dBm"),
    "uptime": ("uptime", 1.0, "s"),
}


def device_of(uri: str) -> tuple[str, str] | None:
    """(new uri, channel suffix) of a split device uri of the old layout, else None."""
    found = _URI.match(uri)
    if found is None:
        return None
    pre, family, rest = found["pre"], found["family"], found["rest"]
    if family == "shelly":
        part = _SHELLY_RELAY.match(rest) or _SHELLY_SWITCH.match(rest)
        if part is not None:
            n = part["n"]
            return f"{pre}shelly:{part['id']}", "" if n == "0" else f"_{n}"
    if family == "esphome":
        entity = _ESPHOME_ENTITY.match(rest)
        if entity is not None:
            return f"{pre}esphome:{entity['node']}", ""
    return None


def reading_of(uri: str, name: str) -> Renamed:
    """Where a reading the history stored before [12] belongs now, and its unit."""
    found = _URI.match(uri)
    if found is None:
        return Renamed(uri, name)
    pre, family, rest = found["pre"], found["family"], found["rest"]
    if family == "shelly":
        relay = _SHELLY_RELAY.match(rest)
        switch = _SHELLY_SWITCH.match(rest)
        part = relay or switch
        if part is not None:
            table = _SHELLY_GEN1 if relay is not None else _SHELLY_GEN2
            new, factor, unit = table.get(name, (name, 1.0, None))
            suffix = "" if part["n"] == "0" else f"_{part['n']}"
            return Renamed(f"{pre}shelly:{part['id']}", new + suffix, factor, unit)
        if name == "temperature" and "/" not in rest:  # the Shelly's own, not a sensor's
            return Renamed(uri, "device_temperature", 1.0, "°C")
        return Renamed(uri, name)
    if family == "esphome":
        entity = _ESPHOME_ENTITY.match(rest)
        if entity is None:
            return Renamed(uri, name)
        obj = entity["object"]
        new = f"state_{obj}" if entity["component"] in ("switch", "light") else obj
        return Renamed(f"{pre}esphome:{entity['node']}", new)
    if family == "tasmota":
        relay = _TASMOTA_RELAY.match(name)
        if relay is not None:
            return Renamed(uri, "state" if relay["n"] in (None, "1") else f"state_{relay['n']}")
        new, factor, unit = _TASMOTA.get(name, (name, 1.0, None))
        return Renamed(uri, new, factor, unit)
    return Renamed(uri, name, 1.0, PROPERTY_UNITS.get(name))  # z2m: its property names


def physical_device(
    uri: str, name: str, device_type: str, tags: tuple[tuple[str, str], ...]
) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    """A split device as the bundled files make its physical device: (uri, name, type,
    tags) as `Shelly <id>` or the ESPHome node's name, until its next message says."""
    target = device_of(uri)
    if target is None:
        return uri, name, device_type, tags
    new_uri = target[0]
    plain = new_uri.rsplit(":", 1)[-1]
    if new_uri.startswith("esphome:") or ":esphome:" in new_uri:
        new_type = "iot#esphome-node" if device_type == "iot#esphome-entity" else device_type
        return new_uri, plain, new_type, tuple((k, v) for k, v in tags if k != "node")
    return new_uri, f"Shelly {plain}", device_type, tags
