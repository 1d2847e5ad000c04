"""`compile_document`: a mapping document made by a program (plain dicts and lists, as
discovery makes them) compiles with the validation and the messages of a mapping file,
located at the document's source name instead of `file:line:col`; and `literal` topics."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from adapter.mapping import MappingError, MappingSet, compile_text
from adapter.mapping.compile import compile_document

SOURCE = "homeassistant/sensor/node/temperature/config"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

BROKEN: list[tuple[str, Any, str]] = [
    ("not a mapping", [1, 2], "a mapping file must be a mapping"),
    ("rules not a list", {"rules": {"a": 1}}, "'rules' must be a list"),
    (
        "unknown rule key",
        {"rules": [{"topic": "a/b", "devise": "x"}]},
        "unknown key 'devise' in rule #1",
    ),
    (
        "placeholder not in topic",
        {"rules": [{"topic": "a/{x}", "device": "d:{y}"}]},
        "placeholder {y} is not in topic 'a/{x}'",
    ),
    (
        "bad reading path",
        {"rules": [{"topic": "a", "device": "d", "readings": {"p": "ENERGY..Power"}}]},
        "reading 'p': bad path 'ENERGY..Power'",
    ),
    (
        "literal not a boolean",
        {"rules": [{"topic": "a", "device": "d", "literal": "yes"}]},
        "'literal' takes true or false",
    ),
    (
        "literal topic with a wildcard",
        {"rules": [{"topic": "zigbee2mqtt/+", "literal": True, "device": "d"}]},
        "a topic name must not contain wildcards: 'zigbee2mqtt/+'",
    ),
    (
        "literal topic with braces",
        {"rules": [{"topic": "a/{x}", "literal": True, "device": "d"}]},
        "literal topic 'a/{x}': rules cannot take '{' or '}' literally",
    ),
    (
        "literal topic with NUL",
        {"rules": [{"topic": "a\x00", "literal": True, "device": "d"}]},
        "a topic name must not contain U+0000",
    ),
    (
        "command topic with a wildcard",
        {"commands": [{"service": "on", "device": "d", "publish": {"topic": "c/#"}}]},
        "a topic name must not contain wildcards",
    ),
    (
        "literal command topic with a placeholder",
        {
            "commands": [
                {"service": "on", "device": "d", "literal": True, "publish": {"topic": "c/{id}"}}
            ]
        },
        "rules cannot take '{' or '}' literally",
    ),
    (
        "literal reply topic with a wildcard",
        {
            "commands": [
                {
                    "service": "on",
                    "device": "d",
                    "literal": True,
                    "publish": {"topic": "c"},
                    "reply": {"topic": "r/+"},
                }
            ]
        },
        "a topic name must not contain wildcards: 'r/+'",
    ),
    (
        "qos",
        {"commands": [{"service": "on", "device": "d", "publish": {"topic": "c", "qos": 3}}]},
        "qos must be 0, 1 or 2",
    ),
]


@pytest.mark.parametrize(
    ("document", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_errors_name_the_source_and_read_as_in_a_file(document: Any, message: str) -> None:
    with pytest.raises(MappingError) as from_document:
        compile_document(document, SOURCE)
    assert str(from_document.value).startswith(f"{SOURCE}: "), from_document.value
    assert message in str(from_document.value)
    # The same document as a file: the same words after the location.
    with pytest.raises(MappingError) as from_file:
        compile_text(yaml.safe_dump(document, allow_unicode=True), "m.yaml")
    located = re.fullmatch(r"m\.yaml:\d+:\d+: (.*)", str(from_file.value), re.S)
    assert located is not None, from_file.value
    assert located.group(1) == str(from_document.value).removeprefix(f"{SOURCE}: ")


DOCUMENT: dict[str, Any] = {
    "family": "example",
    "device_type": "iot#example",
    "rules": [
        {
            "id": "plug-sensor",
            "topic": "tele/plug 1/SENSOR",
            "literal": True,
            "device": {"uri": "example:plug 1", "name": "Plug", "tags": {"unit_power": "W"}},
            "readings": {"power": "ENERGY.Power", "pm25": {"path": '"PM2.5"', "scale": 2}},
            "priority": -100,
        },
        {
            "id": "plug-lwt",
            "topic": "tele/plug 1/LWT",
            "literal": True,
            "device": "example:plug 1",
            "payload": "text",
            "availability": {"online": ["Online"], "offline": ["Offline"]},
        },
    ],
    "commands": [
        {
            "id": "plug-on",
            "service": "on",
            "device": "example:plug 1",
            "literal": True,
            "publish": {"topic": "cmnd/plug 1/POWER", "payload": "{data}", "qos": 0},
            "reply": {
                "topic": "stat/plug 1/RESULT",
                "timeout": "2s",
                "match": [{"path": "POWER", "exists": True}],
                "data": "POWER",
            },
        }
    ],
}


def test_a_document_compiles_as_its_file_does() -> None:
    original = copy.deepcopy(DOCUMENT)
    rules, commands = compile_document(DOCUMENT, SOURCE)
    assert original == DOCUMENT  # not changed
    assert {rule.where for rule in rules} | {c.where for c in commands} == {SOURCE}
    file_rules, file_commands = compile_text(
        yaml.safe_dump(DOCUMENT, allow_unicode=True, sort_keys=False), "m.yaml"
    )
    wheres = [r.where for r in file_rules] + [c.where for c in file_commands]
    assert all(re.fullmatch(r"m\.yaml:\d+:3", where) for where in wheres), wheres
    assert rules == [replace(rule, where=SOURCE) for rule in file_rules]
    assert commands == [replace(command, where=SOURCE) for command in file_commands]


def test_literal_topics_are_taken_as_written() -> None:
    rules, commands = compile_document(DOCUMENT, SOURCE)
    sensor = rules[0]
    assert (sensor.pattern.mqtt_filter, sensor.pattern.names) == ("tele/plug 1/SENSOR", ())
    assert (sensor.priority, sensor.primary) == (-100, "power")
    mappings = MappingSet(rules, commands)
    event = mappings.map("tele/plug 1/SENSOR", b'{"ENERGY":{"Power":5},"PM2.5":3}', NOW)
    assert getattr(event, "readings", None) == {"power": 5.0, "pm25": 6.0}
    assert mappings.map("tele/plug 2/SENSOR", b'{"ENERGY":{"Power":5}}', NOW) is None
    plan = mappings.plan_command("example:plug 1", "on", "TOGGLE")
    assert plan is not None
    # A literal command still fills its payload template.
    assert (plan.topic, plan.payload, plan.reply_topic) == (
        "cmnd/plug 1/POWER",
        "TOGGLE",
        "stat/plug 1/RESULT",
    )


def test_a_file_without_literal_reads_placeholders() -> None:
    rules, _ = compile_document(
        {"rules": [{"topic": "tele/{t}/SENSOR", "device": "x:{t}", "literal": False}]}, SOURCE
    )
    assert rules[0].pattern.mqtt_filter == "tele/+/SENSOR"
    assert compile_document(None, SOURCE) == ([], [])
    assert compile_document({"enabled": False, "rules": 5}, SOURCE) == ([], [])
