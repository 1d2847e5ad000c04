"""The mapping schema: errors that point at `file:line:column`, precedence, decoders,
readings, timestamps, device prefixes, tags, commands and replies, `device_types()`."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapter.mapping import (
    AvailabilityChange,
    Mapped,
    MappingError,
    MappingSet,
    Outcome,
    Rejected,
    compile_text,
    load_directory,
)
from adapter.mapping.eventparts import format_time
from adapter.mapping.rules import parse_device_time

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def mapping(text: str, prefix: str = "", filename: str = "m.yaml") -> MappingSet:
    rules, commands = compile_text(text, filename)
    return MappingSet(rules, commands, prefix)


def mapped(outcome: Outcome | None) -> Mapped:
    assert isinstance(outcome, Mapped), outcome
    return outcome


def error_of(text: str, filename: str = "m.yaml") -> str:
    with pytest.raises(MappingError) as caught:
        compile_text(text, filename)
    return str(caught.value)


# --- errors name file:line:column ------------------------------------------------------

RULE = "rules:\n  - id: a\n    topic: t/{x}\n"  # a rule whose keys start in column 5
COMMAND = "commands:\n  - service: 'on'\n    device: 'x:{x}'\n"

ERRORS = [
    ("bad YAML", "rules:\n  - id: a\n    topic: [tele\n", "m.yaml:4:1: invalid YAML"),
    ("tab", "rules:\n  - id: a\n\ttopic: x\n", "m.yaml:3:1: invalid YAML"),
    ("duplicate key", "rules:\n  - id: a\n    id: b\n", "m.yaml:3:5: duplicate key 'id'"),
    ("not a mapping", "- a\n- b\n", "m.yaml:1:1: a mapping file must be a mapping"),
    ("rules not a list", "rules: {a: 1}\n", "m.yaml:1:1: 'rules' must be a list"),
    ("file key", "family: x\nrulez: []\n", "m.yaml:2:1: unknown key 'rulez' in a mapping file"),
    ("rule key", RULE + "    devise: x\n", "m.yaml:4:5: unknown key 'devise' in rule #1"),
    (
        "device key",
        RULE + "    device: {uri: 'x:{x}', nme: b}\n",
        "m.yaml:4:28: unknown key 'nme' in device of rule 'a'",
    ),
    (
        "publish key",
        COMMAND + "    publish: {topic: 'c/{x}', retain: true}\n",
        "m.yaml:4:31: unknown key 'retain' in publish of command 'on'",
    ),
    (
        "reply key",
        COMMAND + "    publish: {topic: 'c/{x}'}\n    reply: {topic: 'r/{x}', wait: 5s}\n",
        "m.yaml:5:29: unknown key 'wait' in reply of command 'on'",
    ),
    (
        "condition key",
        RULE + "    when: {path: a, equalz: 1}\n",
        "m.yaml:4:21: unknown key 'equalz' in condition",
    ),
    ("unquoted on", "commands:\n  - service: on\n", "m.yaml:2:5: 'service' must be text"),
    ("missing topic", "rules:\n  - id: a\n", "m.yaml:2:5: rule #1 needs 'topic'"),
    (
        "invalid filter",
        "rules:\n  - id: a\n    topic: tele/{x}/SENS#R\n",
        "m.yaml:3:5: invalid topic pattern: '#' must be the whole last level",
    ),
    (
        "partial placeholder",
        "rules:\n  - id: a\n    topic: 'x/switch:{n}'\n",
        "m.yaml:3:5: invalid topic pattern: a placeholder must fill a whole level",
    ),
    (
        "bad JMESPath",
        RULE + "    readings:\n      power: ENERGY..Power\n",
        "m.yaml:5:7: reading 'power': bad path 'ENERGY..Power'",
    ),
    (
        "bad condition path",
        RULE + "    when: {path: 'a[', exists: true}\n",
        "m.yaml:4:12: condition path: bad path 'a['",
    ),
    (
        "scale",
        RULE + "    readings:\n      energy: {path: '@', scale: sixty}\n",
        "m.yaml:5:7: reading 'energy': scale must be a finite number",
    ),
    (
        "unknown time zone",
        RULE + "    timestamp: {path: Time, timezone: Mars/Olympus}\n",
        "m.yaml:4:29: unknown time zone 'Mars/Olympus'",
    ),
    (
        "primary not a reading",
        RULE + "    readings: {a: a}\n    primary: b\n",
        "m.yaml:5:5: primary 'b' is not one of the readings",
    ),
    (
        "placeholder not in topic",
        RULE + "    device: {uri: 'x:{y}'}\n",
        "m.yaml:4:14: placeholder {y} is not in topic 't/{x}'",
    ),
    (
        "placeholder in a tag",
        RULE + "    device: {uri: 'x:{x}', tags: {room: '{room}'}}\n",
        "m.yaml:4:28: placeholder {room} is not in topic 't/{x}'",
    ),
    (
        "reserved tag",
        RULE + "    device: {uri: 'x:{x}', tags: {device_name: a}}\n",
        "m.yaml:4:28: tag key 'device_name' is reserved",
    ),
    ("payload kind", RULE + "    payload: xml\n", "m.yaml:4:5: payload must be one of"),
    (
        "raw with readings",
        RULE + "    payload: raw\n    readings: {a: '@'}\n",
        "m.yaml:5:5: a raw payload has no readings",
    ),
    ("priority", RULE + "    priority: high\n", "m.yaml:4:5: priority must be an integer"),
    (
        "availability",
        RULE + "    availability: {online: 'on'}\n",
        "m.yaml:4:19: availability needs 'offline'",
    ),
    (
        "ignore with a device",
        RULE + "    ignore: true\n    device: 'x:{x}'\n",
        "m.yaml:5:5: an ignore rule sends nothing and has no 'device'",
    ),
    ("ignore not a bool", RULE + "    ignore: 1\n", "m.yaml:4:5: 'ignore' takes true or false"),
    (
        "command placeholder",
        COMMAND + "    publish: {topic: 'c/{y}'}\n",
        "m.yaml:4:15: placeholder {y} is neither in device 'x:{x}'",
    ),
    (
        "command device uses {id}",
        "commands:\n  - service: 'on'\n    device: 'shelly:{id}'\n"
        "    publish: {topic: '{id}/rpc'}\n",
        "m.yaml:3:5: placeholder {id} in device 'shelly:{id}' is reserved for the command",
    ),
    (
        "command topic wildcard",
        COMMAND + "    publish: {topic: 'c/+/{x}'}\n",
        "m.yaml:4:15: a topic name must not contain wildcards",
    ),
    ("qos", COMMAND + "    publish: {topic: 'c/{x}', qos: 3}\n", "m.yaml:4:31: qos must be"),
    (
        "timeout",
        COMMAND + "    publish: {topic: 'c/{x}'}\n    reply: {topic: 'r/{x}', timeout: soon}\n",
        "m.yaml:5:29:",
    ),
    (
        "reply topic",
        COMMAND + "    publish: {topic: 'c/{x}'}\n    reply: {topic: 'r/#/{x}'}\n",
        "m.yaml:5:13:",
    ),
]


@pytest.mark.parametrize(("what", "text", "start"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_start_with_file_line_column(what: str, text: str, start: str) -> None:
    message = error_of(text)
    assert message.startswith(start), message
    assert "\n" not in message.split(": ", 1)[0]


def test_duplicate_rule_id_across_two_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  - id: same\n    topic: a/{x}\n")
    (tmp_path / "b.yaml").write_text("family: b\n\nrules:\n  - id: same\n    topic: b/{x}\n")
    with pytest.raises(MappingError) as caught:
        load_directory(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'b.yaml'}:4:5: rule id 'same' is already used at")
    assert f"{tmp_path / 'a.yaml'}:2:5" in message


def test_rules_without_ids_in_two_files_do_not_clash(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  - topic: a/{x}\n")
    (tmp_path / "b.yaml").write_text("rules:\n  - topic: b/{x}\n")
    mappings = load_directory(tmp_path)
    assert [r.id for r in mappings.rules] == ["a-rule-1", "b-rule-1"]


def test_two_equal_overlapping_rules_are_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  - id: one\n    topic: tele/{t}/+\n")
    (tmp_path / "b.yaml").write_text("rules:\n  - id: two\n    topic: +/{t}/SENSOR\n")
    with pytest.raises(MappingError) as caught:
        load_directory(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'b.yaml'}:2:5: rules 'one'")
    assert f"({tmp_path / 'a.yaml'}:2:5)" in message and f"({tmp_path / 'b.yaml'}:2:5)" in message
    assert "both match topics like 'tele/x/SENSOR'" in message and "priority" in message
    # a priority decides it
    (tmp_path / "b.yaml").write_text(
        "rules:\n  - id: two\n    topic: +/{t}/SENSOR\n    priority: 1\n"
    )
    mappings = load_directory(tmp_path)
    assert mapped(mappings.map("tele/k/SENSOR", b"{}", RECEIVED)).rule.id == "two"


def test_disjoint_conditions_and_ignore_pairs_are_no_conflict(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "rules:\n"
        "  - {id: one, topic: 'x/{t}', when: {path: kind, equals: a}}\n"
        "  - {id: two, topic: 'x/{t}', when: {path: kind, equals: b}}\n"
        "  - {id: three, topic: 'y/#', ignore: true}\n"
        "  - {id: four, topic: 'y/{a...}', ignore: true}\n"
    )
    mappings = load_directory(tmp_path)
    assert mappings.conflicts() == []
    assert mapped(mappings.map("x/k", b'{"kind":"b"}', RECEIVED)).rule.id == "two"


def test_disabled_and_empty_files_give_nothing() -> None:
    assert compile_text("", "empty.yaml") == ([], [])
    assert compile_text("enabled: false\nrules:\n  - topic: a/{x}\n", "off.yaml") == ([], [])


def test_load_directory_of_nothing(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="not a directory"):
        load_directory(tmp_path / "missing")
    assert load_directory(tmp_path).rules == []


# --- precedence --------------------------------------------------------------------------

PRECEDENCE = """
rules:
  - {id: generic, topic: "tele/{t}/{kind}", payload: raw}
  - {id: sensor, topic: "tele/{t}/SENSOR", payload: raw}
  - {id: kitchen, topic: "tele/kitchen/SENSOR", payload: raw, device: "t:kitchen"}
  - {id: everything, topic: "tele/#", payload: raw, priority: -1, device: "t:any"}
  - id: loud
    topic: "tele/{t}/SENSOR"
    priority: 5
    when: {path: level, equals: loud}
  - {id: vip, topic: "vip/#", priority: 1, payload: raw, device: "t:vip"}
  - {id: vip-exact, topic: "vip/a/b", payload: raw, device: "t:vip"}
