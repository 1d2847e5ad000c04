"""Zero-configuration devices (issue [8]): Tasmota and Home Assistant discovery configs
turned into mapping documents, the data a mapping file holds (docs/mappings.md), which the
mapping compiler turns into rules beside the hand-written ones. See docs/discovery.md.

The parsing is pure (`tasmota`, `homeassistant`, `merge`); `DiscoverySource` subscribes
(read-only), keeps the configs in the state directory and merges. Nothing here publishes.
"""

from __future__ import annotations

from adapter.discovery.generated import (
    DEFAULT_DEVICE_TYPES,
    DISCOVERED_PRIORITY,
    DiscoveryError,
    Document,
    GeneratedDevice,
    reading_name,
)
from adapter.discovery.homeassistant import (
    HA_DISCOVERY_PREFIX,
    expand,
    ha_rules,
    parse_ha_topic,
)
from adapter.discovery.homeassistant_tables import (
    HA_ABBREVIATIONS,
    HA_DEVICE_ABBREVIATIONS,
    HA_ENTITY_ABBREVIATIONS,
    HA_ORIGIN_ABBREVIATIONS,
)
from adapter.discovery.merge import merge
from adapter.discovery.source import STATE_FILE, DiscoverySource
from adapter.discovery.tasmota import TASMOTA_DISCOVERY_PREFIX, tasmota_rules, tasmota_topic
from adapter.discovery.templates import ValueTemplate, parse_template, parse_value_template

__all__ = [
    "DEFAULT_DEVICE_TYPES",
    "DISCOVERED_PRIORITY",
    "HA_ABBREVIATIONS",
    "HA_DEVICE_ABBREVIATIONS",
    "HA_DISCOVERY_PREFIX",
    "HA_ENTITY_ABBREVIATIONS",
    "HA_ORIGIN_ABBREVIATIONS",
    "STATE_FILE",
    "TASMOTA_DISCOVERY_PREFIX",
    "DiscoveryError",
    "DiscoverySource",
    "Document",
    "GeneratedDevice",
    "ValueTemplate",
    "expand",
    "ha_rules",
    "merge",
    "parse_ha_topic",
    "parse_template",
    "parse_value_template",
    "reading_name",
    "tasmota_rules",
    "tasmota_topic",
]
