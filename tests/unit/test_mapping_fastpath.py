"""The fast paths of mapping a message give exactly what the plain code gives.

Compiled paths (adapter.mapping.paths) against jmespath itself, over random documents, for
every path of the bundled mapping files and for random expressions of the compiled subset;
as_number, format_time, to_millis and event_metadata against their former
implementations (kept below as references); and MappingSet.map, message by message,
against a reference built from jmespath and those references.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapter.mapping import (
    AvailabilityChange,
    Mapped,
    MappingSet,
    Rejected,
    compile_text,
    eventparts,
)
from adapter.mapping import rules as rules_module
from adapter.mapping.compile import compile_path
from adapter.mapping.conventions import CONVENTIONS
from adapter.mapping.eventparts import (
    event_metadata,
    format_time,
    millis_timestamp,
    payload_text,
    to_millis,
)
from adapter.mapping.paths import compile_search, is_false
from adapter.mapping.rules import DecodeError, Rule, as_number, decode_payload
from adapter.mapping.units import PROPERTY_UNITS, canonical
from adapter.topic import placeholders, render_template, template_regex

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no .hypothesis directory in the repository
        suppress_health_check=list(HealthCheck),
    )


# --- the former implementations, as references ------------------------------------------


def reference_as_number(value: Any, scale: float = 1.0) -> float | None:
    if isinstance(value, bool):
        number = 1.0 if value else 0.0
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in ("on", "true"):
            number = 1.0
        elif word in ("off", "false"):
            number = 0.0
        else:
            try:
                number = float(word)
            except ValueError:
                return None
    else:
        return None
    if not math.isfinite(number) or not math.isfinite(number * scale):
        return None
    return number * scale


def reference_format_time(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def reference_to_millis(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def reference_metadata(
    time: datetime,
    topic: Any,
    readings: Any,
    primary: Any,
    encoding: Any = None,
    units: Any = None,
) -> str:
    body: dict[str, Any] = {
        "time": reference_format_time(time),
        "topic": topic,
        "readings": dict(readings),
        "primary": primary,
    }
    if units:
        body["units"] = dict(units)
    if encoding:
        body["encoding"] = encoding
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def reference_search(text: str, document: Any) -> Any:
    """What Path.search gave before paths were compiled."""
    if text == "@":
        return document
    try:
        return jmespath.search(text, document)
    except Exception:  # the former Path.search: jmespath's errors are a missing value
        return None


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1, 1.0 and True are all ==)."""
    return type(a) is type(b) and repr(a) == repr(b)


# --- the paths of the bundled files --------------------------------------------------------


def bundled_rules() -> Iterator[tuple[list[Rule], list[rules_module.CommandRule]]]:
    for path in sorted(MAPPINGS.glob("*.yaml")):
        # Disabled files too, enabled as test_bundled_mappings does.
        text = path.read_text(encoding="utf-8").replace("\nenabled: false\n", "\nenabled: true \n")
        yield compile_text(text, path.name)


def bundled_paths() -> list[str]:
    texts: set[str] = set()
    for rules, commands in bundled_rules():
        for rule in rules:
            paths = [c.path for c in rule.when] + [r.path for r in rule.readings]
            if rule.timestamp is not None:
                paths.append(rule.timestamp.path)
            if rule.availability is not None:
                paths.append(rule.availability.path)
            texts.update(p.text for p in paths)
        for command in commands:
            if command.reply is not None:
                texts.update(c.path.text for c in command.reply.match)
                if command.reply.data is not None:
                    texts.add(command.reply.data.text)
    return sorted(texts)


BUNDLED_PATHS = bundled_paths()
# Expressions of the subset beyond those files (discovery makes `a[0]."b-c"` ones), and a
# few the subset leaves to jmespath.
MORE_PATHS = [
    "a[-1]",
    "a[0][1].b",
    '"a-b"[0]."c d"',
    "a || b[0] || `0`",
    "(a || b).c",
    "(a || b)[-1]",
    "a.b || a.c || a",
    "a && b",
    "!a",
    "!a.b || `false`",
    "a | b[0]",
    "@",
    "a | @",
    "`[]` || a",
    '`{"x": 1}`.x',
    'a.b && (c || `""`)',
]
FALLBACK_PATHS = ["a[*].b", "a[?b == `1`]", "length(a)", "a == b", "a[1:]", "{x: a}", "a[]"]


def test_the_bundled_files_have_paths() -> None:
    assert len(BUNDLED_PATHS) > 15
    assert "params.ts" in BUNDLED_PATHS