"""


@pytest.mark.parametrize(
    ("topic", "payload", "rule"),
    [
        ("tele/kitchen/SENSOR", b"{}", "kitchen"),  # no wildcard at all
        ("tele/garage/SENSOR", b"{}", "sensor"),  # fewer wildcards
        ("tele/garage/STATE", b"{}", "generic"),
        ("tele/garage", b"{}", "everything"),  # '#' matches the parent level
        ("tele/garage/SENSOR", b'{"level":"loud"}', "loud"),  # priority over specificity
        ("tele/garage/SENSOR", b'{"level":"calm"}', "sensor"),  # `when` falls through
        ("tele/garage/SENSOR", b"not json", "sensor"),  # undecodable: the next candidate
        ("vip/a/b", b"", "vip"),  # priority wins over an exact topic
    ],
)
def test_precedence(topic: str, payload: bytes, rule: str) -> None:
    assert mapped(mapping(PRECEDENCE).map(topic, payload, RECEIVED)).rule.id == rule


def test_candidates_are_ordered_most_specific_first() -> None:
    ids = [rule.id for rule, _ in mapping(PRECEDENCE).candidates("tele/kitchen/SENSOR")]
    assert ids == ["loud", "kitchen", "sensor", "generic", "everything"]


def test_no_rule_means_none_and_a_rejecting_rule_means_rejected() -> None:
    mappings = mapping("rules:\n  - {id: j, topic: 'a/{x}', payload: json}\n")
    assert mappings.map("b/c", b"{}", RECEIVED) is None
    outcome = mappings.map("a/c", b"{nope", RECEIVED)
    assert isinstance(outcome, Rejected)
    assert (outcome.rule.id, outcome.device.uri) == ("j", "c")
    assert outcome.reason.startswith("payload is not JSON")


IGNORE = """
family: t
rules:
  - {id: device, topic: "dev/{name...}"}
  - {id: own-commands, topic: "dev/{name...}/set", ignore: true, priority: 1}
  - id: heartbeat
    topic: "dev/{name...}"
    priority: 1
    ignore: true
    when: {path: heartbeat, exists: true}
  - {id: bridge, topic: "bridge/#", ignore: true}
