"""Zero-configuration devices: mapping rules generated from Tasmota and Home Assistant
discovery messages (issue [8]). Pure: no I/O.

The caller subscribes (read-only) to `tasmota/discovery/#` and `homeassistant/#`, decodes
the JSON of each retained config, keeps the latest `GeneratedDevice` per discovery topic
(`key`), drops it on an empty payload (the functions return None then), and rebuilds the
mapping set with `merge(hand_written, generated)`. Nothing here publishes anything.

Device identity (shared/sepl-protocol.md D11, docs/discovery.md):

* Tasmota: `tasmota:<t>` (the device's Topic), as `mappings/tasmota.yaml` names it.
* Home Assistant discovery from Zigbee2MQTT: `z2m:<friendly name>`, as
  `mappings/zigbee2mqtt.yaml`; from ESPHome: `esphome:<node>/<component>/<object>` per
  entity (availability on `esphome:<node>`), as `mappings/esphome.yaml`.
* Any other Home Assistant discovery: `ha:device/<device identifier>` (all entities of a
  device are readings of one platform device), or `ha:entity/<unique id>` for an entity
  without a device. The `ha:device/` and `ha:entity/` levels keep these apart from the
  statestream devices `ha:<domain>.<entity>` of `mappings/ha-statestream.yaml`.

Units travel as device tags `unit_<reading>` (the reading names stay stable when a unit
changes). Generated rules have priority -100, below every bundled rule, so a hand-written
rule for the same topic wins; `merge` reports each such override.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from adapter.mapping.compile import compile_path
from adapter.mapping.mappingset import MappingSet
from adapter.mapping.rules import (
    Availability,
    CommandRule,
    Condition,
    DeviceTemplate,
    Path,
    Reading,
    Reply,
    Rule,
    command_regex,
)
from adapter.mapping.yamlsource import MappingError
from adapter.sepl.device import RESERVED_TAG_KEYS, normalise_tag_text
from adapter.topic import TopicError, TopicPattern, placeholders, validate_topic_name

DISCOVERED_PRIORITY = -100
TASMOTA_DISCOVERY_PREFIX = "tasmota/discovery"
HA_DISCOVERY_PREFIX = "homeassistant"
REPLY_TIMEOUT = 5.0
DEFAULT_QOS = 1
# The placeholder type ids of the bundled files, so that a device put by a hand-written
# rule and by a discovered one has the same type. A real platform needs real ids (D11).
DEFAULT_DEVICE_TYPES: Mapping[str, str] = {
    "tasmota": "iot#tasmota-plug",
    "esphome": "iot#esphome-entity",
    "zigbee2mqtt": "iot#zigbee2mqtt-device",
    "homeassistant": "iot#ha-device",
}
MAX_READINGS = 100  # per Tasmota sensors message
MAX_DEPTH = 8  # nesting levels of a Tasmota sensors message that are searched
MAX_TEXT = 200  # characters of a device name, tag or uri part taken from discovery data
MAX_ENTITIES = 256  # components of one device-based discovery message


class DiscoveryError(ValueError):
    """Raised only for a call the caller got wrong: a topic that is no discovery config
    topic, a Tasmota MAC that is not one, a payload of `expand` that is no JSON object.
    Everything wrong *inside* a discovery payload is a `problems` entry instead."""


# --- Home Assistant abbreviations (homeassistant/components/mqtt/abbreviations.py) --------

HA_ENTITY_ABBREVIATIONS: Mapping[str, str] = {
    "act_t": "action_topic",
    "act_tpl": "action_template",
    "atype": "automation_type",
    "aux_cmd_t": "aux_command_topic",
    "aux_stat_tpl": "aux_state_template",
    "aux_stat_t": "aux_state_topic",
    "av_tones": "available_tones",
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "away_mode_cmd_t": "away_mode_command_topic",
    "away_mode_stat_tpl": "away_mode_state_template",
    "away_mode_stat_t": "away_mode_state_topic",
    "b_tpl": "blue_template",
    "bat_lev_t": "battery_level_topic",
    "bat_lev_tpl": "battery_level_template",
    "bri_cmd_t": "brightness_command_topic",
    "bri_cmd_tpl": "brightness_command_template",
    "bri_scl": "brightness_scale",
    "bri_stat_t": "brightness_state_topic",
    "bri_tpl": "brightness_template",
    "bri_val_tpl": "brightness_value_template",
    "chrg_t": "charging_topic",
    "chrg_tpl": "charging_template",
    "cln_t": "cleaning_topic",
    "cln_tpl": "cleaning_template",
    "clr_temp_cmd_t": "color_temp_command_topic",
    "clr_temp_cmd_tpl": "color_temp_command_template",
    "clr_temp_stat_t": "color_temp_state_topic",
    "clr_temp_tpl": "color_temp_template",
    "clr_temp_val_tpl": "color_temp_value_template",
    "clrm": "color_mode",
    "clrm_stat_t": "color_mode_state_topic",
    "clrm_val_tpl": "color_mode_value_template",
    "cmd_off_tpl": "command_off_template",
    "cmd_on_tpl": "command_on_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "cmps": "components",
    "cod_arm_req": "code_arm_required",
    "cod_dis_req": "code_disarm_required",
    "cod_trig_req": "code_trigger_required",
    "curr_temp_t": "current_temperature_topic",
    "curr_temp_tpl": "current_temperature_template",
    "dev": "device",
    "dev_cla": "device_class",
    "dock_t": "docked_topic",
    "dock_tpl": "docked_template",
    "dsp_prc": "suggested_display_precision",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "err_t": "error_topic",
    "err_tpl": "error_template",
    "exp_aft": "expire_after",
    "fan_mode_cmd_t": "fan_mode_command_topic",
    "fan_mode_cmd_tpl": "fan_mode_command_template",
    "fan_mode_stat_t": "fan_mode_state_topic",
    "fan_mode_stat_tpl": "fan_mode_state_template",
    "fanspd_lst": "fan_speed_list",
    "fanspd_t": "fan_speed_topic",
    "fanspd_tpl": "fan_speed_template",
    "flsh_tlng": "flash_time_long",
    "flsh_tsht": "flash_time_short",
    "frc_upd": "force_update",
    "fx_cmd_t": "effect_command_topic",
    "fx_cmd_tpl": "effect_command_template",
    "fx_list": "effect_list",
    "fx_stat_t": "effect_state_topic",
    "fx_tpl": "effect_template",
    "fx_val_tpl": "effect_value_template",
    "g_tpl": "green_template",
    "hold_cmd_t": "hold_command_topic",
    "hold_cmd_tpl": "hold_command_template",
    "hold_stat_t": "hold_state_topic",
    "hold_stat_tpl": "hold_state_template",
    "hs_cmd_t": "hs_command_topic",
    "hs_cmd_tpl": "hs_command_template",
    "hs_stat_t": "hs_state_topic",
    "hs_val_tpl": "hs_value_template",
    "hum_cmd_t": "target_humidity_command_topic",
    "hum_cmd_tpl": "target_humidity_command_template",
    "hum_stat_t": "target_humidity_state_topic",
    "hum_state_tpl": "target_humidity_state_template",
    "ic": "icon",
    "init": "initial",
    "json_attr": "json_attributes",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "l_ver_t": "latest_version_topic",
    "l_ver_tpl": "latest_version_template",
    "lrst_t": "last_reset_topic",
    "lrst_val_tpl": "last_reset_value_template",
    "max": "max",
    "max_hum": "max_humidity",
    "max_mirs": "max_mireds",
    "max_temp": "max_temp",
    "min": "min",
    "min_hum": "min_humidity",
    "min_mirs": "min_mireds",
    "min_temp": "min_temp",
    "mode_cmd_t": "mode_command_topic",
    "mode_cmd_tpl": "mode_command_template",
    "mode_stat_t": "mode_state_topic",
    "mode_stat_tpl": "mode_state_template",
    "modes": "modes",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "on_cmd_type": "on_command_type",
    "ops": "options",
    "opt": "optimistic",
    "osc_cmd_t": "oscillation_command_topic",
    "osc_cmd_tpl": "oscillation_command_template",
    "osc_stat_t": "oscillation_state_topic",
    "osc_val_tpl": "oscillation_value_template",
    "p": "platform",
    "pct_cmd_t": "percentage_command_topic",
    "pct_cmd_tpl": "percentage_command_template",
    "pct_stat_t": "percentage_state_topic",
    "pct_val_tpl": "percentage_value_template",
    "pl": "payload",
    "pl_arm_away": "payload_arm_away",
    "pl_arm_custom_b": "payload_arm_custom_bypass",
    "pl_arm_home": "payload_arm_home",
    "pl_arm_nite": "payload_arm_night",
    "pl_arm_vacation": "payload_arm_vacation",
    "pl_avail": "payload_available",
    "pl_cln_sp": "payload_clean_spot",
    "pl_cls": "payload_close",
    "pl_disarm": "payload_disarm",
    "pl_home": "payload_home",
    "pl_inst": "payload_install",
    "pl_loc": "payload_locate",
    "pl_lock": "payload_lock",
    "pl_not_avail": "payload_not_available",
    "pl_not_home": "payload_not_home",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_open": "payload_open",
    "pl_osc_off": "payload_oscillation_off",
    "pl_osc_on": "payload_oscillation_on",
    "pl_paus": "payload_pause",
    "pl_prs": "payload_press",
    "pl_ret": "payload_return_to_base",
    "pl_rst": "payload_reset",
    "pl_rst_hum": "payload_reset_humidity",
    "pl_rst_mode": "payload_reset_mode",
    "pl_rst_pct": "payload_reset_percentage",
    "pl_rst_pr_mode": "payload_reset_preset_mode",
    "pl_stop": "payload_stop",
    "pl_stpa": "payload_start_pause",
    "pl_strt": "payload_start",
    "pl_toff": "payload_turn_off",
    "pl_ton": "payload_turn_on",
    "pl_trig": "payload_trigger",
    "pl_unlk": "payload_unlock",
    "pos_clsd": "position_closed",
    "pos_open": "position_open",
    "pos_t": "position_topic",
    "pos_tpl": "position_template",
    "pow_cmd_t": "power_command_topic",
    "pow_cmd_tpl": "power_command_template",
    "pr_mode_cmd_t": "preset_mode_command_topic",
    "pr_mode_cmd_tpl": "preset_mode_command_template",
    "pr_mode_stat_t": "preset_mode_state_topic",
    "pr_mode_val_tpl": "preset_mode_value_template",
    "pr_modes": "preset_modes",
    "r_tpl": "red_template",
    "rel_s": "release_summary",
    "rel_u": "release_url",
    "ret": "retain",
    "rgb_cmd_t": "rgb_command_topic",
    "rgb_cmd_tpl": "rgb_command_template",
    "rgb_stat_t": "rgb_state_topic",
    "rgb_val_tpl": "rgb_value_template",
    "rgbw_cmd_t": "rgbw_command_topic",
    "rgbw_cmd_tpl": "rgbw_command_template",
    "rgbw_stat_t": "rgbw_state_topic",
    "rgbw_val_tpl": "rgbw_value_template",
    "rgbww_cmd_t": "rgbww_command_topic",
    "rgbww_cmd_tpl": "rgbww_command_template",
    "rgbww_stat_t": "rgbww_state_topic",
    "rgbww_val_tpl": "rgbww_value_template",
    "send_cmd_t": "send_command_topic",
    "send_if_off": "send_if_off",
    "set_fan_spd_t": "set_fan_speed_topic",
    "set_pos_t": "set_position_topic",
    "set_pos_tpl": "set_position_template",
    "spd_rng_max": "speed_range_max",
    "spd_rng_min": "speed_range_min",
    "src_type": "source_type",
    "stat_cla": "state_class",
    "stat_closing": "state_closing",
    "stat_clsd": "state_closed",
    "stat_locked": "state_locked",
    "stat_off": "state_off",
    "stat_on": "state_on",
    "stat_open": "state_open",
    "stat_opening": "state_opening",
    "stat_stopped": "state_stopped",
    "stat_t": "state_topic",
    "stat_tpl": "state_template",
    "stat_unlocked": "state_unlocked",
    "stat_val_tpl": "state_value_template",
    "step": "step",
    "stype": "subtype",
    "sug_dsp_prc": "suggested_display_precision",
    "sup_clrm": "supported_color_modes",
    "sup_dur": "support_duration",
    "sup_feat": "supported_features",
    "sup_vol": "support_volume_set",
    "swing_mode_cmd_t": "swing_mode_command_topic",
    "swing_mode_cmd_tpl": "swing_mode_command_template",
    "swing_mode_stat_t": "swing_mode_state_topic",
    "swing_mode_stat_tpl": "swing_mode_state_template",
    "t": "topic",
    "temp_cmd_t": "temperature_command_topic",
    "temp_cmd_tpl": "temperature_command_template",
    "temp_hi_cmd_t": "temperature_high_command_topic",
    "temp_hi_cmd_tpl": "temperature_high_command_template",
    "temp_hi_stat_t": "temperature_high_state_topic",
    "temp_hi_stat_tpl": "temperature_high_state_template",
    "temp_lo_cmd_t": "temperature_low_command_topic",
    "temp_lo_cmd_tpl": "temperature_low_command_template",
    "temp_lo_stat_t": "temperature_low_state_topic",
    "temp_lo_stat_tpl": "temperature_low_state_template",
    "temp_stat_t": "temperature_state_topic",
    "temp_stat_tpl": "temperature_state_template",
    "temp_unit": "temperature_unit",
    "tilt_clsd_val": "tilt_closed_value",
    "tilt_cmd_t": "tilt_command_topic",
    "tilt_cmd_tpl": "tilt_command_template",
    "tilt_inv_stat": "tilt_invert_state",
    "tilt_max": "tilt_max",
    "tilt_min": "tilt_min",
    "tilt_opnd_val": "tilt_opened_value",
    "tilt_opt": "tilt_optimistic",
    "tilt_status_t": "tilt_status_topic",
    "tilt_status_tpl": "tilt_status_template",
    "tit": "title",
    "trns": "transition",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "url_t": "url_topic",
    "url_tpl": "url_template",
    "val_tpl": "value_template",
    "whit_cmd_t": "white_command_topic",
    "whit_scl": "white_scale",
    "xy_cmd_t": "xy_command_topic",
    "xy_cmd_tpl": "xy_command_template",
    "xy_stat_t": "xy_state_topic",
    "xy_val_tpl": "xy_value_template",
}
# Keys of the `device` object.
HA_DEVICE_ABBREVIATIONS: Mapping[str, str] = {
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mdl_id": "model_id",
    "mf": "manufacturer",
    "name": "name",
    "sa": "suggested_area",
    "sn": "serial_number",
    "sw": "sw_version",
    "via_device": "via_device",
}
# Keys of the `origin` object.
HA_ORIGIN_ABBREVIATIONS: Mapping[str, str] = {
    "name": "name",
    "sw": "sw_version",
    "url": "support_url",
}
# All of them in one table (no abbreviation means two things). `expand` applies each
# table only where Home Assistant does: the entity table at the top, in `availability`
# entries and in `components`; the device and origin tables inside those objects.
HA_ABBREVIATIONS: Mapping[str, str] = {
    **HA_ENTITY_ABBREVIATIONS,
    **HA_DEVICE_ABBREVIATIONS,
    **HA_ORIGIN_ABBREVIATIONS,
}
TOPIC_BASE = "~"


def _expand_keys(node: Any, table: Mapping[str, str]) -> Any:
    if not isinstance(node, dict):
        return node
    result = dict(node)
    for key in [k for k in node if k in table and table[k] != k]:
        # As Home Assistant: the abbreviated key wins over a full one given as well.
        result[table[key]] = result.pop(key)
    return result


def _expand_entity(payload: Mapping[str, Any], base: str | None) -> dict[str, Any]:
    result: dict[str, Any] = _expand_keys(dict(payload), HA_ENTITY_ABBREVIATIONS)
    if "device" in result:
        result["device"] = _expand_keys(result["device"], HA_DEVICE_ABBREVIATIONS)
    if "origin" in result:
        result["origin"] = _expand_keys(result["origin"], HA_ORIGIN_ABBREVIATIONS)
    availability = result.get("availability")
    if isinstance(availability, dict):
        availability = [availability]
    if isinstance(availability, list):
        result["availability"] = [
            _expand_keys(entry, HA_ENTITY_ABBREVIATIONS) for entry in availability
        ]
    own_base = result.pop(TOPIC_BASE, None)
    if isinstance(own_base, str):
        base = own_base
    if base is not None:
        for key, value in list(result.items()):
            if key.endswith("topic") and isinstance(value, str):
                result[key] = _with_base(value, base)
        for entry in result.get("availability") or ():
            if isinstance(entry, dict) and isinstance(entry.get("topic"), str):
                entry["topic"] = _with_base(entry["topic"], base)
    return result


def _with_base(topic: str, base: str) -> str:
    if topic.startswith(TOPIC_BASE):
        topic = base + topic[1:]
    if topic.endswith(TOPIC_BASE):
        topic = topic[:-1] + base
    return topic


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """A Home Assistant discovery payload with its abbreviated keys expanded (in the
    payload, its `device`, `origin` and `availability` entries, and each of the
    `components` of device-based discovery) and `~` resolved: a value of a key ending in
    `topic` (and an availability entry's `topic`) that starts or ends with `~` has it
    replaced by the `~` value; the `~` key itself is removed. A component's own `~` wins
    over the device's. Returns a new dict; the argument is not changed."""
    if not isinstance(payload, dict):
        raise DiscoveryError("a discovery payload must be a JSON object")
    base = payload.get(TOPIC_BASE)
    base = base if isinstance(base, str) else None
    result = _expand_entity(payload, None)
    components = result.get("components")
    if isinstance(components, dict):
        result["components"] = {
            key: _expand_entity(value, base) if isinstance(value, dict) else value
            for key, value in components.items()
        }
    return result


# --- value templates -----------------------------------------------------------------------

_TEMPLATE = re.compile(r"\{\{-?\s*(?P<expr>.*?)\s*-?\}\}", re.S)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ACCESS = re.compile(
    r"\s*(?:\.\s*(?P<attr>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\[\s*(?:'(?P<sq>[^'\\]*)'|\"(?P<dq>[^\"\\]*)\"|(?P<index>-?\d+))\s*\])"
)
# Filters that do not change a number: `float` (with or without a default), `round`
# (the full precision is forwarded) and `is_defined`. `int` truncates, so it is refused.
_FILTER = re.compile(
    r"\s*\|\s*(?:float(?:\(\s*-?\d+(?:\.\d+)?\s*\))?|round(?:\(\s*\d+\s*\))?|is_defined)"
)


@dataclass(frozen=True)
class ValueTemplate:
    """A value template understood: the path into the payload, and whether the payload
    must be decoded as JSON first (`value_json`) or taken as text (`value`)."""

    path: Path
    json: bool
    keys: tuple[str | int, ...]  # the subscripts after value_json, for reading names


def parse_template(text: Any) -> ValueTemplate | None:
    """`{{ value }}`, `{{ value_json }}`, `{{ value_json.a.b }}`, `{{ value_json['a'] }}`,
    `{{ value_json["PM2.5"] }}`, `{{ value_json.a[0] }}`, with the whitespace-control
    markers `{{-`/`-}}` and the filters `| float`, `| float(0)`, `| round`, `| round(1)`,
    `| is_defined`. Anything else (other filters, arithmetic, conditions, text around the
    braces, escapes in quoted keys) is None: not understood, never guessed."""
    if not isinstance(text, str) or len(text) > 1000:
        return None
    outer = _TEMPLATE.fullmatch(text.strip())
    if outer is None:
        return None
    expr = outer.group("expr")
    keys: list[str | int] = []
    if expr.startswith("value_json"):
        position, is_json = len("value_json"), True
        while True:
            access = _ACCESS.match(expr, position)
            if access is None:
                break
            if access.group("attr") is not None:
                keys.append(access.group("attr"))
            elif access.group("index") is not None:
                keys.append(int(access.group("index")))
            else:
                keys.append(
                    access.group("sq") if access.group("sq") is not None else access.group("dq")
                )
            position = access.end()
    elif expr.startswith("value"):
        position, is_json = len("value"), False
    else:
        return None
    while position < len(expr):
        found = _FILTER.match(expr, position)
        if found is None or found.end() == position:
            return None
        position = found.end()
    if not keys:
        return ValueTemplate(Path("@", None), is_json, ())
    try:
        path = compile_path(_jmespath(keys), "value template", "path")
    except MappingError:
        return None
    return ValueTemplate(path, is_json, tuple(keys))


_RAW = ValueTemplate(Path("@", None), False, ())  # no template: the payload as text


def parse_value_template(text: Any) -> Path | None:
    """The path a value template reads (`@` for `{{ value }}`), or None when the template
    is not one of the forms `parse_template` understands."""
    parsed = parse_template(text)
    return None if parsed is None else parsed.path


def _jmespath(keys: Sequence[str | int]) -> str:
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int):
            parts.append(f"[{key}]")
            continue
        name = key if _IDENT.fullmatch(key) else json.dumps(key)
        parts.append(name if not parts else f".{name}")
    return "".join(parts)