def test_every_bundled_path_is_compiled() -> None:
    """The bundle's paths all take the fast path (a new one outside the subset would be
    correct but slow: extend adapter.mapping.paths then)."""
    for text in [*BUNDLED_PATHS, *MORE_PATHS]:
        if text != "@":
            assert compile_search(jmespath.compile(text).parsed) is not None, text
    for text in FALLBACK_PATHS:
        assert compile_search(jmespath.compile(text).parsed) is None, text


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict) and "type" in node:
        yield node
        for child in node.get("children", []):
            yield from _nodes(child)


FIELD_NAMES = sorted(
    {
        node["value"]
        for text in [*BUNDLED_PATHS, *MORE_PATHS, *FALLBACK_PATHS]
        if text != "@"
        for node in _nodes(jmespath.compile(text).parsed)
        if node["type"] == "field"
    }
)


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "x", "0", "ON", "off", " 19.2 ", "nan", "Online"]),
    st.text(max_size=3),
)
# Copies: sampled_from hands out its own objects, which fill() below would change.
CONTAINERS: st.SearchStrategy[Any] = st.sampled_from(
    [[], {}, [0], [None], [""], [[]], {"a": None}]
).map(copy.deepcopy)


def documents(names: list[str]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(names)
    return st.recursive(
        st.one_of(LEAVES, CONTAINERS),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)
        ),
        max_leaves=24,
    )


NUMBERY = st.one_of(
    st.integers(-3000, 3000),
    st.floats(-1e6, 1e6),
    st.sampled_from(["19.2", "ON", "off", "true", "Online", "Offline", "1e400", ""]),
)
# What a path's chain ends on: mostly numbers (readings), sometimes anything.
ENDS = st.one_of(
    NUMBERY,
    NUMBERY,
    st.lists(NUMBERY, max_size=3),
    LEAVES,
    CONTAINERS,
    st.deferred(lambda: documents(FIELD_NAMES)),
)


def fill(draw: st.DrawFn, document: dict[str, Any], text: str) -> None:
    """Put values on the field/index chains of `text` (some of them), so that the path
    finds something more often than in a random document."""
    for node in _nodes(jmespath.compile(text).parsed):
        steps = _chain(node)
        if not steps or not draw(st.booleans()):
            continue
        target: Any = document
        for step, following in zip(steps, [*steps[1:], None], strict=True):
            fresh: Any = [] if isinstance(following, int) else {}
            if following is None:
                fresh = draw(ENDS)
            if isinstance(step, str):
                if not isinstance(target, dict):
                    break
                if following is None or not isinstance(target.get(step), dict | list):
                    target[step] = fresh
                target = target[step]
            else:
                if not isinstance(target, list):
                    break
                while len(target) < abs(step) + (step >= 0):
                    target.append(draw(NUMBERY))
                if following is None or not isinstance(target[step], dict | list):
                    target[step] = fresh
                target = target[step]


@st.composite
def along(draw: st.DrawFn, text: str) -> Any:
    document: dict[str, Any] = {}
    fill(draw, document, text)
    return document


def _chain(node: dict[str, Any]) -> list[str | int] | None:
    if node["type"] == "field":
        return [node["value"]]
    if node["type"] == "index":
        return [node["value"]]
    if node["type"] in ("subexpression", "index_expression"):
        steps: list[str | int] = []
        for child in node["children"]:
            more = _chain(child)
            if more is None:
                return None
            steps += more
        return steps
    return None


@budget(40)
@given(st.data())
@pytest.mark.parametrize("text", [*BUNDLED_PATHS, *MORE_PATHS, *FALLBACK_PATHS])
def test_compiled_paths_equal_jmespath(text: str, data: st.DataObject) -> None:
    document = data.draw(st.one_of(along(text), documents(FIELD_NAMES), LEAVES, st.binary()))
    path = compile_path(text, "test", "path")
    assert same(path.search(document), reference_search(text, document))
    if text != "@":
        compiled = compile_search(jmespath.compile(text).parsed)
        if compiled is not None:
            assert same(compiled(document), jmespath.search(text, document))


NAMES = ["a", "b", "c", "ENERGY", "Power", "DS18B20-1", "switch:0", "x y", "é", '"q"']
LITERALS = ["`0`", "`null`", '`""`', "`[]`", "`{}`", "`false`", "`true`", "`1.5`", '`"x"`']