"""


def test_ignore_rules_drop_their_topics() -> None:
    mappings = mapping(IGNORE)
    assert mappings.map("dev/lamp/set", b'{"state":"ON"}', RECEIVED) is None
    assert mappings.map("dev/lamp/set", b"not json at all", RECEIVED) is None
    assert mappings.map("dev/lamp", b'{"heartbeat": 1}', RECEIVED) is None
    assert mapped(mappings.map("dev/lamp", b'{"state":"ON"}', RECEIVED)).device.uri == "t:lamp"
    # an ignore rule whose condition cannot be tested is no reason to reject
    assert isinstance(mappings.map("dev/lamp", b"nope", RECEIVED), Rejected)
    assert mappings.filters == ["dev/#"]  # ignore rules subscribe to nothing
    assert mappings.device_types() == {"iot#t": frozenset({"sepl_get"})}
    assert not any(rule.forwards for rule in mappings.rules if rule.ignore)


# --- decoders ----------------------------------------------------------------------------


def one_rule(payload: str, readings: str = "{v: '@'}", extra: str = "") -> MappingSet:
    text = f"rules:\n  - id: r\n    topic: 'd/{{x}}'\n    payload: {payload}\n"
    if readings:
        text += f"    readings: {readings}\n"
    return mapping(text + extra)


@pytest.mark.parametrize(
    ("kind", "payload", "reading"),
    [
        ("json", b"23.5", 23.5),
        ("json", b'"23.5"', 23.5),
        ("json", b"true", 1.0),
        ("number", b"23.5", 23.5),
        ("number", b" -4 ", -4.0),
        ("number", b"1e3", 1000.0),
        ("boolean", b"ON", 1.0),
        ("boolean", b"off", 0.0),
        ("boolean", b"true", 1.0),
        ("boolean", b"0", 0.0),
        ("boolean", b"Online", 1.0),
        ("text", b"23.5", 23.5),
        ("text", b"on", 1.0),
        ("text", b"unavailable", None),
    ],
)
def test_decoders(kind: str, payload: bytes, reading: float | None) -> None:
    outcome = mapped(one_rule(kind).map("d/x", payload, RECEIVED))
    assert outcome.readings.get("v") == reading
    assert outcome.data == payload.decode()


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("json", b"{nope", "payload is not JSON"),
        ("json", b"", "payload is not JSON"),
        ("number", b"abc", "payload is not a number"),
        ("number", b"nan", "payload is not a number"),
        ("number", b"inf", "payload is not a number"),
        ("boolean", b"maybe", "payload is not a boolean word"),
        ("text", b"\xff\xfe", "payload is not valid UTF-8"),
        ("json", b"\xff", "payload is not valid UTF-8"),
    ],
)
def test_payloads_a_rule_cannot_decode_are_rejected(kind: str, payload: bytes, reason: str) -> None:
    outcome = one_rule(kind).map("d/x", payload, RECEIVED)
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith(reason)
    assert outcome.device.uri == "x"


def test_raw_payloads_that_are_not_utf8_travel_as_base64() -> None:
    payload = bytes([0x00, 0xFF, 0x10, 0x80])
    outcome = mapped(one_rule("raw", readings="").map("d/x", payload, RECEIVED))
    assert outcome.data == base64.b64encode(payload).decode()
    metadata = json.loads(outcome.metadata)
    assert metadata["encoding"] == "base64"
    assert metadata["readings"] == {} and metadata["primary"] is None
    plain = mapped(one_rule("raw", readings="").map("d/x", b"hello", RECEIVED))
    assert plain.data == "hello" and "encoding" not in json.loads(plain.metadata)


# --- readings ----------------------------------------------------------------------------

READINGS = """
rules:
  - id: r
    topic: "tele/{t}/SENSOR"
    readings:
      power: ENERGY.Power
      current: "ENERGY.Current[0]"
      pm25: 'SDS0X1."PM2.5"'
      temperature: "DS18B20.Temperature || AM2301.Temperature"
      energy: {path: ENERGY.Minutes, scale: 0.016666666666666666}
      milli: {path: ENERGY.Power, scale: 1000}
      switch: Switch1
      flag: Flag
      id_text: DS18B20.Id
      nothing: Nope.Nothing
      listed: ENERGY.Current
      infinite: Big
    primary: temperature
