"""The discovery source (issue [8]): reads Tasmota and Home Assistant discovery configs
(never writes them), keeps them in the state directory, and turns them into generated
mapping documents and rules beside the hand-written ones."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter.discovery.generated import DiscoveryError, GeneratedDevice
from adapter.discovery.homeassistant import ha_rules
from adapter.discovery.merge import merge
from adapter.discovery.tasmota import tasmota_rules
from adapter.discovery.zigbee2mqtt import devices_topic, z2m_rules
from adapter.mapping import MappingSet
from adapter.statefile import write_atomically

log = logging.getLogger("adapter.discovery")

# The discovery payloads as they came, by topic: what is kept is the devices' own words,
# so a newer adapter makes its documents from them again (nothing to migrate).
STATE_FILE = "discovery.json"


@dataclass
class DiscoverySource:
    tasmota_prefix: str | None
    ha_prefix: str | None
    state_dir: Path | None = None
    settle: float = 30.0
    z2m_base: str | None = None  # Zigbee2MQTT's base topic: <base>/bridge/devices is read
    payloads: dict[str, str] = field(default_factory=dict)  # discovery topic -> payload
    generated: dict[str, GeneratedDevice] = field(default_factory=dict)  # key -> device
    notes: list[str] = field(default_factory=list)
    _announced: set[str] = field(default_factory=set)  # topics seen since start
    _started: float = field(default_factory=time.monotonic)
    _settled: bool = False
    _removed: list[str] = field(default_factory=list)  # device uris to disconnect

    def __post_init__(self) -> None:
        path = self._state_path
        if path is not None and path.exists():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                self.payloads = {str(k): str(v) for k, v in stored.items() if self.owns(str(k))}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable %s: %s", path, exc)
        for topic in list(self.payloads):
            self._regenerate(topic)
        self._removed.clear()

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.tasmota_prefix, self.ha_prefix, self.z2m_base))

    @property
    def _state_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / STATE_FILE

    def filters(self) -> list[str]:
        filters = []
        if self.tasmota_prefix is not None:
            filters += [f"{self.tasmota_prefix}/+/config", f"{self.tasmota_prefix}/+/sensors"]
        if self.ha_prefix is not None:
            filters += [f"{self.ha_prefix}/+/+/config", f"{self.ha_prefix}/+/+/+/config"]
        if self.z2m_base is not None:
            filters.append(devices_topic(self.z2m_base))
        return filters

    def owns(self, topic: str) -> bool:
        if self.z2m_base is not None and topic == devices_topic(self.z2m_base):
            return True
        if self.tasmota_prefix is not None and topic.startswith(self.tasmota_prefix + "/"):
            rest = topic[len(self.tasmota_prefix) + 1 :].split("/")
            return len(rest) == 2 and rest[1] in ("config", "sensors")
        if self.ha_prefix is not None and topic.startswith(self.ha_prefix + "/"):
            rest = topic[len(self.ha_prefix) + 1 :].split("/")
            return len(rest) in (3, 4) and rest[-1] == "config"
        return False

    # --- messages ------------------------------------------------------------------------

    def take(self, topic: str, payload: bytes) -> bool:
        """A discovery message; True when the generated rules changed."""
        self._announced.add(topic)
        text = payload.decode("utf-8", "replace")
        if self.payloads.get(topic) == text:
            return False
        if text.strip() and _json(text) is None:
            log.warning("discovery message on %s is not JSON; the previous one stays", topic)
            return False
        if text.strip():
            self.payloads[topic] = text
        else:
            self.payloads.pop(topic, None)  # an empty config: the device was removed
        changed = self._regenerate(topic)
        self._save()
        return changed

    def _key(self, topic: str) -> str:
        if self.tasmota_prefix is not None and topic.startswith(self.tasmota_prefix + "/"):
            return topic.rsplit("/", 1)[0] + "/config"  # config and sensors: one device
        return topic

    def _regenerate(self, topic: str) -> bool:
        if self.z2m_base is not None and topic == devices_topic(self.z2m_base):
            return self._regenerate_list(topic)
        key = self._key(topic)
        before = self.generated.get(key)
        try:
            device = self._build(key)
        except DiscoveryError as exc:
            log.warning("discovery message on %s not used: %s", topic, exc)
            device = None
        if device is None:
            self.generated.pop(key, None)
        else:
            self.generated[key] = device
            for problem in device.problems:
                log.warning("discovery %s: %s", key, problem)
        if before is not None and (device is None or not device.rules):
            self._removed += before.device_uris
            log.info("discovered device %s removed (%s)", before.uri, key)
        elif device is not None and before is None:
            log.info("discovered device %s from %s", device.uri, key)
        return before != device

    def _regenerate_list(self, topic: str) -> bool:
        """Zigbee2MQTT's device list: one key per device (`<topic>#<ieee address>`); a
        device that left the list is removed like a removed discovery config."""
        made = {d.key: d for d in z2m_rules(_json(self.payloads.get(topic)), self.z2m_base or "")}
        before = {k: d for k, d in self.generated.items() if k.startswith(topic + "#")}
        for key, device in before.items():
            if key not in made:
                del self.generated[key]
                self._removed += device.device_uris
                log.info("discovered device %s removed (%s)", device.uri, topic)
        for key, device in made.items():
            if key not in before:
                log.info("discovered device %s from %s", device.uri, topic)
            for problem in device.problems:
                log.warning("discovery %s: %s", key, problem)
            self.generated[key] = device
        return made != before

    def _build(self, key: str) -> GeneratedDevice | None:
        if self.tasmota_prefix is not None and key.startswith(self.tasmota_prefix + "/"):
            base = key.rsplit("/", 1)[0]
            mac = base.rsplit("/", 1)[1]
            config = _json(self.payloads.get(base + "/config"))
            sensors = _json(self.payloads.get(base + "/sensors"))
            return tasmota_rules(
                mac,
                config if isinstance(config, dict) else None,
                sensors if isinstance(sensors, dict) else None,
                self.tasmota_prefix,
            )
        payload = _json(self.payloads.get(key))
        assert self.ha_prefix is not None
        return ha_rules(key, payload if isinstance(payload, dict) else None, prefix=self.ha_prefix)

    def _save(self) -> None:
        path = self._state_path
        if path is not None:
            write_atomically(path, json.dumps(self.payloads, indent=1, sort_keys=True))

    def settle_due(self) -> bool:
        """After the settle time: configs stored from an earlier run that were not announced
        again (removed while the adapter was down) are dropped. True when that changed."""
        if self._settled or time.monotonic() - self._started < self.settle:
            return False
        self._settled = True
        stale = [topic for topic in self.payloads if topic not in self._announced]
        for topic in stale:
            log.info("discovery config %s was not announced again: removing it", topic)
            del self.payloads[topic]
            self._regenerate(topic)
        if stale:
            self._save()
        return bool(stale)

    def take_removed(self) -> list[str]:
        removed, self._removed = self._removed, []
        return removed

    def merged(self, hand_written: MappingSet) -> MappingSet:
        if not self.generated:
            self.notes = []
            return hand_written
        mappings, self.notes = merge(hand_written, self.generated.values())
        for note in self.notes:
            log.info("discovery: %s", note)
        return mappings


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