def _identifier(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else json.dumps(name)


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    name = st.sampled_from(NAMES).map(_identifier)
    index = st.integers(-3, 3)
    wrap = st.sampled_from(["{}", "({})"])
    return st.one_of(
        st.tuples(inner, name, wrap).map(lambda t: t[2].format(t[0]) + "." + t[1]),
        st.tuples(inner, index, wrap).map(lambda t: t[2].format(t[0]) + f"[{t[1]}]"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} || {t[1]}"),
        st.tuples(inner, inner).map(lambda t: f"({t[0]} && {t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} | {t[1]}"),
        inner.map(lambda e: f"!({e})"),
        inner.map(lambda e: f"({e})"),
    )


EXPRESSIONS = st.recursive(
    st.one_of(
        st.sampled_from(NAMES).map(_identifier),
        st.just("@"),
        st.sampled_from(LITERALS),
    ),
    _grow,
    max_leaves=8,
)


@budget(1500)
@given(EXPRESSIONS, documents(NAMES))
def test_random_expressions_of_the_subset_equal_jmespath(text: str, document: Any) -> None:
    try:
        parsed = jmespath.compile(text)
    except jmespath.exceptions.JMESPathError:
        assume(False)
        return
    compiled = compile_search(parsed.parsed)
    assert compiled is not None, text  # the grammar above stays inside the subset
    assert same(compiled(document), parsed.search(document)), text


EDGE_VALUES = [0, 0.0, -0.0, 1, False, True, None, "", " ", "0", [], [0], [None], {}, {"a": 0}]
EDGE_PATHS = [
    "a || b",
    "a || b || c",
    "x.a[0] || x.a",
    "x.a[-1] || x.b[0] || x",
    "(a || b).c",
    "a && b",
    "!a",
    "a | [0]",
    "a[0][0]",
]


@pytest.mark.parametrize("text", EDGE_PATHS)
def test_jmespath_truth_and_missing_values_on_every_edge(text: str) -> None:
    """0 is true, "", [], {}, false and null are false; a field of a non-object and an
    index of a non-array are null: for each value in each place of each shape."""
    compiled = compile_search(jmespath.compile(text).parsed)
    assert compiled is not None
    for first in EDGE_VALUES:
        for second in EDGE_VALUES:
            for document in [
                {"a": first, "b": second, "c": "C"},
                {"x": {"a": first, "b": second}},
                {"x": {"a": [first, second], "b": [second]}},
                {"a": [first], "b": [second, first]},
                [first, second],
                first,
            ]:
                expected = jmespath.search(text, document)
                assert same(compiled(document), expected), (text, document)


@budget(300)
@given(st.one_of(documents(NAMES), LEAVES, CONTAINERS, st.binary(max_size=2)))
def test_falsiness_is_jmespaths(value: Any) -> None:
    # `a && b` is `a` when `a` is false in JMESPath's sense, else `b`.
    marker = object()
    assert is_false(value) is (jmespath.search("a && b", {"a": value, "b": marker}) is not marker)


def test_paths_outside_the_subset_keep_jmespath_and_its_errors_are_none() -> None:
    path = compile_path("length(a)", "test", "path")
    assert path.search({"a": [1, 2]}) == 2
    assert path.search({"a": 5}) is None  # jmespath raises: a missing value, as before
    assert compile_path("@", "test", "path").search(b"raw") == b"raw"


# --- numbers, times, metadata ------------------------------------------------------------

NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.floats(),
    st.sampled_from(["on", " TRUE ", "off", "False", "19.2", " -0 ", "1e400", "nan", "x", ""]),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=1),
)
SCALES = st.one_of(st.just(1.0), st.floats(), st.integers(-3, 3).map(float))


@budget(2000)
@given(NUMBERS, SCALES)
def test_as_number_equals_the_former_code(value: Any, scale: float) -> None:
    assert same(as_number(value, scale), reference_as_number(value, scale))


ZONES = st.one_of(
    st.just(UTC),
    st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))),
    st.integers(-86399, 86399).map(lambda s: timezone(timedelta(seconds=s))),
)
MOMENTS = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=ZONES
)


@budget(2000)
@given(MOMENTS)
def test_format_time_and_to_millis_equal_the_former_code(moment: datetime) -> None:
    assert format_time(moment) == reference_format_time(moment)
    assert format_time(moment) == reference_format_time(moment)  # again, from the cache
    cut = to_millis(moment)
    expected = reference_to_millis(moment)
    assert (cut, cut.tzinfo, cut.fold) == (expected, expected.tzinfo, expected.fold)
    assert format_time(cut) == format_time(moment)
    assert millis_timestamp(moment) == expected.timestamp()