"""


def test_readings_paths_scales_and_missing() -> None:
    payload = {
        "ENERGY": {"Power": 2.5, "Current": [1.32, 2.1], "Minutes": 600},
        "SDS0X1": {"PM2.5": 4.1, "PM10": 6.0},
        "AM2301": {"Temperature": "21.5"},
        "DS18B20": {"Id": "00000566CC39"},
        "Switch1": "ON",
        "Flag": False,
        "Big": 1e400,
    }
    text = json.dumps(payload).replace("Infinity", "1e400")
    outcome = mapped(mapping(READINGS).map("tele/k/SENSOR", text.encode(), RECEIVED))
    assert outcome.readings == pytest.approx(
        {
            "power": 2.5,
            "current": 1.32,  # an index into an array
            "pm25": 4.1,  # a quoted key
            "temperature": 21.5,  # the first that is there; a numeric string
            "energy": 10.0,
            "milli": 2500.0,
            "switch": 1.0,  # ON
            "flag": 0.0,  # false
        }
    )
    assert outcome.missing == ("id_text", "nothing", "listed", "infinite")
    metadata = json.loads(outcome.metadata)
    assert metadata["primary"] == "temperature"
    assert metadata["readings"] == pytest.approx(outcome.readings)


def test_the_primary_is_null_when_its_reading_is_missing() -> None:
    outcome = mapped(mapping(READINGS).map("tele/k/SENSOR", b'{"ENERGY":{}}', RECEIVED))
    assert json.loads(outcome.metadata)["primary"] is None
    assert outcome.readings == {}


def test_the_first_reading_is_the_primary_by_default() -> None:
    mappings = mapping("rules:\n  - {id: r, topic: 'a/{x}', readings: {b: b, a: a}}\n")
    assert mappings.rules[0].primary == "b"


# --- timestamps --------------------------------------------------------------------------


def timestamp_rule(zone: str | None) -> MappingSet:
    stamp = "{path: Time}" if zone is None else f"{{path: Time, timezone: {zone}}}"
    return mapping(f"rules:\n  - id: r\n    topic: 'tele/{{t}}/SENSOR'\n    timestamp: {stamp}\n")


@pytest.mark.parametrize(
    ("zone", "time", "expected"),
    [
        # Tasmota `Time 1`: local time, no offset; the zone says where the device is
        ("Europe/Berlin", "2019-09-04T14:31:29", datetime(2019, 9, 4, 12, 31, 29, tzinfo=UTC)),
        ("Europe/Berlin", "2018-02-15T17:37:10", datetime(2018, 2, 15, 16, 37, 10, tzinfo=UTC)),
        (None, "2019-09-04T14:31:29", datetime(2019, 9, 4, 14, 31, 29, tzinfo=UTC)),
        ("UTC", "2019-09-04T14:31:29", datetime(2019, 9, 4, 14, 31, 29, tzinfo=UTC)),
        # `Time 4`: milliseconds
        (
            "Europe/Berlin",
            "2019-09-04T14:31:29.123",
            datetime(2019, 9, 4, 12, 31, 29, 123000, tzinfo=UTC),
        ),
        # SetOption52: with the offset the zone does not matter
        (
            "America/New_York",
            "2021-06-27T15:03:44+02:00",
            datetime(2021, 6, 27, 13, 3, 44, tzinfo=UTC),
        ),
        ("Europe/Berlin", "2023-12-26T19:10:20Z", datetime(2023, 12, 26, 19, 10, 20, tzinfo=UTC)),
        # `Time 3`: epoch seconds; Shelly ts with fractions; epoch milliseconds
        ("Europe/Berlin", 1567600289, datetime(2019, 9, 4, 12, 31, 29, tzinfo=UTC)),
        ("UTC", 1631186545.04, datetime.fromtimestamp(1631186545.04, UTC)),
        ("UTC", 1567600289123, datetime(2019, 9, 4, 12, 31, 29, 123000, tzinfo=UTC)),
        # the old Tasmota format
        ("UTC", "2018.02.15 01:00:50", datetime(2018, 2, 15, 1, 0, 50, tzinfo=UTC)),
        ("Europe/Berlin", "2018.02.15 01:00:50", datetime(2018, 2, 15, 0, 0, 50, tzinfo=UTC)),
        # unparsable or absent: the receive time
        ("UTC", "soon", RECEIVED),
        ("UTC", "0T18:36:12", RECEIVED),
        ("UTC", True, RECEIVED),
        ("UTC", None, RECEIVED),
        ("UTC", {"a": 1}, RECEIVED),
    ],
)
def test_timestamps(zone: str | None, time: Any, expected: datetime) -> None:
    document: dict[str, Any] = {} if time is None else {"Time": time}
    payload = json.dumps(document).encode()
    outcome = mapped(timestamp_rule(zone).map("tele/k/SENSOR", payload, RECEIVED))
    assert outcome.time == expected
    assert json.loads(outcome.metadata)["time"] == format_time(expected)


def test_metadata_time_is_utc_with_milliseconds() -> None:
    outcome = mapped(timestamp_rule(None).map("tele/k/SENSOR", b"{}", RECEIVED))
    assert json.loads(outcome.metadata)["time"] == "2024-05-01T12:00:00.123Z"


def test_parse_device_time_keeps_the_zone_of_naive_times_only() -> None:
    berlin = timestamp_rule("Europe/Berlin").rules[0].timestamp
    assert berlin is not None
    summer = parse_device_time("2019-07-01T12:00:00", berlin.zone)
    winter = parse_device_time("2019-01-01T12:00:00", berlin.zone)
    assert summer is not None and winter is not None
    assert summer.utcoffset() == timedelta(0) and winter.utcoffset() == timedelta(0)
    assert (summer.hour, winter.hour) == (10, 11)  # CEST, CET


# --- devices: prefix, tags, defaults -----------------------------------------------------

DEVICES = """
family: tasmota
device_type: "iot#tasmota-plug"
rules:
  - id: sensor
    topic: "tele/{topic}/SENSOR"
    device:
      uri: "tasmota:{topic}"
      name: "Tasmota {topic}"
      tags: {"room:{topic}": "a;b:{topic}", vendor: tasmota, " spaced ": " x "}
    readings: {power: ENERGY.Power}
  - id: default-device
    topic: "tele/{topic}/STATE"
    service: state
  - id: typed
    topic: "tele/{topic}/INFO1"
    device_type: "iot#info"
    device: "tasmota:{topic}"
  - id: lwt
    topic: "tele/{topic}/LWT"
    device: "tasmota:{topic}"
    payload: text
    availability: {online: Online, offline: Offline}
