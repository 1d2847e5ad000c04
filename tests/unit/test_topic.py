"""Topic matching, checked three ways that must agree: the reference `filter_matches`, a
compiled `TopicPattern` of the plain filter, and a `MappingSet` (paho's topic trie) with
one rule per filter. Cases: the MQTT 3.1.1 specification's non-normative examples
(§4.7.1.2, §4.7.1.3, §4.7.2) and the edge cases of device-conventions.md §4.1/§4.5.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from adapter.mapping import MappingError, MappingSet, compile_text
from adapter.topic import (
    TopicError,
    TopicPattern,
    filter_matches,
    placeholders,
    render_template,
    strip_prefix,
    subscriptions,
    template_regex,
    validate_filter,
    validate_topic_name,
)

# (filter, topic, matches)
MATCHES: list[tuple[str, str, bool]] = [
    # 3.1.1 §4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),  # '#' matches the parent level
    ("sport/#", "sport/", True),
    ("sport/tennis/#", "sport/tennis/player1", True),
    ("#", "sport/tennis/player1", True),
    ("#", "sport", True),
    ("#", "/", True),
    # 3.1.1 §4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+", "sport", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport/tennis/player2", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    # 3.1.1 §4.7.2 topics beginning with $
    ("#", "$SYS/broker/uptime", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("+", "$SYS", False),
    ("+/+", "$SYS/x", False),
    ("#", "$", False),
    # only the first level is special: '$' deeper is ordinary
    ("foo/+", "foo/$bar", True),
    ("foo/#", "foo/$bar/baz", True),
    ("+/$bar", "foo/$bar", True),
    # empty levels (device-conventions §4.1)
    ("foo/+/bar", "foo//bar", True),
    ("foo//bar", "foo//bar", True),
    ("foo/bar", "foo//bar", False),
    ("+/+", "/", True),
    ("+", "/", False),
    ("/#", "/", True),
    ("/#", "/foo", True),
    ("+/foo", "/foo", True),
    ("foo/+", "foo/", True),
    ("foo/#", "foo/", True),
    ("foo/+/+", "foo//", True),
    # literal, case-sensitive, no normalisation
    ("sport/tennis", "sport/tennis", True),
    ("sport/tennis", "Sport/tennis", False),
    ("sport/tennis", "sport/tennis/", False),
    ("sport/tennis/", "sport/tennis", False),
    ("a/b/c", "a/b", False),
    ("tele/+/SENSOR", "tele/kitchen/SENSOR", True),
    ("tele/+/SENSOR", "tele/kitchen/STATE", False),
    ("zigbee2mqtt/#", "zigbee2mqtt/kitchen/floor_light/availability", True),
    ("homeassistant/+/+/config", "homeassistant/sensor/x/config", True),
    ("homeassistant/+/+/config", "homeassistant/sensor/node/x/config", False),
]

INVALID_FILTERS = [
    "",
    "foo#",
    "foo/#/bar",
    "#/x",
    "##",
    "sport/tennis#",
    "sport/tennis/#/ranking",
    "+foo",
    "foo+",
    "sport+",
    "foo/+bar/x",
    "+#",
    "foo\x00bar",
    "\x00",
]


def _single_rule_sets() -> MappingSet:
    """One MappingSet holding one rule per valid filter of MATCHES (id = its index)."""
    filters = sorted({f for f, _, _ in MATCHES})
    lines = ["rules:"]
    for index, topic_filter in enumerate(filters):
        lines += [
            f"  - id: f{index}",
            f"    topic: {json.dumps(topic_filter)}",
            '    device: "test:x"',
            "    payload: raw",
        ]
    rules, commands = compile_text("\n".join(lines) + "\n", "filters.yaml")
    return MappingSet(rules, commands)


ALL_FILTERS = _single_rule_sets()
RECEIVED = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_matching_agrees_three_ways(topic_filter: str, topic: str, expected: bool) -> None:
    validate_filter(topic_filter)
    assert filter_matches(topic_filter, topic) is expected
    pattern = TopicPattern.compile(topic_filter)
    assert pattern.mqtt_filter == topic_filter
    assert (pattern.match(topic) is not None) is expected
    taken = {rule.pattern.text for rule, _ in ALL_FILTERS.candidates(topic)}
    assert (topic_filter in taken) is expected
    assert topic_matches_sub(topic_filter, topic) is expected  # paho as a fourth opinion


def test_a_mapping_set_takes_exactly_the_matching_rules() -> None:
    outcome = ALL_FILTERS.map("sport/tennis/player1", b"x", RECEIVED)
    assert outcome is not None  # fewest wildcards, then most literal levels
    assert outcome.rule.pattern.text == "sport/tennis/player1/#"
    system = ALL_FILTERS.map("$SYS/broker/uptime", b"x", RECEIVED)
    assert system is not None and system.rule.pattern.text == "$SYS/#"  # never '#'
    assert ALL_FILTERS.map("nothing-like-it", b"x", RECEIVED) is not None  # '#' and '+'
    assert ALL_FILTERS.map("x/y/z/w/v", b"x", RECEIVED) is not None  # '#'
    assert [r.pattern.text for r, _ in ALL_FILTERS.candidates("$SYS/x/y")] == ["$SYS/#"]


@pytest.mark.parametrize("topic_filter", INVALID_FILTERS)
def test_invalid_filters_are_refused_three_ways(topic_filter: str) -> None:
    with pytest.raises(TopicError):
        validate_filter(topic_filter)
    with pytest.raises(TopicError):
        TopicPattern.compile(topic_filter)
    text = f"rules:\n  - id: bad\n    topic: {json.dumps(topic_filter)}\n    device: test:x\n"
    with pytest.raises(MappingError, match=r"^bad\.yaml:3:5: invalid topic pattern"):
        compile_text(text, "bad.yaml")


def test_over_long_filters_are_refused() -> None:
    with pytest.raises(TopicError, match="65535"):
        validate_filter("a" * 65536)
    validate_filter("a" * 65535)


@pytest.mark.parametrize(
    ("topic", "valid"),
    [
        ("tele/kitchen/SENSOR", True),
        ("/", True),
        ("$SYS/x", True),
        ("", False),
        ("a/+/b", False),
        ("a/#", False),
        ("a\x00b", False),
    ],
)
def test_topic_names(topic: str, valid: bool) -> None:
    if valid:
        validate_topic_name(topic)
    else:
        with pytest.raises(TopicError):
            validate_topic_name(topic)


# --- placeholder patterns ----------------------------------------------------------------

# (pattern, mqtt filter, topic, captured values or None)
PATTERNS: list[tuple[str, str, str, dict[str, str] | None]] = [
    ("tele/{topic}/SENSOR", "tele/+/SENSOR", "tele/kitchen/SENSOR", {"topic": "kitchen"}),
    ("tele/{topic}/SENSOR", "tele/+/SENSOR", "tele//SENSOR", {"topic": ""}),
    ("tele/{topic}/SENSOR", "tele/+/SENSOR", "tele/a/b/SENSOR", None),
    ("tele/{topic}/SENSOR", "tele/+/SENSOR", "tele/kitchen/STATE", None),
    ("{node}/status", "+/status", "livingroom/status", {"node": "livingroom"}),
    ("{node}/status", "+/status", "$SYS/status", None),
    ("$SYS/{what}", "$SYS/+", "$SYS/uptime", {"what": "uptime"}),
    ("zigbee2mqtt/{name...}", "zigbee2mqtt/#", "zigbee2mqtt/kitchen/floor_light",
     {"name": "kitchen/floor_light"}),
    ("zigbee2mqtt/{name...}", "zigbee2mqtt/#", "zigbee2mqtt/0x00158d00022cb428",
     {"name": "0x00158d00022cb428"}),
    ("zigbee2mqtt/{name...}", "zigbee2mqtt/#", "zigbee2mqtt", None),  # a name is needed
    ("zigbee2mqtt/{name...}/availability", "zigbee2mqtt/#",
     "zigbee2mqtt/kitchen/floor_light/availability", {"name": "kitchen/floor_light"}),
    ("zigbee2mqtt/{name...}/availability", "zigbee2mqtt/#", "zigbee2mqtt/availability", None),
    ("zigbee2mqtt/{name...}/availability", "zigbee2mqtt/#", "zigbee2mqtt/lamp", None),
    ("zigbee2mqtt/{name...}/set/{attribute}", "zigbee2mqtt/#", "zigbee2mqtt/a/b/set/state",
     {"name": "a/b", "attribute": "state"}),
    ("{all...}", "#", "a/b/c", {"all": "a/b/c"}),
    ("{all...}", "#", "$SYS/x", None),
    ("home/{gateway}/BTtoMQTT/{mac}", "home/+/BTtoMQTT/+", "home/OMG/BTtoMQTT/4C33A6603C79",
     {"gateway": "OMG", "mac": "4C33A6603C79"}),
    ("{shelly}/status/{component}", "+/status/+", "shellyplus1-abc/status/switch:0",
     {"shelly": "shellyplus1-abc", "component": "switch:0"}),
    ("a/{x}/#", "a/+/#", "a/b", {"x": "b"}),
    ("a/{x}/#", "a/+/#", "a/b/c/d", {"x": "b"}),
    ("#", "#", "anything/at/all", {}),
    ("#", "#", "/leading", {}),
    ("a/#", "a/#", "a", {}),
]  # fmt: skip


@pytest.mark.parametrize(("text", "mqtt_filter", "topic", "values"), PATTERNS)
def test_placeholder_patterns(
    text: str, mqtt_filter: str, topic: str, values: dict[str, str] | None
) -> None:
    pattern = TopicPattern.compile(text)
    assert pattern.mqtt_filter == mqtt_filter
    assert pattern.match(topic) == values
    if values is not None:  # the filter subscribed to delivers what the pattern takes
        assert filter_matches(pattern.mqtt_filter, topic)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a/{x...}/{y...}", "only one"),
        ("a/{x}/{x}", "appears twice"),
        ("a/{x}/{x...}", "appears twice"),
        ("tele/x{topic}/SENSOR", "whole level"),
        ("tele/{topic}x/SENSOR", "whole level"),
        ("switch:{n}", "whole level"),
        ("tele/{topic/SENSOR", "whole level"),
        ("tele/{1topic}/SENSOR", "whole level"),
        ("{x...}/#/y", "'#' must be the whole last level"),
        ("#/{x}", "'#' must be the whole last level"),
        ("{x}+", "whole level"),
        ("", "must not be empty"),
    ],
)
def test_bad_patterns(text: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        TopicPattern.compile(text)


def test_specificity_counts_wildcards_and_literal_levels() -> None:
    def counts(text: str) -> tuple[int, int]:
        pattern = TopicPattern.compile(text)
        return pattern.wildcards, pattern.literal_levels

    assert counts("tele/kitchen/SENSOR") == (0, 3)
    assert counts("tele/{topic}/SENSOR") == (1, 2)
    assert counts("tele/+/SENSOR") == (1, 2)
    assert counts("tele/#") == (1, 1)
    assert counts("zigbee2mqtt/{name...}") == (1, 1)
    assert counts("zigbee2mqtt/{name...}/availability") == (1, 2)  # one '#' subscription


def test_render_and_template_inverse() -> None:
    pattern = TopicPattern.compile("zigbee2mqtt/{name...}/set")
    assert pattern.render({"name": "kitchen/floor_light"}) == "zigbee2mqtt/kitchen/floor_light/set"
    assert placeholders("shelly:{shelly}/relay/{n} {name...}") == ["shelly", "n", "name"]
    assert render_template("tasmota:{topic}", {"topic": "kitchen"}) == "tasmota:kitchen"
    with pytest.raises(KeyError):
        render_template("tasmota:{topic}", {})
    # JSON braces are not placeholders
    assert render_template('{"id":"{id}"}', {"id": "7"}) == '{"id":"7"}'
    found = template_regex("shelly:{shelly}/relay/{n}").fullmatch("shelly:shelly1-AB/relay/1")
    assert found is not None and found.groupdict() == {"shelly": "shelly1-AB", "n": "1"}
    assert template_regex("tasmota:{topic}").fullmatch("tasmota:a/b") is None
    multi = template_regex("z2m:{name...}").fullmatch("z2m:kitchen/floor_light")
    assert multi is not None and multi.group("name") == "kitchen/floor_light"
    # A placeholder used twice stands for the same text twice (found by the loader's fuzz
    # test: a device URI `{topic}{topic}` raised re.error out of the mapping loader).
    twice = template_regex("dev:{topic}-{topic}")
    assert twice.fullmatch("dev:a-a") is not None and twice.fullmatch("dev:a-b") is None


# --- generated: the reference agrees with paho --------------------------------------------

LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$x", "sport", "c$"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(LEVELS, st.just("+")), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "+"


@settings(max_examples=300, deadline=None)
@given(filters(), TOPICS)
def test_reference_agrees_with_paho(topic_filter: str, topic: str) -> None:
    validate_filter(topic_filter)
    expected = topic_matches_sub(topic_filter, topic)
    assert filter_matches(topic_filter, topic) is expected
    assert (TopicPattern.compile(topic_filter).match(topic) is not None) is expected


_PATTERN_LEVELS = st.one_of(
    st.sampled_from(["{a}", "{b}", "{a...}", "{_x1}", "+", "#", "", "$SYS", "{", "}", "{1}"]),
    st.sampled_from(["{a}x", "a+b", "c#", "x...y", "{a}{b}", "{ a}", "tele", "SENSOR"]),
    st.text(alphabet="ab{}+#./", max_size=5),
)


@settings(max_examples=2000)
@given(st.lists(_PATTERN_LEVELS, min_size=1, max_size=6))
def test_the_simple_pattern_path_compiles_what_the_general_one_does(levels: list[str]) -> None:
    text = "/".join(levels)
    assume(text)  # an empty pattern is refused before either path
    try:
        expected = TopicPattern._compile(text, text.split("/"))
    except TopicError as exc:
        with pytest.raises(TopicError) as caught:
            TopicPattern.compile(text)
        assert str(caught.value) == str(exc)
        return
    pattern = TopicPattern.compile(text)
    assert pattern == expected


# --- a fleet's subscriptions (issue [15])

DEVICE = ["stat/+/RESULT", "tele/+/SENSOR", "zigbee2mqtt/#"]
DISCOVERY = ["homeassistant/#", "tasmota/discovery/#", "zigbee2mqtt/bridge/devices"]


@pytest.mark.parametrize(
    ("prefix", "group", "device"),
    [
        ("", "", DEVICE),
        ("part/0/", "", ["part/0/stat/+/RESULT", "part/0/tele/+/SENSOR", "part/0/zigbee2mqtt/#"]),
        (
            "",
            "sepl",
            ["$share/sepl/stat/+/RESULT", "$share/sepl/tele/+/SENSOR", "$share/sepl/zigbee2mqtt/#"],
        ),
        (
            "p/1/",
            "g",
            [
                "$share/g/p/1/stat/+/RESULT",
                "$share/g/p/1/tele/+/SENSOR",
                "$share/g/p/1/zigbee2mqtt/#",
            ],
        ),
    ],
)
def test_device_filters_are_partitioned_and_discovery_filters_are_not(
    prefix: str, group: str, device: list[str]
) -> None:
    wanted = subscriptions(DEVICE, DISCOVERY, prefix, group)
    assert wanted == sorted(set(device) | set(DISCOVERY))
    for topic_filter in wanted:
        validate_filter(topic_filter)


def test_the_prefix_is_stripped_from_received_topics_only() -> None:
    assert strip_prefix("part/0/tele/plug/SENSOR", "part/0/") == "tele/plug/SENSOR"
    assert (
        strip_prefix("homeassistant/sensor/x/config", "part/0/") == "homeassistant/sensor/x/config"
    )
    assert strip_prefix("part/01/tele/plug/SENSOR", "part/0/") == "part/01/tele/plug/SENSOR"
    assert strip_prefix("tele/plug/SENSOR", "") == "tele/plug/SENSOR"


@given(st.lists(st.sampled_from(["a", "b", "+", "x y", "é"]), min_size=1, max_size=4))
def test_a_prefixed_filter_matches_exactly_the_prefixed_topics(levels: list[str]) -> None:
    topic_filter = "/".join(levels)
    topic = "/".join("any" if level == "+" else level for level in levels)
    assert filter_matches("part/0/" + topic_filter, "part/0/" + topic)
    assert filter_matches(topic_filter, strip_prefix("part/0/" + topic, "part/0/"))