def test_format_time_keeps_a_bounded_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventparts, "_SECONDS_KEPT", 3)
    monkeypatch.setattr(eventparts, "_SECONDS", {})
    start = datetime(2026, 11, 23, 20, 14, 4, 123456, tzinfo=UTC)
    for seconds in range(10):
        moment = start + timedelta(seconds=seconds, microseconds=seconds * 1001)
        assert format_time(moment) == reference_format_time(moment)
        assert len(eventparts._SECONDS) <= 3


TOPIC_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates too
READING_VALUES = st.one_of(
    st.floats(),  # NaN and infinities: the encoder writes those
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e16, 1e-7, 5e-324, 123456789.123456789, 2635.0]),
    st.integers(-5, 5),
    st.booleans(),
)
READINGS = st.dictionaries(
    st.one_of(TOPIC_TEXT, st.sampled_from(["power", "temperature", "energy_total"])),
    READING_VALUES,
    max_size=6,
)


@budget(2000)
@given(
    MOMENTS,
    TOPIC_TEXT,
    READINGS,
    st.one_of(st.none(), TOPIC_TEXT),
    st.sampled_from([None, "", "base64"]),
    st.one_of(
        st.none(),
        st.dictionaries(TOPIC_TEXT, st.sampled_from(["W", "kWh", "°C", "µg/m³", '"x']), max_size=3),
    ),
)
def test_event_metadata_equals_json_dumps(
    moment: datetime,
    topic: str,
    readings: dict[str, float],
    primary: str | None,
    encoding: str | None,
    units: dict[str, str] | None,
) -> None:
    text = event_metadata(
        time=moment,
        topic=topic,
        readings=readings,
        primary=primary,
        encoding=encoding,
        units=units,
    )
    # The same JSON, keys in the same order; the characters may differ only in how a
    # float's exponent is written (orjson: 1e16, Python: 1e+16).
    reference = reference_metadata(moment, topic, readings, primary, encoding, units)
    assert json.loads(text) == json.loads(reference)
    assert list(json.loads(text)) == list(json.loads(reference))
    if "e" not in reference.lower().replace("true", "").replace("false", ""):
        assert text == reference


def test_event_metadata_of_other_types_takes_the_encoder() -> None:
    moment = datetime(2026, 11, 23, 20, 14, 4, 123456, tzinfo=UTC)
    cases: list[tuple[Any, Any, Any]] = [
        ("t", {1: 2.0}, None),  # a key the encoder turns into "1"
        ("t", {"a": float("nan")}, None),
        ("t", {"a": 1}, None),
        ("t", {"a": 1.5}, 7),  # not a str primary
        (("t",), {}, None),  # not a str topic
    ]
    for topic, readings, primary in cases:
        text = event_metadata(time=moment, topic=topic, readings=readings, primary=primary)
        assert text == reference_metadata(moment, topic, readings, primary)


def test_mapped_keeps_its_dataclass_behaviour() -> None:
    fields = [f.name for f in dataclasses.fields(Mapped)]
    assert list(inspect.signature(Mapped).parameters) == fields
    rule, *_ = next(iter(bundled_rules()))[0]
    moment = datetime(2026, 11, 23, tzinfo=UTC)
    values: list[Any] = [
        rule,
        {"t": "x"},
        None,
        "s",
        "d",
        "m",
        {"a": 1.0},
        ("b",),
        moment,
        {"a": "W"},
        "a",
    ]
    mapped = Mapped(*values)
    assert [getattr(mapped, name) for name in fields] == values
    assert mapped == Mapped(**dict(zip(fields, values, strict=True)))
    assert dataclasses.replace(mapped, data="e").data == "e"
    with pytest.raises(dataclasses.FrozenInstanceError):
        mapped.data = "e"  # type: ignore[misc]
    assert repr(mapped).startswith("Mapped(rule=Rule(")


# --- whole messages ----------------------------------------------------------------------


def all_bundled() -> MappingSet:
    rules: list[Rule] = []
    commands: list[rules_module.CommandRule] = []
    for more_rules, more_commands in bundled_rules():
        rules += more_rules
        commands += more_commands
    return MappingSet(rules, commands, "pre")


BUNDLE = all_bundled()
TOPICS = sorted(
    {
        topic
        for rule in BUNDLE.rules
        for topic in [
            "/".join("dev1" if level in ("+", "#") else level for level in filter_.split("/"))
            for filter_ in [rule.pattern.mqtt_filter]
        ]
        if rule.pattern.match(topic) is not None
    }
)