commands:
  - id: "on"
    service: "on"
    device: "tasmota:{topic}"
    publish: {topic: "cmnd/{topic}/POWER", payload: "ON"}
  - id: dim
    service: dimmer
    device_type: "iot#light"
    device: "tasmota:{topic}"
    publish: {topic: "cmnd/{topic}/Dimmer", payload: {level: "{data}", raw: "{data_json}"}}
"""


def test_device_prefix_on_uris_and_command_matching() -> None:
    plain = mapping(DEVICES)
    prefixed = mapping(DEVICES, prefix="site1")
    payload = b'{"ENERGY":{"Power":5}}'
    assert mapped(plain.map("tele/k/SENSOR", payload, RECEIVED)).device.uri == "tasmota:k"
    assert mapped(prefixed.map("tele/k/SENSOR", payload, RECEIVED)).device.uri == (
        "site1:tasmota:k"
    )
    change = prefixed.map("tele/k/LWT", b"Offline", RECEIVED)
    assert isinstance(change, AvailabilityChange)
    assert (change.device.uri, change.online) == ("site1:tasmota:k", False)
    plan = prefixed.plan_command("site1:tasmota:k", "on", "")
    assert plan is not None and plan.topic == "cmnd/k/POWER" and plan.values["topic"] == "k"
    assert prefixed.plan_command("tasmota:k", "on", "") is None
    assert prefixed.plan_command("site2:tasmota:k", "on", "") is None
    assert plain.plan_command("site1:tasmota:k", "on", "") is None


def test_tags_are_normalised_without_colon_or_semicolon() -> None:
    outcome = mapped(mapping(DEVICES).map("tele/a:b;c/SENSOR", b"{}", RECEIVED))
    assert outcome.device.uri == "tasmota:a:b;c"  # the uri is not a tag: kept as is
    assert outcome.device.tags == (
        ("room_a_b_c", "a_b_a_b_c"),
        ("vendor", "tasmota"),
        ("spaced", "x"),
    )
    outcome.device.validate()
    assert all(":" not in tag.split(":", 1)[1] for tag in outcome.device.wire_tags)


def test_device_defaults() -> None:
    mappings = mapping(DEVICES)
    state = mapped(mappings.map("tele/k/STATE", b"{}", RECEIVED))
    assert (state.device.uri, state.device.name, state.device.device_type) == (
        "tasmota:k",
        "tasmota:k",
        "iot#tasmota-plug",
    )
    assert state.service == "state"
    info = mapped(mappings.map("tele/k/INFO1", b"{}", RECEIVED))
    assert info.device.device_type == "iot#info" and info.service == "sepl_get"
    generic = mapping("rules:\n  - {id: r, topic: 'x/{dev}/y'}\n")
    outcome = mapped(generic.map("x/d/y", b"{}", RECEIVED))
    assert (outcome.device.uri, outcome.device.device_type) == ("d", "iot#generic")
    with pytest.raises(MappingError, match=r"^m\.yaml:2:5: rule 'r' needs 'device'"):
        compile_text("rules:\n  - {id: r, topic: 'x/y'}\n", "m.yaml")


def test_device_types() -> None:
    assert mapping(DEVICES).device_types() == {
        "iot#tasmota-plug": frozenset({"sepl_get", "state", "on"}),
        "iot#info": frozenset({"sepl_get"}),
        "iot#light": frozenset({"dimmer"}),
    }  # the availability rule makes no service


# --- commands and replies ----------------------------------------------------------------

COMMANDS = """
family: shelly
rules: []
commands:
  - id: rpc
    service: "on"
    device: "shelly:{shelly}/switch:0"
    publish:
      topic: "{shelly}/rpc"
      payload: {id: "{id}", src: me, method: Switch.Set, params: {id: 0, "on": true}}
    reply:
      topic: me/rpc
      timeout: 2s
      match: {path: id, equals: "{id}"}
      data: result
  - id: text
    service: say
    device: "z2m:{name...}"
    publish: {topic: "zigbee2mqtt/{name...}/set", payload: '{"text": {data_json}, "t": "{transaction}"}', qos: 0}
    reply: {topic: "zigbee2mqtt/{name...}", payload: text, match: {path: "@", in: [ok, done]}}
  - id: plain
    service: "say"
    device: "tasmota:{topic}"
    publish: {topic: "cmnd/{topic}/Say"}