def _literal(value: Any) -> str:
    """A JMESPath literal of a JSON value (backticks escaped)."""
    return "`" + json.dumps(value).replace("`", "\\`") + "`"


def _on_off_path(base: str, on: Any, off: Any) -> Path | None:
    """1 where the value equals `on`, 0 where it equals `off`, nothing otherwise. Text
    payloads compare as text (a number 1 equals "1"), as Home Assistant compares the
    rendered template with payload_on/payload_off."""

    def test(value: Any) -> str:
        if isinstance(value, str):
            return f"to_string({base}) == {_literal(value)}"
        return f"{base} == {_literal(value)}"

    text = f"({test(on)} && `1`) || ({test(off)} && `0`) || `null`"
    try:
        return compile_path(text, "discovery", "on/off path")
    except MappingError:
        return None


# --- names and texts -----------------------------------------------------------------------

_NOT_NAME = re.compile(r"[^a-z0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def reading_name(parts: Iterable[str | int]) -> str:
    """`ENERGY.Power` → `energy_power`, `DS18B20-1.Temperature` → `ds18b20_1_temperature`."""
    words = [_NOT_NAME.sub("_", str(part).lower()).strip("_") for part in parts]
    name = "_".join(word for word in words if word)
    return name[:MAX_TEXT] or "value"


def _text(value: Any) -> str:
    """Discovery text fit for a device name, tag or uri: no control characters, and no
    braces (device templates would read `{x}` as a placeholder)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    text = _CONTROL.sub("", str(value)).replace("{", "(").replace("}", ")")
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    return text.strip()[:MAX_TEXT]


def _topic_problem(topic: Any, what: str) -> str | None:
    """Why a topic from discovery data cannot become a literal rule topic, or None."""
    if not isinstance(topic, str) or not topic:
        return f"{what} is not a topic: {topic!r}"[:300]
    shown = repr(topic[:80])
    try:
        validate_topic_name(topic)
        size = len(topic.encode("utf-8"))
    except TopicError as exc:
        return f"{what} {shown}: {exc}"[:300]
    except UnicodeEncodeError:
        return f"{what} {shown} is not valid UTF-8 text"
    if size > 65535:
        return f"{what} is longer than MQTT allows"
    if "{" in topic or "}" in topic:
        return f"{what} {shown} contains '{{' or '}}', which rules cannot take literally"
    return None


def _payload_problem(payload: Any, what: str) -> str | None:
    if isinstance(payload, str) and placeholders(payload):
        return f"{what} {payload[:80]!r} contains a {{placeholder}}; not sent"
    if not isinstance(payload, str | int | float) or isinstance(payload, bool):
        return f"{what} is not text: {payload!r}"[:300]
    if isinstance(payload, float) and not math.isfinite(payload):
        return f"{what} is not a finite number: {payload!r}"
    try:
        str(payload).encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 text"
    return None


def _tags(pairs: Iterable[tuple[str, Any]]) -> tuple[tuple[str, str], ...]:
    seen: dict[str, str] = {}
    for key, value in pairs:
        k, v = normalise_tag_text(_text(key)), normalise_tag_text(_text(value))
        if k and v and k not in seen and k not in RESERVED_TAG_KEYS:
            seen[k] = v
    return tuple(seen.items())


# --- the result ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedDevice:
    """What one discovery config makes: rules and commands beside the hand-written ones.

    `key` is the discovery topic (`tasmota/discovery/<MAC>/config`,
    `homeassistant/sensor/<node>/<object>/config`); `uri` the device the readings go to
    (without DEVICE_PREFIX; empty when none could be made). `problems` lists what was not
    understood or refused, in words, e.g. `not understood: value_template '{{ ... }}'`."""

    key: str
    uri: str
    family: str
    name: str = ""
    rules: list[Rule] = field(default_factory=list)
    commands: list[CommandRule] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # reading name -> rank for choosing the primary when readings of several discovery
    # configs are joined into one rule (lower first).
    ranks: Mapping[str, int] = field(default_factory=dict)

    @property
    def device_uris(self) -> list[str]:
        """Every device this config makes (ESPHome: the entity and its node)."""
        uris = {self.uri} if self.uri else set()
        uris |= {rule.device.uri for rule in self.rules}
        uris |= {command.device for command in self.commands}
        return sorted(uris)


class _Builder:
    """Collects the rules of one GeneratedDevice with ids `discovered:<key>:<n>`."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.rules: list[Rule] = []
        self.commands: list[CommandRule] = []
        self.problems: list[str] = []
        self.ranks: dict[str, int] = {}

    def _id(self) -> str:
        return f"discovered:{self.key}:{len(self.rules) + len(self.commands) + 1}"

    def rule(
        self,
        where: str,
        topic: str,
        device: DeviceTemplate,
        service: str,
        payload: str,
        readings: Sequence[Reading] = (),
        primary: str | None = None,
        availability: Availability | None = None,
    ) -> None:
        problem = _topic_problem(topic, "topic")
        if problem is None:
            try:
                pattern = TopicPattern.compile(topic)
            except TopicError as exc:
                problem = f"topic {topic[:80]!r}: {exc}"
        if problem is not None:
            self.problems.append(problem)
            return
        if primary is None and readings:
            primary = readings[0].name
        self.rules.append(
            Rule(
                self._id(),
                where,
                pattern,
                device,
                service,
                payload,
                tuple(readings),
                primary,
                DISCOVERED_PRIORITY,
                availability=availability,
            )
        )

    def command(
        self,
        where: str,
        service: str,
        device: DeviceTemplate,
        topic: str,
        payload: Any,
        qos: int,
        reply: Reply | None,
    ) -> None:
        problem = _topic_problem(topic, f"command topic of {service!r}")
        if problem is None and reply is not None:
            problem = _topic_problem(reply.topic, f"reply topic of {service!r}")
        if problem is not None:
            self.problems.append(problem)
            return
        self.commands.append(
            CommandRule(
                self._id(),
                where,
                service,
                device.uri,
                device.device_type,
                topic,
                payload,
                qos,
                reply,
                command_regex(device.uri),
            )
        )

    def result(self, uri: str, family: str, name: str) -> GeneratedDevice:
        return GeneratedDevice(
            self.key,
            uri,
            family,
            name,
            self.rules,
            self.commands,
            self.problems,
            dict(self.ranks),
        )


def _device_types(device_types: Mapping[str, str] | None) -> Mapping[str, str]:
    return {**DEFAULT_DEVICE_TYPES, **(device_types or {})}


# --- Tasmota -------------------------------------------------------------------------------

_TASMOTA_MAC = re.compile(r"[A-Z0-9_-]+")  # hatasmota's TOPIC_MATCHER
_TASMOTA_STATES = ("OFF", "ON", "TOGGLE", "HOLD")
_TASMOTA_RELAY_TYPES = (1, 2)  # 1 relay, 2 light: both switched with POWER<n>
# Units Tasmota does not announce (ENERGY and common sensors, as in its web UI).
_TASMOTA_UNITS = {
    ("ENERGY", "Power"): "W",
    ("ENERGY", "ApparentPower"): "VA",
    ("ENERGY", "ReactivePower"): "var",
    ("ENERGY", "Voltage"): "V",
    ("ENERGY", "Current"): "A",
    ("ENERGY", "Frequency"): "Hz",
    ("ENERGY", "Total"): "kWh",
    ("ENERGY", "TotalTariff"): "kWh",
    ("ENERGY", "Today"): "kWh",
    ("ENERGY", "Yesterday"): "kWh",
    ("ENERGY", "ExportActive"): "kWh",
    ("ENERGY", "ExportTariff"): "kWh",
    ("ENERGY", "ImportActive"): "kWh",
    ("ENERGY", "ImportReactive"): "kvarh",
    ("ENERGY", "ExportReactive"): "kvarh",
    ("ENERGY", "Period"): "Wh",
    ("ENERGY", "PhaseAngle"): "°",
}
_TASMOTA_LEAF_UNITS = {"Humidity": "%", "Illuminance": "lx", "CarbonDioxide": "ppm"}
_TASMOTA_SKIP = frozenset({"Time", "Epoch"})


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
            if not keys and key in _TASMOTA_SKIP:
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


def _tasmota_unit(keys: tuple[str | int, ...], sensors: Mapping[str, Any]) -> str | None:
    names = tuple(k for k in keys if isinstance(k, str))
    if len(names) >= 2 and names[:2] in _TASMOTA_UNITS:
        return _TASMOTA_UNITS[names[0], names[1]]
    last = names[-1] if names else ""
    if last in ("Temperature", "DewPoint"):
        unit = sensors.get("TempUnit")
        return f"°{unit}" if unit in ("C", "F") else None
    if last == "Pressure":
        unit = sensors.get("PressureUnit")
        return unit if isinstance(unit, str) else None
    return _TASMOTA_LEAF_UNITS.get(last)


def tasmota_rules(
    mac: str,
    config: dict[str, Any] | None,
    sensors: dict[str, Any] | None,
    prefix: str = TASMOTA_DISCOVERY_PREFIX,
    *,
    device_types: Mapping[str, str] | None = None,
) -> GeneratedDevice | None:
    """Rules for one Tasmota device from `<prefix>/<MAC>/config` and `<prefix>/<MAC>/sensors`
    (both decoded JSON; `sensors` may be None when not seen yet). None when the config is
    empty or None: the device was removed. `prefix` is the discovery prefix (the key is
    `<prefix>/<MAC>/config`), not DEVICE_PREFIX, which the MappingSet applies. Raises
    DiscoveryError for a MAC hatasmota would not accept (`[A-Z0-9_-]+`)."""
    if not isinstance(mac, str) or not _TASMOTA_MAC.fullmatch(mac):
        raise DiscoveryError(f"not a Tasmota discovery MAC: {str(mac)[:40]!r}")
    key = f"{prefix}/{mac}/config"
    if not config:
        return None
    build = _Builder(key)
    if not isinstance(config, dict):
        build.problems.append("config is not a JSON object")
        return build.result("", "tasmota", "")
    topic = config.get("t")
    if not isinstance(topic, str) or not topic:
        build.problems.append("config has no topic 't'")
        return build.result("", "tasmota", "")
    try:
        topics = [tasmota_topic(config, i) for i in range(3)]
    except (KeyError, TypeError, IndexError) as exc:
        build.problems.append(f"config cannot give the device's topics (ft, tp, t): {exc!r}")
        return build.result("", "tasmota", "")
    cmnd, stat, tele = topics
    types = _device_types(device_types)
    friendly = config.get("fn")
    first_friendly = friendly[0] if isinstance(friendly, list) and friendly else None
    name = _text(config.get("dn")) or _text(first_friendly) or _text(topic)
    uri = f"tasmota:{_text(topic)}"
    model, sw = config.get("md"), config.get("sw")
    tags = _tags(
        [("vendor", "tasmota"), ("model", model), ("mac", config.get("mac", mac)), ("sw", sw)]
    )
    texts = config.get("state")
    states = [
        texts[i]
        if isinstance(texts, list) and len(texts) > i and isinstance(texts[i], str)
        else default
        for i, default in enumerate(_TASMOTA_STATES)
    ]
    device = DeviceTemplate(uri, name, types["tasmota"], tags)

    if sensors is not None:
        _tasmota_sensor_rule(build, prefix, mac, tele, sensors, device)
    relays = config.get("rl")
    relay_indexes = [
        i
        for i, kind in enumerate(relays if isinstance(relays, list) else [])
        if kind in _TASMOTA_RELAY_TYPES and not isinstance(kind, bool)
    ][:32]
    if relays is not None and not isinstance(relays, list):
        build.problems.append("config 'rl' is not a list; no relays")
    if relay_indexes:
        readings = []
        for i in relay_indexes:
            base = "(POWER || POWER1)" if i == 0 else f"POWER{i + 1}"
            name_i = "power_state" if i == 0 else f"power_state_{i + 1}"
            path = _on_off_path(base, states[1], states[0])
            if path is None:
                build.problems.append(f"state texts {states[:2]!r} cannot be compared")
                continue
            readings.append(Reading(name_i, path))
            build.ranks[name_i] = 20
        if readings:
            build.rule(key, tele + "STATE", device, "state", "json", readings)
        for i in relay_indexes:
            match = compile_path("POWER || POWER1" if i == 0 else f"POWER{i + 1}", key, "reply")
            reply = Reply(stat + "RESULT", REPLY_TIMEOUT, (Condition(match, exists=True),))
            suffix = "" if i == 0 else f"_{i + 1}"
            for service, text in (("on", states[1]), ("off", states[0]), ("toggle", states[2])):
                problem = _payload_problem(text, "state text")
                if problem is not None:
                    build.problems.append(problem)
                    continue
                build.command(
                    key,
                    service + suffix,
                    device,
                    f"{cmnd}POWER{i + 1}",
                    text,
                    DEFAULT_QOS,
                    reply,
                )
    online, offline = config.get("onln", "Online"), config.get("ofln", "Offline")
    if isinstance(online, str) and isinstance(offline, str):
        availability = Availability(Path("@", None), (online.strip(),), (offline.strip(),))
        build.rule(key, tele + "LWT", device, "", "text", availability=availability)
    else:
        build.problems.append("config 'onln'/'ofln' are not text; no availability")
    return build.result(uri, "tasmota", name)


def _tasmota_sensor_rule(
    build: _Builder,
    prefix: str,
    mac: str,
    tele: str,
    sensors: Any,
    device: DeviceTemplate,
) -> None:
    where = f"{prefix}/{mac}/sensors"
    document = sensors.get("sn") if isinstance(sensors, dict) else None
    if not isinstance(document, dict):
        build.problems.append(f"{where}: no sensor JSON 'sn'")
        return
    leaves: list[tuple[tuple[str | int, ...], float]] = []
    if not _numeric_leaves(document, (), leaves):
        build.problems.append(
            f"{where}: more than {MAX_READINGS} values or {MAX_DEPTH} levels; the rest is "
            "not forwarded"
        )
    if not leaves:
        build.problems.append(f"{where}: no numbers in the sensor JSON; no SENSOR rule")
        return
    readings: list[Reading] = []
    units: list[tuple[str, str]] = []
    used: set[str] = set()
    primary = None
    temperature = None
    for keys, _ in leaves:
        name = reading_name(keys)
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        try:
            path = compile_path(_jmespath(keys), where, f"reading {name!r}")
        except MappingError:  # not expected: keys are quoted
            build.problems.append(f"{where}: cannot read {reading_name(keys)!r}")
            continue
        readings.append(Reading(name, path))
        unit = _tasmota_unit(keys, document)
        if unit:
            units.append((f"unit_{name}", unit))
        names = [k for k in keys if isinstance(k, str)]
        if primary is None and names[:2] == ["ENERGY", "Power"]:
            primary = name
        if temperature is None and names and names[-1] == "Temperature":
            temperature = name
    primary = primary or temperature or readings[0].name
    sensor_device = replace(device, tags=device.tags + _tags(units))
    build.rule(where, tele + "SENSOR", sensor_device, "sepl_get", "json", readings, primary)


# --- Home Assistant ------------------------------------------------------------------------

_HA_ID = re.compile(r"[a-zA-Z0-9_-]+")
_HA_COMPONENT = re.compile(r"\w+")
_ESPHOME_TOPIC = re.compile(
    r"(?P<node>.+)/(?P<component>[^/]+)/(?P<object>[^/]+)/(?:state|command)"
)
SUPPORTED_COMPONENTS = ("sensor", "binary_sensor", "switch", "light", "number")
_NOT_NUMBERS = frozenset({"timestamp", "date", "enum"})
_CLASS_RANKS = {
    "power": 0,
    "temperature": 1,
    "energy": 2,
    "humidity": 3,
    "pressure": 4,
    "illuminance": 5,
    "voltage": 6,
    "current": 7,
    "battery": 12,
}


@dataclass(frozen=True)
class _Identity:
    family: str
    uri: str
    name: str
    device: DeviceTemplate
    per_entity: bool  # one device per entity (ESPHome), else one per HA device
    availability: DeviceTemplate  # the device the availability topics are of


def parse_ha_topic(topic: str, prefix: str = HA_DISCOVERY_PREFIX) -> tuple[str, str | None, str]:
    """`<prefix>/<component>/[<node_id>/]<object_id>/config` → (component, node_id,
    object_id). Raises DiscoveryError for any other topic."""
    if not isinstance(topic, str) or not topic.startswith(prefix + "/"):
        raise DiscoveryError(f"not a Home Assistant discovery topic: {str(topic)[:80]!r}")
    levels = topic[len(prefix) + 1 :].split("/")
    if len(levels) not in (3, 4) or levels[-1] != "config":
        raise DiscoveryError(f"not a Home Assistant discovery config topic: {topic[:80]!r}")
    component, *ids = levels[:-1]
    if not _HA_COMPONENT.fullmatch(component) or not all(_HA_ID.fullmatch(i) for i in ids):
        raise DiscoveryError(f"discovery topic with characters HA refuses: {topic[:80]!r}")
    return (component, ids[0], ids[1]) if len(ids) == 2 else (component, None, ids[0])


def ha_rules(
    topic: str,
    payload: dict[str, Any] | None,
    *,
    prefix: str = HA_DISCOVERY_PREFIX,
    device_types: Mapping[str, str] | None = None,
) -> GeneratedDevice | None:
    """Rules for one Home Assistant discovery config (`homeassistant/<component>/...
    /config`, or `homeassistant/device/<id>/config` with `cmps`), the payload decoded JSON.
    None when the payload is empty or None: removed. Raises DiscoveryError only for a topic
    that is no discovery config topic; everything else wrong is in `problems`."""
    component, node_id, object_id = parse_ha_topic(topic, prefix)
    if not payload:
        return None
    build = _Builder(topic)
    if not isinstance(payload, dict):
        build.problems.append("payload is not a JSON object")
        return build.result("", "homeassistant", "")
    expanded = expand(payload)
    types = _device_types(device_types)
    entities: list[tuple[str, str, dict[str, Any]]] = []
    if component == "device":
        components = expanded.get("components")
        if not isinstance(components, dict) or not components:
            build.problems.append("device-based discovery without 'cmps'/'components'")
            return build.result("", "homeassistant", "")
        shared = {k: v for k, v in expanded.items() if k != "components"}
        for index, (component_id, config) in enumerate(components.items()):
            if index >= MAX_ENTITIES:
                build.problems.append(f"more than {MAX_ENTITIES} components; the rest ignored")
                break
            if not isinstance(config, dict):
                build.problems.append(f"component {component_id!r} is not an object")
                continue
            platform = config.get("platform")
            if not isinstance(platform, str):
                build.problems.append(f"component {component_id!r} has no platform 'p'")
                continue
            entities.append((platform, str(component_id), {**shared, **config}))
    else:
        entities.append((component, object_id, expanded))
    first: _Identity | None = None
    for platform, entity_id, config in entities:
        identity = _ha_identity(platform, node_id, entity_id, config, types)
        first = first or identity
        _ha_entity(build, platform, entity_id, config, identity)
    if first is None:
        return build.result("", "homeassistant", "")
    return build.result(first.uri, first.family, first.name)


def _ids(device: Mapping[str, Any]) -> list[str]:
    identifiers = device.get("identifiers")
    if isinstance(identifiers, str | int) and not isinstance(identifiers, bool):
        identifiers = [identifiers]
    found = [_text(i) for i in identifiers] if isinstance(identifiers, list) else []
    connections = device.get("connections")
    if isinstance(connections, list):
        for pair in connections:
            if isinstance(pair, list) and len(pair) == 2:
                found.append(_text(f"{_text(pair[0])}_{_text(pair[1])}"))
    return [i for i in found if i]


def _ha_identity(
    component: str,
    node_id: str | None,
    object_id: str,
    config: Mapping[str, Any],
    types: Mapping[str, str],
) -> _Identity:
    device = config.get("device")
    device = device if isinstance(device, dict) else {}
    origin = config.get("origin")
    origin_name = _text(origin.get("name")).lower() if isinstance(origin, dict) else ""
    ids = _ids(device)
    device_name = _text(device.get("name"))
    state_topic = config.get("state_topic")
    command_topic = config.get("command_topic")
    described = [
        ("model", device.get("model")),
        ("manufacturer", device.get("manufacturer")),
    ]
    # Zigbee2MQTT: the device's name is its friendly name, the state topic <base>/<name>.
    if (origin_name == "zigbee2mqtt" or any(i.startswith("zigbee2mqtt_") for i in ids)) and (
        device_name
        and (
            (isinstance(state_topic, str) and state_topic.endswith("/" + device_name))
            or (isinstance(command_topic, str) and f"/{device_name}/set" in command_topic)
        )
    ):
        uri = f"z2m:{device_name}"
        tags = _tags([("family", "zigbee2mqtt"), *described])
        template = DeviceTemplate(uri, device_name, types["zigbee2mqtt"], tags)
        return _Identity("zigbee2mqtt", uri, device_name, template, False, template)
    # ESPHome: <node>/<component>/<object>/state, one device per entity as esphome.yaml.
    sw_version = device.get("sw_version")
    is_esphome = origin_name == "esphome" or (
        isinstance(sw_version, str) and sw_version.lower().startswith("esphome")
    )
    topic = state_topic if isinstance(state_topic, str) else command_topic
    found = _ESPHOME_TOPIC.fullmatch(topic) if is_esphome and isinstance(topic, str) else None
    if found is not None and found.group("component") == component:
        node, obj = _text(found.group("node")), _text(found.group("object"))
        uri = f"esphome:{node}/{component}/{obj}"
        name = f"{node} {obj}"
        tags = _tags([("family", "esphome"), ("node", node), *described])
        node_device = DeviceTemplate(
            f"esphome:{node}", node, types["esphome"], _tags([("family", "esphome")])
        )
        template = DeviceTemplate(uri, name, types["esphome"], tags)
        return _Identity("esphome", uri, name, template, True, node_device)
    # Anything else: one platform device per Home Assistant device.
    if ids:
        uri = f"ha:device/{ids[0]}"
    else:
        unique = _text(config.get("unique_id"))
        discovery_id = f"{node_id}/{object_id}" if node_id else object_id
        uri = f"ha:entity/{unique or _text(discovery_id)}"
    name = device_name or _text(config.get("name")) or uri
    tags = _tags([("family", "homeassistant"), ("origin", origin_name), *described])
    template = DeviceTemplate(uri, name, types["homeassistant"], tags)
    return _Identity("homeassistant", uri, name, template, False, template)


def _ha_entity(
    build: _Builder,
    component: str,
    object_id: str,
    config: Mapping[str, Any],
    identity: _Identity,
) -> None:
    label = f"{component} {object_id!r}"
    if component not in SUPPORTED_COMPONENTS:
        build.problems.append(f"{label}: component {component!r} is not supported")
        return
    _ha_availability(build, label, config, identity)
    device = identity.device
    on_off = component in ("binary_sensor", "switch", "light")
    service = "state" if identity.per_entity and on_off else "sepl_get"
    state = _ha_state(build, label, component, config)
    if state is not None:
        topic, template, on, off = state
        if template.json and template.keys:
            name = reading_name(template.keys)
        else:
            name = reading_name([object_id])
        if identity.per_entity:
            name = "state" if on_off else "value"
        path = template.path if not on_off else _on_off_path(f"({template.path.text})", on, off)
        if path is None:
            build.problems.append(f"{label}: payload_on/payload_off cannot be compared")
            return
        unit = _text(config.get("unit_of_measurement"))
        if unit:
            device = replace(device, tags=device.tags + _tags([(f"unit_{name}", unit)]))
        build.ranks[name] = _rank(component, config)
        kind = "json" if template.json else "text"
        build.rule(build.key, topic, device, service, kind, [Reading(name, path)])
    if component in ("switch", "light", "number"):
        _ha_commands(build, label, component, object_id, config, identity, device, state)


def _rank(component: str, config: Mapping[str, Any]) -> int:
    if component != "sensor":
        return 15 if component == "number" else 20
    if config.get("entity_category") == "diagnostic":
        return 14
    device_class = config.get("device_class")
    return _CLASS_RANKS.get(device_class, 10) if isinstance(device_class, str) else 10


def _ha_state(
    build: _Builder, label: str, component: str, config: Mapping[str, Any]
) -> tuple[str, ValueTemplate, Any, Any] | None:
    """The state topic, its template and the on/off values, or None (reported)."""
    topic = config.get("state_topic")
    if topic is None:
        if component in ("sensor", "binary_sensor"):
            build.problems.append(f"{label}: no state_topic")
        return None
    problem = _topic_problem(topic, f"{label}: state_topic")
    if problem is not None:
        build.problems.append(problem)
        return None
    device_class = config.get("device_class")
    if component == "sensor" and isinstance(device_class, str) and device_class in _NOT_NUMBERS:
        build.problems.append(f"{label}: device class {device_class!r} is not a number; skipped")
        return None
    on: Any = config.get("payload_on", "ON")
    off: Any = config.get("payload_off", "OFF")
    schema = config.get("schema", "default")
    if component == "light" and schema == "json":
        json_state = ValueTemplate(compile_path("state", label, "state"), True, ("state",))
        return topic, json_state, "ON", "OFF"
    if component == "light" and schema not in ("default", "basic"):
        build.problems.append(f"{label}: light schema {schema!r} is not supported")
        return None
    if component == "switch":
        on, off = config.get("state_on", on), config.get("state_off", off)
    key = "state_value_template" if component == "light" else "value_template"
    text = config.get(key)
    template = _RAW if text is None else parse_template(text)
    if template is None:
        build.problems.append(f"{label}: not understood: {key} {str(text)[:120]!r}")
        return None
    for value, what in ((on, "payload_on"), (off, "payload_off")):
        if not isinstance(value, str | int | float | bool) or value is None:
            build.problems.append(f"{label}: {what} is not a value: {value!r}"[:300])
            return None
    return topic, template, on, off


def _ha_availability(
    build: _Builder, label: str, config: Mapping[str, Any], identity: _Identity
) -> None:
    entries: list[Any] = []
    listed = config.get("availability")
    if isinstance(listed, list):
        entries = listed[:8]
    elif listed is not None:
        build.problems.append(f"{label}: availability is not a list")
    topic = config.get("availability_topic")
    if topic is not None:
        entries.append(
            {
                "topic": topic,
                "payload_available": config.get("payload_available", "online"),
                "payload_not_available": config.get("payload_not_available", "offline"),
                "value_template": config.get("availability_template"),
            }
        )
    for entry in entries:
        if not isinstance(entry, dict):
            build.problems.append(f"{label}: availability entry is not an object")
            continue
        problem = _topic_problem(entry.get("topic"), f"{label}: availability topic")
        if problem is not None:
            build.problems.append(problem)
            continue
        text = entry.get("value_template")
        template = _RAW if text is None else parse_template(text)
        if template is None:
            build.problems.append(
                f"{label}: not understood: availability template {str(text)[:120]!r}"
            )
            continue
        online = entry.get("payload_available", "online")
        offline = entry.get("payload_not_available", "offline")
        if not all(isinstance(v, str | int | float | bool) for v in (online, offline)):
            build.problems.append(f"{label}: availability payloads are not values")
            continue
        online = online.strip() if isinstance(online, str) else online
        offline = offline.strip() if isinstance(offline, str) else offline
        availability = Availability(template.path, (online,), (offline,))
        kind = "json" if template.json else "text"
        key = (entry["topic"], kind, identity.availability.uri, _availability_key(availability))
        if any(
            (r.pattern.text, r.payload, r.device.uri, _availability_key(r.availability)) == key
            for r in build.rules
        ):
            continue  # several components of one device-based config share it
        build.rule(
            build.key, entry["topic"], identity.availability, "", kind, availability=availability
        )


def _availability_key(availability: Availability | None) -> tuple[Any, ...]:
    """Availability compared by what it does (Path objects compare by identity)."""
    if availability is None:
        return ()
    return (availability.path.text, availability.online, availability.offline)


def _ha_commands(
    build: _Builder,
    label: str,
    component: str,
    object_id: str,
    config: Mapping[str, Any],
    identity: _Identity,
    device: DeviceTemplate,
    state: tuple[str, ValueTemplate, Any, Any] | None,
) -> None:
    topic = config.get("command_topic")
    if topic is None:
        if component != "number":
            build.problems.append(f"{label}: no command_topic")
        return
    if config.get("command_template") is not None:
        build.problems.append(
            f"{label}: not understood: command_template {str(config['command_template'])[:120]!r}"
        )
        return
    qos = config.get("qos", DEFAULT_QOS)
    qos = qos if qos in (0, 1, 2) and not isinstance(qos, bool) else DEFAULT_QOS
    reply = None
    if state is not None:
        state_topic, template = state[0], state[1]
        if template.json:
            match = (Condition(template.path, exists=True),) if template.keys else ()
            reply = Reply(state_topic, REPLY_TIMEOUT, match, "json", template.path)
        else:
            reply = Reply(state_topic, REPLY_TIMEOUT, (), "text", None)
    suffix = ""
    if not identity.per_entity and object_id != component:
        suffix = "_" + reading_name([object_id])
    if component == "number":
        build.command(build.key, "set" + suffix, device, topic, "{data}", int(qos), reply)
        return
    on = config.get("payload_on", "ON")
    off = config.get("payload_off", "OFF")
    payloads: list[tuple[str, Any]] = [("on", on), ("off", off)]
    if component == "light" and config.get("schema") == "json":
        payloads = [("on", {"state": "ON"}), ("off", {"state": "OFF"})]
    elif identity.family == "esphome" and component == "switch":
        payloads.append(("toggle", "TOGGLE"))  # ESPHome switches take TOGGLE (esphome.yaml)
    for service, payload in payloads:
        problem = (
            None
            if isinstance(payload, dict)
            else _payload_problem(payload, f"{label}: {service} payload")
        )
        if problem is not None:
            build.problems.append(problem)
            continue
        text = payload if isinstance(payload, dict | str) else json.dumps(payload)
        build.command(build.key, service + suffix, device, topic, text, int(qos), reply)


# --- merging with the hand-written rules ---------------------------------------------------


def merge(
    hand_written: MappingSet, generated: Iterable[GeneratedDevice | None]
) -> tuple[MappingSet, list[str]]:
    """A new MappingSet with the hand-written rules and commands and the generated ones,
    and notes in words: which hand-written rule overrides which discovered one, and what
    was dropped because discovered rules contradict each other.

    Rules of several discovery configs for the same topic, device, payload kind and
    service become one rule with all their readings (Zigbee2MQTT announces temperature
    and humidity of one message separately). Every device's name, type and tags are made
    the same across its rules (tags joined), so the device is registered once. A topic
    that discovered rules of different devices claim is kept for the first (by discovery
    topic); an availability topic claimed by several devices (Zigbee2MQTT's
    `bridge/state`) is followed by none, because a message sets one device's state."""
    notes: list[str] = []
    devices: list[GeneratedDevice] = []
    seen_keys: set[str] = set()
    for device in sorted((g for g in generated if g is not None), key=lambda g: g.key):
        if device.key in seen_keys:
            notes.append(f"discovery config {device.key!r} given twice; the first is used")
            continue
        seen_keys.add(device.key)
        devices.append(device)
    taken_ids = {rule.id for rule in hand_written.rules} | {c.id for c in hand_written.commands}
    owned: list[tuple[Rule, GeneratedDevice]] = []
    for device in devices:
        for rule in device.rules:
            if rule.id in taken_ids:
                notes.append(
                    f"discovered rule {rule.id!r} has the id of a hand-written rule; dropped"
                )
            else:
                owned.append((rule, device))
    templates = _unified_templates([rule for rule, _ in owned], notes)
    by_topic: dict[str, list[tuple[Rule, GeneratedDevice]]] = {}
    for rule, device in owned:
        rule = replace(rule, device=templates[rule.device.uri])
        by_topic.setdefault(rule.pattern.text, []).append((rule, device))
    rules: list[Rule] = []
    for topic, members in by_topic.items():
        kept = _settle_topic(topic, members, notes)
        for rule in kept:
            _note_overrides(hand_written, rule, notes)
        rules += kept
    commands = _merge_commands(hand_written, devices, templates, taken_ids, notes)
    merged = MappingSet(
        [*hand_written.rules, *rules],
        [*hand_written.commands, *commands],
        hand_written.prefix,
        list(hand_written.files),
    )
    return merged, notes


def _unified_templates(rules: Sequence[Rule], notes: list[str]) -> dict[str, DeviceTemplate]:
    found: dict[str, DeviceTemplate] = {}
    for rule in rules:
        template = rule.device
        known = found.get(template.uri)
        if known is None:
            found[template.uri] = template
            continue
        if known.device_type != template.device_type:
            notes.append(
                f"device {template.uri!r}: discovered rules give types "
                f"{known.device_type!r} and {template.device_type!r}; the first is used"
            )
        keys = {key for key, _ in known.tags}
        extra = tuple((k, v) for k, v in template.tags if k not in keys)
        if extra:
            found[template.uri] = replace(known, tags=known.tags + extra)
    return found


def _settle_topic(
    topic: str, members: list[tuple[Rule, GeneratedDevice]], notes: list[str]
) -> list[Rule]:
    """The rules to keep for one topic: forwarding rules joined, availability deduplicated,
    contradictions dropped with a note."""
    forwarding: dict[tuple[str, str, str], list[tuple[Rule, GeneratedDevice]]] = {}
    availability: dict[str, list[Rule]] = {}
    for rule, device in members:
        if rule.availability is None:
            key = (rule.device.uri, rule.payload, rule.service)
            forwarding.setdefault(key, []).append((rule, device))
        else:
            availability.setdefault(rule.device.uri, []).append(rule)
    if forwarding:
        groups = list(forwarding.values())
        first = _joined(groups[0], notes)
        for group in groups[1:]:
            notes.append(
                f"discovered rules {first.id!r} ({first.where}) and {group[0][0].id!r} "
                f"({group[0][0].where}) take the same topic {topic!r} for another device, "
                "payload or service; only the first is used"
            )
        for rules in availability.values():
            notes.append(
                f"availability rule {rules[0].id!r} ({rules[0].where}) shares topic {topic!r} "
                f"with discovered rule {first.id!r}; dropped"
            )
        return [first]
    if len(availability) > 1:
        notes.append(
            f"availability topic {topic!r} is announced for {len(availability)} discovered "
            f"devices ({', '.join(sorted(availability))}); a message sets the state of one "
            "device only, so none follows it"
        )
        return []
    rules = next(iter(availability.values()))
    first_key = (rules[0].payload, _availability_key(rules[0].availability))
    for other in rules[1:]:
        if (other.payload, _availability_key(other.availability)) != first_key:
            notes.append(
                f"availability rules {rules[0].id!r} and {other.id!r} read topic {topic!r} "
                "differently; the first is used"
            )
    return [rules[0]]


def _joined(group: list[tuple[Rule, GeneratedDevice]], notes: list[str]) -> Rule:
    first = group[0][0]
    if len(group) == 1:
        return first
    readings: list[Reading] = []
    ranks: list[int] = []
    by_name: dict[str, Reading] = {}
    wheres: list[str] = []
    for rule, device in group:
        if rule.where not in wheres:
            wheres.append(rule.where)
        for reading in rule.readings:
            known = by_name.get(reading.name)
            if known is not None and known.path.text == reading.path.text:
                continue
            name, n = reading.name, 2
            while name in by_name:
                name, n = f"{reading.name}_{n}", n + 1
            if name != reading.name:
                notes.append(
                    f"discovered reading {reading.name!r} of {rule.where} is named {name!r}: "
                    "another config of the device reads something else under that name"
                )
            ranks.append(device.ranks.get(reading.name, 10))
            reading = replace(reading, name=name)
            by_name[name] = reading
            readings.append(reading)
    primary = readings[min(range(len(readings)), key=lambda i: ranks[i])].name if readings else None
    return replace(first, where="; ".join(wheres), readings=tuple(readings), primary=primary)


def _note_overrides(hand_written: MappingSet, rule: Rule, notes: list[str]) -> None:
    topic = rule.pattern.text
    for other, _ in hand_written.candidates(topic):
        if other.specificity < rule.specificity:
            break
        if other.ignore:
            notes.append(
                f"ignore rule {other.id!r} ({other.where}) drops topic {topic!r} of "
                f"discovered rule {rule.id!r} ({rule.where})"
            )
        else:
            notes.append(
                f"rule {other.id!r} ({other.where}) overrides discovered rule {rule.id!r} "
                f"({rule.where}) on topic {topic!r}"
                + (" when its conditions hold" if other.when else "")
            )
        if not other.when:
            break


def _merge_commands(
    hand_written: MappingSet,
    devices: Sequence[GeneratedDevice],
    templates: Mapping[str, DeviceTemplate],
    taken_ids: set[str],
    notes: list[str],
) -> list[CommandRule]:
    result: list[CommandRule] = []
    seen: dict[tuple[str, str], CommandRule] = {}
    for device in devices:
        for command in device.commands:
            if command.id in taken_ids:
                notes.append(
                    f"discovered command {command.id!r} has the id of a hand-written one; dropped"
                )
                continue
            known = seen.get((command.device, command.service))
            if known is not None:
                notes.append(
                    f"discovered commands {known.id!r} ({known.where}) and {command.id!r} "
                    f"({command.where}) are both {command.service!r} of {command.device!r}; "
                    "only the first is used"
                )
                continue
            template = templates.get(command.device)
            if template is not None and template.device_type != command.device_type:
                command = replace(command, device_type=template.device_type)
            seen[command.device, command.service] = command
            for other in hand_written.commands:
                if (
                    other.service == command.service
                    and other.device_values(command.device, "") is not None
                ):
                    notes.append(
                        f"command {other.id!r} ({other.where}) overrides discovered command "
                        f"{command.id!r} ({command.where}): {command.service!r} of "
                        f"{command.device!r}"
                    )
                    break
            result.append(command)
    return result


__all__ = [
    "DEFAULT_DEVICE_TYPES",
    "DISCOVERED_PRIORITY",
    "HA_ABBREVIATIONS",
    "HA_DEVICE_ABBREVIATIONS",
    "HA_ENTITY_ABBREVIATIONS",
    "HA_ORIGIN_ABBREVIATIONS",
    "DiscoveryError",
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