def reference_map(topic: str, payload: bytes, received: datetime) -> Any:
    """MappingSet.map as it was, on jmespath and the reference functions: a comparable
    tuple of the outcome."""
    rejected = None
    decoded: dict[str, Any] = {}
    for rule, values in BUNDLE.candidates(topic):
        if rule.ignore and not rule.when:
            return None
        try:
            if rule.payload not in decoded:
                decoded[rule.payload] = decode_payload(rule.payload, payload)
        except DecodeError as exc:
            if not rule.ignore:
                rejected = rejected or ("rejected", rule.id, str(exc))
            continue
        document = decoded[rule.payload]

        def holds(condition: rules_module.Condition, document: Any = document) -> bool:
            value = reference_search(condition.path.text, document)
            if condition.exists is not None and (value is not None) != condition.exists:
                return False
            if condition.equals is not rules_module._MISSING and value != condition.equals:
                return False
            return condition.one_of is None or value in condition.one_of

        if not all(holds(condition) for condition in rule.when):
            continue
        if rule.ignore:
            return None
        if rule.availability is not None:
            return ("availability", rule.id, rule.availability.state(document))
        readings: dict[str, float] = {}
        units: dict[str, str] = {}
        missing = []
        suffix = rule.channel.suffix(values) if rule.channel is not None else ""
        for reading in rule.readings:
            name = render_template(reading.name, values) + suffix
            unit, scale = reading.unit, reading.scale
            if reading.unit_path is not None:
                found = reference_search(reading.unit_path.text, document)
                unit, factor = (
                    canonical(found) if isinstance(found, str) and found.strip() else (None, 1.0)
                )
                scale *= factor
            number = reference_as_number(reference_search(reading.path.text, document), scale)
            if number is None:
                missing.append(name)
            else:
                readings[name] = number
                if unit is not None:
                    units[name] = unit
        if rule.convention is not None:
            for found, number, found_unit in CONVENTIONS[rule.convention](document, values):
                if found not in readings:
                    readings[found] = number
                    if found_unit is not None:
                        units[found] = found_unit
        if rule.all_readings is not None and isinstance(document, dict):
            names, declared = dict(rule.all_readings.names), dict(rule.all_readings.units)
            for key, raw in document.items():
                taken = str(names.get(key, key))
                if key in rule.all_readings.exclude or isinstance(raw, dict | list):
                    continue
                if raw is None or taken in readings:
                    continue
                unit_text = declared.get(key) or PROPERTY_UNITS.get(key)
                all_unit, factor = canonical(unit_text) if unit_text else (None, 1.0)
                number = reference_as_number(raw, factor)
                if number is not None:
                    readings[taken] = number
                    if all_unit:
                        units[taken] = all_unit
        moment = received
        if rule.timestamp is not None:
            moment = rule.timestamp.extract(document) or received
        data, encoding = payload_text(payload)
        primary = next((name for name in rule.primaries if name in readings), None)
        metadata = reference_metadata(moment, topic, readings, primary, encoding, units)
        metadata_pairs = same_json(metadata)
        return (
            "mapped",
            rule.id,
            values,
            data,
            metadata_pairs,
            repr(readings),
            tuple(missing),
            moment,
        )
    return rejected


def same_json(text: str) -> Any:
    """JSON text as its pairs in order: equal for the same JSON, however a float's exponent
    is written (1e16, 1e+16); NaN as the word."""
    return json.loads(text, object_pairs_hook=lambda pairs: pairs, parse_constant=str)


def outcome_tuple(outcome: Any) -> Any:
    if isinstance(outcome, Mapped):
        return (
            "mapped",
            outcome.rule.id,
            outcome.values,
            outcome.data,
            same_json(outcome.metadata),
            repr(outcome.readings),
            outcome.missing,
            outcome.time,
        )
    if isinstance(outcome, AvailabilityChange):
        return ("availability", outcome.rule.id, outcome.online)
    if isinstance(outcome, Rejected):
        return ("rejected", outcome.rule.id, outcome.reason)
    return outcome