"""  # noqa: E501

CORRELATION = {"id": "7", "transaction": "c0ffee01"}


def test_plan_command_fills_templates() -> None:
    mappings = mapping(COMMANDS)
    plan = mappings.plan_command("shelly:plus1-a8/switch:0", "on", "", CORRELATION)
    assert plan is not None
    assert (plan.topic, plan.reply_topic, plan.rule.qos) == ("plus1-a8/rpc", "me/rpc", 1)
    assert json.loads(plan.payload) == {
        "id": "7",  # only text leaves are templates
        "src": "me",
        "method": "Switch.Set",
        "params": {"id": 0, "on": True},
    }
    text = mappings.plan_command("z2m:kitchen/floor_light", "say", 'he said "hi"', CORRELATION)
    assert text is not None and text.topic == "zigbee2mqtt/kitchen/floor_light/set"
    assert json.loads(text.payload) == {"text": 'he said "hi"', "t": "c0ffee01"}
    plain = mappings.plan_command("tasmota:k", "say", "hello", CORRELATION)
    assert plain is not None and (plain.topic, plain.payload) == ("cmnd/k/Say", "hello")
    assert plain.reply_topic is None


@pytest.mark.parametrize(
    ("device", "service"),
    [
        ("shelly:plus1-a8/switch:1", "on"),
        ("tasmota:k", "on"),
        ("nobody:k", "say"),
        ("tasmota:+", "say"),  # the topic would hold a wildcard
        ("tasmota:#", "say"),
        ("z2m:a/+/b", "say"),
        ("tasmota:a\x00b", "say"),
    ],
)
def test_commands_nobody_can_publish_are_not_planned(device: str, service: str) -> None:
    assert mapping(COMMANDS).plan_command(device, service, "x", CORRELATION) is None


def test_reply_data() -> None:
    mappings = mapping(COMMANDS)
    plan = mappings.plan_command("shelly:plus1-a8/switch:0", "on", "", CORRELATION)
    assert plan is not None
    answer = b'{"id":"7","src":"plus1-a8","dst":"me","result":{"was_on":false}}'
    assert MappingSet.reply_data(plan, answer) == '{"was_on": false}'
    assert MappingSet.reply_data(plan, answer.replace(b'"7"', b'"6"')) is None
    assert MappingSet.reply_data(plan, b'{"id":"7","result":"fine"}') == "fine"
    assert MappingSet.reply_data(plan, b"no json") is None
    text = mappings.plan_command("z2m:lamp", "say", "x", CORRELATION)
    assert text is not None
    assert MappingSet.reply_data(text, b"ok") == "ok"  # no data path: the payload as is
    assert MappingSet.reply_data(text, b"busy") is None
    plain = mappings.plan_command("tasmota:k", "say", "x", CORRELATION)
    assert plain is not None and MappingSet.reply_data(plain, b"anything") is None


def test_command_defaults_and_ids() -> None:
    rules, commands = compile_text(
        "commands:\n  - service: 'on'\n    device: 'x:{a}'\n    publish: {topic: 'c/{a}'}\n",
        "dir/plugs.yaml",
    )
    assert rules == []
    (command,) = commands
    assert command.id == "plugs-command-1"
    assert (command.payload, command.qos, command.reply, command.device_type) == (
        "{data}",
        1,
        None,
        "iot#generic",
    )


# --- limits (issue [14], fault 5) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("ENERGY.Power[0] || ENERGY.Power", 2),
        ('"DS18B20-1".Temperature', 0),
        ('params."switch:0".apower', 0),
        ('"a||b(c".d', 0),  # quoted: no level
        ("!a", 1),
        ("a && b || c", 2),
        ("((a))", 2),
        ("a" + "[0]" * 500, 1),  # one after another, not nested
    ],
)
def test_path_depth(text: str, depth: int) -> None:
    from adapter.mapping.compile import path_depth

    assert path_depth(text) == depth


@pytest.mark.parametrize(
    "path",
    ["(" * 40 + "a" + ")" * 40, " || ".join(["a"] * 40), "!" * 40 + "a", " | ".join("a" * 40)],
)
def test_a_path_nested_too_deep_is_an_error_at_its_place(path: str) -> None:
    text = (
        'family: x\ndevice_type: "iot#x"\nrules:\n  - id: x\n    topic: "x/{n}"\n'
        '    device: {uri: "x:{n}", name: "x"}\n    service: s\n    payload: json\n'
        f'    readings: {{t: "{path}"}}\n'
    )
    with pytest.raises(MappingError, match=r"^deep.yaml:9:16: reading 't': path nested \d+ levels"):
        compile_text(text, "deep.yaml")


def test_a_mapping_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from adapter.mapping import load_directory

    (tmp_path / "big.yaml").write_bytes(b"#" * 2000)
    with pytest.raises(
        MappingError, match=r"big.yaml: 2,000 bytes, more than MAPPINGS_MAX_BYTES \(1,000\)"
    ):
        load_directory(tmp_path, max_bytes=1000)
    assert load_directory(tmp_path, max_bytes=2000).rules == []