@st.composite
def messages_for_the_bundle(draw: st.DrawFn) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(TOPICS))
    texts = sorted({p.text for rule, _ in BUNDLE.candidates(topic) for p in _paths(rule)})
    document: Any = {}
    for text in texts:
        if text != "@":
            fill(draw, document, text)
    shape = draw(st.sampled_from(["json"] * 8 + ["leaf", "bytes"]))
    if shape == "leaf":
        document = draw(LEAVES)
    if shape == "bytes":
        return topic, draw(st.binary(max_size=8))
    return topic, json.dumps(document, ensure_ascii=draw(st.booleans())).encode()


def _paths(rule: Rule) -> list[rules_module.Path]:
    paths = [c.path for c in rule.when] + [r.path for r in rule.readings]
    if rule.timestamp is not None:
        paths.append(rule.timestamp.path)
    if rule.availability is not None:
        paths.append(rule.availability.path)
    return paths


@budget(600)
@given(messages_for_the_bundle(), MOMENTS)
def test_map_equals_the_reference(message: tuple[str, bytes], received: datetime) -> None:
    topic, payload = message
    expected = reference_map(topic, payload, received)
    assert outcome_tuple(BUNDLE.map(topic, payload, received)) == expected
    assert outcome_tuple(BUNDLE.map(topic, payload, received)) == expected  # cached topic


def test_tasmota_energy_messages_map_exactly() -> None:
    """The benchmark's message, single- and multi-phase, byte for byte."""
    received = datetime(2026, 11, 23, 20, 14, 4, 123456, tzinfo=UTC)
    payloads = [
        b'{"Time":"2026-11-23T10:00:00","ENERGY":{"Total":100.5,"Today":0.5,"Power":42,'
        b'"Voltage":229,"Current":0.183}}',
        b'{"ENERGY":{"Total":{"Phase1":1},"Today":[0,2],"Power":[10.5,20.25],'
        b'"Voltage":[],"Current":[0.0,1]}}',
    ]
    for payload in payloads:
        outcome = BUNDLE.map("tele/kitchen/SENSOR", payload, received)
        assert outcome_tuple(outcome) == reference_map("tele/kitchen/SENSOR", payload, received)
    assert isinstance(outcome, Mapped)
    # Tasmota's convention: each channel of an array or object suffixed, the device's whole
    # the sum of what adds up; an empty array gives nothing, and nothing is missing.
    assert outcome.metadata == (
        '{"time":"2026-11-23T20:14:04.123Z","topic":"tele/kitchen/SENSOR",'
        '"readings":{"energy":1.0,"energy_1":1.0,"energy_today":2.0,"energy_today_1":0.0,'
        '"energy_today_2":2.0,"power":30.75,"power_1":10.5,"power_2":20.25,"current":1.0,'
        '"current_1":0.0,"current_2":1.0},"primary":"power","units":{"energy":"kWh",'
        '"energy_1":"kWh","energy_today":"kWh","energy_today_1":"kWh","energy_today_2":"kWh",'
        '"power":"W","power_1":"W","power_2":"W","current":"A","current_1":"A","current_2":"A"}}'
    )
    assert outcome.missing == ()


# --- which devices the rules still make --------------------------------------------------


def reference_produces(mappings: MappingSet, device_uri: str) -> bool:
    if mappings.prefix:
        if not device_uri.startswith(mappings.prefix + ":"):
            return False
        device_uri = device_uri[len(mappings.prefix) + 1 :]
    return any(
        template_regex(rule.device.uri).fullmatch(device_uri) is not None
        for rule in mappings.rules
        if rule.forwards
    )


DEVICE_TEMPLATES = sorted({rule.device.uri for rule in BUNDLE.rules})
PARTS = st.text(alphabet="ab/:{}-é", max_size=4)


@st.composite
def device_uris(draw: st.DrawFn) -> str:
    template = draw(st.sampled_from(DEVICE_TEMPLATES))
    values = {name: draw(PARTS) for name in placeholders(template)}
    uri = render_template(template, values)
    uri = draw(st.sampled_from(["", "", "pre:", "pre", "other:"])) + uri
    cut = draw(st.integers(0, 2))
    return uri[: len(uri) - cut] if draw(st.booleans()) else uri + "x" * cut


@budget(1500)
@given(st.one_of(device_uris(), st.text(max_size=20)))
def test_produces_equals_a_regex_per_rule(device_uri: str) -> None:
    assert BUNDLE.produces(device_uri) is reference_produces(BUNDLE, device_uri)
    assert BUNDLE.produces(device_uri) is reference_produces(BUNDLE, device_uri)
    unprefixed = MappingSet(BUNDLE.rules, BUNDLE.commands)
    assert unprefixed.produces(device_uri) is reference_produces(unprefixed, device_uri)
