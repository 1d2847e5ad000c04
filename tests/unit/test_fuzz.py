"""Fuzzing every parser that takes outside input, with a bounded budget (hypothesis).

Targets: both SEPL codecs (envelope and legacy, client and server side), the mapping loader
(random YAML-ish text, random mapping documents, mutated bundled files), the payload
decoders and reading extraction (`MappingSet.map` against every bundled file), command
planning with hostile device uris, the lookup response parser and the average query's
parameters. Nothing may escape but the documented errors: ProtocolError, MappingError,
DecodeError, LookupError_, QueryError (and None where a function documents it).

The bugs these tests found are fixed; the `test_bug_*` tests at the end keep them fixed.
KNOWN_BUGS lists what the fuzz tests would tolerate and count: nothing now.
`test_zz_examples_tried` prints how many examples each target ran. The budget is about
6,000 examples in 15-20 s; FUZZ_SCALE=20 runs twenty times as many.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.history import GRANULARITIES, HistoryStore, Query, QueryError, parse_query
from adapter.history import Reading as HistoryReading
from adapter.mapping import Mapped, MappingError, MappingSet, Rejected, compile_text
from adapter.mapping.rules import (
    CommandRefused,
    DecodeError,
    Rule,
    decode_payload,
    parse_device_time,
)
from adapter.sepl import envelope, legacy
from adapter.sepl.envelope import ProtocolError
from adapter.sepl.lookup import LookupError_, parse_lookup_body
from adapter.sepl.messages import build_command, parse_command, parse_event_payload
from adapter.topic import validate_topic_name

REPO = Path(__file__).resolve().parents[2]
BUNDLED = {
    path.name: path.read_text(encoding="utf-8") for path in sorted(REPO.glob("mappings/*.yaml"))
}
NOW = datetime(2026, 11, 23, 20, 14, 4, tzinfo=UTC)
CORRELATION = {"id": "1", "transaction": "abcd"}  # what app.py passes to plan_command
T = TypeVar("T")

EXAMPLES: Counter[str] = Counter()  # examples run per target
TOLERATED: Counter[str] = Counter()  # hits of the known bugs below, by bug


# FUZZ_SCALE=20 multiplies every budget, for a longer run by hand.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def budget(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,  # no .hypothesis directory in the repository
        suppress_health_check=list(HealthCheck),
    )


# --- known bugs: (function the exception is raised in, exception type) ------------------


@dataclass(frozen=True)
class KnownBug:
    name: str
    functions: frozenset[str]  # the innermost function of adapter/ in the traceback
    error: type[BaseException]


KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(exc: BaseException) -> KnownBug | None:
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if f"{REPO}/adapter/" in frame.filename
    ]
    if not frames:
        return None
    for bug in KNOWN_BUGS:
        if type(exc) is bug.error and frames[-1].name in bug.functions:
            return bug
    return None


def attempt(target: str, call: Callable[[], T], *allowed: type[BaseException]) -> T | None:
    """Run one example: the result, or None after a documented error or a known bug."""
    EXAMPLES[target] += 1
    try:
        return call()
    except allowed:
        return None
    except Exception as exc:
        bug = known_bug(exc)
        if bug is None:
            raise
        TOLERATED[bug.name] += 1
        return None


# --- strategies --------------------------------------------------------------------------

HOSTILE_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0, -0.0, 1e308, -1e308, 5e-324, 2**63, 2**64 + 1, 10**20, 10**11 + 1, 10**309, -(10**400)]
    ),
)
SHORT_TEXT = st.text(max_size=20)
HOSTILE_TEXT = st.one_of(
    SHORT_TEXT,
    st.sampled_from(
        [
            "",
            " ",
            "ON",
            "off",
            "online",
            "nan",
            "inf",
            "-inf",
            "1e400",
            " 12.5 ",
            "0x10",
            "١٢",  # Arabic-Indic digits: float() takes them
            "\u0000",
            "\ud800",
            "{data}",
            "{topic}",
            "+",
            "#",
            "a/b",
            "2018.02.15 01:00:50",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-11-23T20:14:04Z",
            "2026-02-30T00:00:00",
            "x" * 300,
        ]
    ),
)
DEVICE_TIMES = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).flatmap(
        lambda moment: st.sampled_from(["", "Z", "+01:00", "-14:00", "+14:00"]).map(
            lambda offset: moment.isoformat() + offset
        )
    ),
    st.datetimes().map(lambda moment: moment.strftime("%Y.%m.%d %H:%M:%S")),
    HOSTILE_NUMBERS,
    HOSTILE_TEXT,
)
SCALARS = st.one_of(st.none(), st.booleans(), HOSTILE_NUMBERS, HOSTILE_TEXT)


def json_values(keys: st.SearchStrategy[str] = SHORT_TEXT) -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=15,
    )


JSON = json_values()
DEEP = st.integers(min_value=500, max_value=120_000)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # NaN and Infinity as Python writes them


def mutate(text: str, data: st.DataObject, alphabet: str, tokens: list[str]) -> str:
    """One to four random edits: delete, insert, duplicate, swap, replace a word, indent."""
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        lines = text.splitlines(keepends=True) or [""]
        kind = data.draw(st.integers(0, 5), label="edit")
        at = data.draw(st.integers(0, max(0, len(text))), label="at")
        if kind == 0:  # delete a span
            text = text[:at] + text[at + data.draw(st.integers(1, 40)) :]
        elif kind == 1:  # insert text
            text = text[:at] + data.draw(st.text(alphabet, max_size=12)) + text[at:]
        elif kind == 2:  # duplicate a line
            i = data.draw(st.integers(0, len(lines) - 1))
            text = "".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
        elif kind == 3:  # swap two lines
            i, j = (data.draw(st.integers(0, len(lines) - 1)) for _ in range(2))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif kind == 4:  # replace a word by a hostile token
            words = list(re.finditer(r"[\w.{}#+-]+", text))
            if words:
                word = words[data.draw(st.integers(0, len(words) - 1))]
                token = data.draw(st.sampled_from(tokens))
                text = text[: word.start()] + token + text[word.end() :]
        else:  # indent or dedent a line
            i = data.draw(st.integers(0, len(lines) - 1))
            shift = data.draw(st.integers(-2, 2))
            lines[i] = " " * shift + lines[i] if shift > 0 else lines[i][-shift:]
            text = "".join(lines)
    return text


# --- SEPL envelope codec -----------------------------------------------------------------

ENVELOPE_KEYS = ["status", "handler", "token", "content_type", "payload", "user", "pw", "gid"]
COMMAND_KEYS = [
    "device_url",
    "service_url",
    "protocol_parts",
    "task_id",
    "name",
    "value",
    "device_instance_id",
    "time",
]
FRAME_VALUES = json_values(st.sampled_from([*ENVELOPE_KEYS, *COMMAND_KEYS, "gid", "hash"]))
VALID_FRAMES = [
    envelope.encode_response(200, "credentials", {"gid": "iot#1", "hash": ""}),
    envelope.encode_response(400, "t1", "not listen to this device"),
    envelope.encode_command(
        build_command(
            device_uri="tasmota:kitchen",
            service_uri="on",
            data="ON",
            task_id="t",
            device_instance_id="d",
            time=1,
        )
    ),
    envelope.encode_credentials("alice", "pw", ""),
    envelope.encode_request("event", "t2", {"device_uri": "x", "service_uri": "y", "value": []}),
]
FRAME_CHARS = '{}[]":,0123456789 truefalsnul\\ue'


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:
        n = draw(DEEP)
        return draw(st.sampled_from(["[" * n, '{"payload":' + "[" * n, "{" * n]))
    if kind == 3:
        base = draw(st.sampled_from(VALID_FRAMES))
        return mutate(base, draw(st.data()), FRAME_CHARS, ['"', "{", "null", "1e999", "[]"])
    if kind == 4:  # an object with the protocol's keys and hostile values
        frame = draw(st.dictionaries(st.sampled_from(ENVELOPE_KEYS), FRAME_VALUES, max_size=8))
        return dumps(frame)
    return dumps(draw(FRAME_VALUES))


@budget(250)
@given(frames())
def test_envelope_decoders(frame: str | bytes) -> None:
    env = attempt(
        "envelope.decode_server_frame", lambda: envelope.decode_server_frame(frame), ProtocolError
    )
    if env is not None:
        assert env.handler in envelope.SERVER_HANDLERS
        assert isinstance(env.status, int) and not isinstance(env.status, bool)
        assert isinstance(env.token, str) and isinstance(env.content_type, str)
        command = attempt(
            "messages.parse_command", lambda: parse_command(env.payload), ProtocolError
        )
        if command is not None:
            assert command.device_uri and isinstance(command.service_uri, str)
            assert all(isinstance(v, str) for v in command.parts.values())
            assert isinstance(command.data, str) and isinstance(command.task_id, str)
    answer = attempt(
        "envelope.decode_handshake_answer",
        lambda: envelope.decode_handshake_answer(frame),
        ProtocolError,
    )
    if answer is not None:
        gid, hash_ = answer
        assert isinstance(gid, str) and gid and isinstance(hash_, str)
    credentials = attempt(
        "envelope.decode_credentials", lambda: envelope.decode_credentials(frame), ProtocolError
    )
    if credentials is not None:
        assert all(
            isinstance(v, str)
            for v in (credentials.user, credentials.password, credentials.gid, credentials.token)
        )
    client = attempt(
        "envelope.decode_client_frame", lambda: envelope.decode_client_frame(frame), ProtocolError
    )
    if client is not None:
        assert isinstance(client.handler, str) and isinstance(client.token, str)
        event = attempt(
            "messages.parse_event_payload",
            lambda: parse_event_payload(client.payload),
            ProtocolError,
        )
        if event is not None:
            assert all(isinstance(v, str) for v in event.parts.values())


@budget(150)
@given(
    st.text(max_size=40),
    st.text(max_size=40),
    st.one_of(st.none(), st.text(max_size=40)),
    st.text(max_size=20),
)
def test_envelope_command_round_trip(
    device: str, service: str, data: str | None, task: str
) -> None:
    """What the platform encodes, the client decodes to the same command (surrogates too)."""
    EXAMPLES["envelope command round trip"] += 1
    raw = build_command(
        device_uri=device or "x",
        service_uri=service,
        data=data,
        task_id=task,
        device_instance_id="d",
        time=1,
    )
    frame = envelope.encode_command(raw)
    command = parse_command(envelope.decode_server_frame(frame).payload)
    unpaired = re.compile("[\ud800-\udfff]")  # Go writes U+FFFD for them, as go_json does
    assert command.device_uri == unpaired.sub("\ufffd", device or "x")
    assert command.service_uri == unpaired.sub("\ufffd", service)
    assert command.data == ("" if data is None else unpaired.sub("\ufffd", data))


PROTOCOL_PARTS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"name": SCALARS, "value": SCALARS}),
        st.fixed_dictionaries({}, optional={"name": HOSTILE_TEXT, "value": FRAME_VALUES}),
        SCALARS,
    ),
    max_size=4,
)
COMMAND_PAYLOADS = st.one_of(
    st.fixed_dictionaries(
        {
            "device_url": st.one_of(HOSTILE_TEXT, SCALARS),
            "service_url": st.one_of(HOSTILE_TEXT, SCALARS),
        },
        optional={
            "protocol_parts": st.one_of(PROTOCOL_PARTS, SCALARS),
            "task_id": SCALARS,
            "device_instance_id": SCALARS,
            "time": SCALARS,
        },
    ),
    st.dictionaries(st.sampled_from(COMMAND_KEYS), FRAME_VALUES, max_size=6),
    FRAME_VALUES,
)


@budget(200)
@given(COMMAND_PAYLOADS)
def test_command_and_event_payloads(payload: Any) -> None:
    """The payload of a `command` frame (both dialects) and of an `event` (sandbox side)."""
    command = attempt("messages.parse_command", lambda: parse_command(payload), ProtocolError)
    if command is not None:
        assert command.device_uri and isinstance(command.service_uri, str)
        assert all(isinstance(v, str) for v in command.parts.values())
        assert isinstance(command.data, str) and isinstance(command.task_id, str)
        framed = attempt(
            "legacy.decode_command (parsed)",
            lambda: legacy.decode_command(dumps(payload)),
            ProtocolError,
        )
        assert framed is None or framed.device_uri == command.device_uri
    event = (
        {"device_uri": payload, "service_uri": "s", "value": payload}
        if not isinstance(payload, dict)
        else {
            "device_uri": payload.get("device_url"),
            "service_uri": payload.get("service_url"),
            "value": payload.get("protocol_parts"),
        }
    )
    attempt("messages.parse_event_payload", lambda: parse_event_payload(event), ProtocolError)


# --- SEPL legacy codec -------------------------------------------------------------------

LEGACY_PREFIXES = ["", "command:", "change:", "response:", "update", "change: "]


@st.composite
def legacy_frames(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(LEGACY_PREFIXES))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        body = draw(st.text(max_size=150))
    elif kind == 1:
        body = "[" * draw(DEEP)
    elif kind == 2:
        body = dumps(
            draw(
                st.dictionaries(
                    st.sampled_from([*COMMAND_KEYS, "service_name", "output_name"]),
                    FRAME_VALUES,
                    max_size=8,
                )
            )
        )
    else:
        body = dumps(draw(FRAME_VALUES))
    return prefix + body


@budget(200)
@given(legacy_frames())
def test_legacy_decoders(frame: str) -> None:
    command = attempt("legacy.decode_command", lambda: legacy.decode_command(frame), ProtocolError)
    if command is not None:
        assert command.device_uri and isinstance(command.service_uri, str)
    decoded = attempt(
        "legacy.decode_client_frame", lambda: legacy.decode_client_frame(frame), ProtocolError
    )
    if decoded is not None:
        assert decoded.kind in ("update", "change", "response")
        if decoded.kind == "change":
            event = attempt(
                "legacy.change_as_event",
                lambda: legacy.change_as_event(decoded.payload),
                ProtocolError,
            )
            if event is not None:
                assert isinstance(event.device_uri, str) and isinstance(event.service_uri, str)
    flag = attempt("legacy.is_legacy_credentials", lambda: legacy.is_legacy_credentials(frame))
    assert flag in (None, True, False)


REGISTRATION_KEYS = st.sampled_from(
    ["credentials", "devices", "user", "pw", "id", "zway_type", "title"]
)


@budget(250)
@given(
    st.one_of(
        json_values(REGISTRATION_KEYS),
        st.fixed_dictionaries(
            {
                "credentials": st.one_of(
                    st.fixed_dictionaries({"user": SCALARS, "pw": SCALARS}), FRAME_VALUES
                ),
                "devices": st.one_of(
                    st.lists(
                        st.one_of(
                            st.fixed_dictionaries(
                                {"id": SCALARS, "zway_type": SCALARS},
                                optional={"title": SCALARS},
                            ),
                            SCALARS,
                        ),
                        max_size=4,
                    ),
                    SCALARS,
                ),
            }
        ),
    )
)
def test_legacy_registration_and_change_bodies(body: Any) -> None:
    registration = attempt(
        "legacy.parse_registration", lambda: legacy.parse_registration(body), ProtocolError
    )
    if registration is not None:
        assert isinstance(registration.user, str) and isinstance(registration.password, str)
        assert all(isinstance(part, str) for device in registration.devices for part in device)
        assert all(device[0] for device in registration.devices)
    attempt("legacy.change_as_event", lambda: legacy.change_as_event(body), ProtocolError)


# --- lookup ------------------------------------------------------------------------------

URL_PARTS = st.sampled_from(
    ["ws://", "wss://", "http://", "", "ws:", "ws:///", "ws://[", "ws://[::1]", "wss://h:"]
)


@st.composite
def lookup_bodies(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=120))
    url = (
        draw(URL_PARTS)
        + draw(st.text(max_size=30))
        + draw(st.sampled_from(["", ":8093", ":99999", ":-1", ":x", "/", "/path?q=1#f", ":0"]))
    )
    if kind == 1:
        return draw(st.sampled_from(["", " ", "\n", "\t"])) + url
    if kind == 2:
        return dumps({"url": draw(st.one_of(st.just(url), FRAME_VALUES))})
    if kind == 3:
        return '{"url":' + "[" * draw(DEEP)
    return "{" + draw(st.text(max_size=60))


@budget(300)
@given(lookup_bodies(), st.booleans())
def test_lookup_body_parser(body: str, https: bool) -> None:
    url = attempt(
        "lookup.parse_lookup_body", lambda: parse_lookup_body(body, https=https), LookupError_
    )
    if url is not None:
        assert url.startswith("wss://" if https else ("ws://", "wss://"))


# --- the average query's parameters ------------------------------------------------------

QUERY_KEYS = st.sampled_from(["time_window", "granularity", "measurement", "x", ""])
QUERY_VALUES = st.one_of(
    st.text(max_size=15),
    st.sampled_from(list(GRANULARITIES)),
    st.from_regex(r"\A[0-9]{1,12}[hmsd]?\Z"),
    st.sampled_from(["12h", "0h", "-1h", "1.5h", "12h\n", "１２h", "9999999999h", "power", ""]),
)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> HistoryStore:
    store = HistoryStore(tmp_path_factory.mktemp("fuzz-history") / "history.sqlite3")
    now = time.time()
    store.record(
        [
            HistoryReading(
                "dev", now - age, {"power": float(age), "voltage": 230.0}, "power", "d", "t"
            )
            for age in (1, 60, 3600, 86400 * 40)
        ]
    )
    return store


@budget(200)
@given(st.dictionaries(QUERY_KEYS, QUERY_VALUES, max_size=4))
def test_average_query_parameters(history: HistoryStore, params: dict[str, str]) -> None:
    query: Query | None = attempt("history.parse_query", lambda: parse_query(params), QueryError)
    if query is None:
        return
    assert query.granularity in GRANULARITIES
    assert query.window is None or (query.window > 0 and math.isfinite(query.window))
    rows = attempt("history.average", lambda: history.average("dev", query, time.time()))
    assert rows is not None
    for row in rows:
        assert math.isfinite(row["result"]) and row["data_points"] > 0


# --- payload decoders --------------------------------------------------------------------

PAYLOADS = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(str.encode),
    HOSTILE_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    JSON.map(lambda value: dumps(value).encode("utf-8", "surrogatepass")),
    DEEP.map(lambda n: b"[" * n),
)


@budget(300)
@given(st.sampled_from(["json", "text", "number", "boolean", "raw"]), PAYLOADS)
def test_payload_decoders(kind: str, payload: bytes) -> None:
    value = attempt(
        f"rules.decode_payload({kind})", lambda: decode_payload(kind, payload), DecodeError
    )
    if value is None:
        return
    if kind == "raw":
        assert value == payload
    elif kind == "text":
        assert isinstance(value, str)
    elif kind == "number":
        assert isinstance(value, float) and math.isfinite(value)
    elif kind == "boolean":
        assert isinstance(value, bool)


@budget(200)
@given(DEVICE_TIMES)
def test_device_time_parser(value: Any) -> None:
    moment = attempt("rules.parse_device_time", lambda: parse_device_time(value, UTC))
    assert moment is None or moment.tzinfo is not None


# --- reading extraction: MappingSet.map against every bundled file -----------------------


def enabled(text: str) -> str:
    return re.sub(r"(?m)^enabled: false", "enabled: true", text)


def bundled_set(name: str) -> MappingSet:
    rules, commands = compile_text(enabled(BUNDLED[name]), name)
    return MappingSet(rules, commands)


SETS = {name: bundled_set(name) for name in BUNDLED}
# Every key that a bundled rule's paths name, so random documents reach the readings.
PATH_TEXTS = [
    path.text
    for mappings in SETS.values()
    for rule in mappings.rules
    for path in [
        *(reading.path for reading in rule.readings),
        *(condition.path for condition in rule.when),
        *([rule.timestamp.path] if rule.timestamp else []),
        *([rule.availability.path] if rule.availability else []),
    ]
]
KEYS = sorted({word for text in PATH_TEXTS for word in re.findall(r"[A-Za-z_][\w]*", text)})
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
LEVELS = st.one_of(
    st.text(st.characters(exclude_characters="/", codec="utf-8"), max_size=10),
    st.sampled_from(["", "+", "#", "$SYS", "kitchen", "a b", "{topic}", "\u0000"]),
)


@st.composite
def topic_for(draw: st.DrawFn, rule: Rule) -> str:
    """A topic the rule's pattern could match, its placeholders filled with hostile levels."""
    levels = []
    for level in rule.pattern.text.split("/"):
        if level.endswith("...}") or level == "#":
            levels += draw(st.lists(LEVELS, min_size=1, max_size=3))
        elif level.startswith("{") or level == "+":
            levels.append(draw(LEVELS))
        else:
            levels.append(level)
    return "/".join(levels)


@st.composite
def document_for(draw: st.DrawFn, rule: Rule) -> Any:
    """A JSON document with hostile values where the rule's dotted paths point."""
    document: dict[str, Any] = {}
    paths = [reading.path.text for reading in rule.readings]
    paths += [c.path.text for c in rule.when]
    if rule.timestamp is not None:
        paths.append(rule.timestamp.path.text)
    for text in paths:
        if not DOTTED.fullmatch(text) or not draw(st.booleans()):
            continue
        *parents, last = text.split(".")
        node = document
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            timestamp = rule.timestamp is not None and text == rule.timestamp.path.text
            node[last] = draw(DEVICE_TIMES if timestamp else json_values(st.sampled_from(KEYS)))
    return document


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, str, bytes]:
    name = draw(st.sampled_from(sorted(SETS)))
    rules = SETS[name].rules
    kind = draw(st.integers(0, 4))
    if kind == 0 or not rules:
        topic = "/".join(draw(st.lists(LEVELS, min_size=1, max_size=5)))
    else:
        topic = draw(topic_for(draw(st.sampled_from(rules))))
    if kind in (1, 2) and rules:
        document = draw(document_for(draw(st.sampled_from(rules))))
        payload = dumps(document).encode("utf-8", "surrogatepass")
    elif kind == 3:
        payload = dumps(draw(json_values(st.sampled_from(KEYS)))).encode("utf-8", "surrogatepass")
    else:
        payload = draw(PAYLOADS)
    return name, topic, payload


@budget(600)
@given(messages())
def test_reading_extraction_against_bundled_mappings(message: tuple[str, str, bytes]) -> None:
    name, topic, payload = message
    outcome = attempt(f"MappingSet.map ({name})", lambda: SETS[name].map(topic, payload, NOW))
    if isinstance(outcome, Mapped):
        assert all(isinstance(v, float) and math.isfinite(v) for v in outcome.readings.values())
        metadata = json.loads(outcome.metadata)
        assert metadata["topic"] == topic and isinstance(metadata["time"], str)
        assert outcome.time.tzinfo is not None
        assert isinstance(outcome.data, str)
    elif isinstance(outcome, Rejected):
        assert outcome.reason


# --- command planning with hostile device uris -------------------------------------------

HOSTILE_PARTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["+", "#", "a/+/b", "\u0000", "{data}", "{topic}", "/", "", " ", "..", "\ud800", "x" * 200]
    ),
)


@st.composite
def commands(draw: st.DrawFn) -> tuple[str, str, str, str]:
    name = draw(st.sampled_from(sorted(SETS)))
    rules = SETS[name].commands
    pick = draw(st.integers(0, 3))
    if rules and pick:
        rule = draw(st.sampled_from(rules))
        uri = re.sub(r"\{[^}]*\}", lambda _: draw(HOSTILE_PARTS), rule.device)
        service = rule.service if draw(st.integers(0, 4)) else draw(SHORT_TEXT)
    else:
        uri, service = draw(st.text(max_size=30)), draw(SHORT_TEXT)
    return name, uri, service, draw(HOSTILE_TEXT)


@budget(400)
@given(commands(), PAYLOADS)
def test_command_planning_with_hostile_device_uris(
    command: tuple[str, str, str, str], reply: bytes
) -> None:
    name, uri, service, data = command
    plan = attempt(
        f"MappingSet.plan_command ({name})",
        lambda: SETS[name].plan_command(uri, service, data, CORRELATION),
        CommandRefused,  # data that names no channel of the rule
    )
    if plan is None:
        return
    validate_topic_name(plan.topic)  # no wildcard, no NUL, not empty
    if plan.reply_topic is not None:
        validate_topic_name(plan.reply_topic)
    assert isinstance(plan.payload, str)
    if plan.rule.payload != "{data}" and not isinstance(plan.rule.payload, str):
        json.loads(plan.payload)  # a JSON payload template stays JSON, whatever the data
    answer = attempt("MappingSet.reply_data", lambda: SETS[name].reply_data(plan, reply))
    assert answer is None or isinstance(answer, str)


# --- the mapping loader ------------------------------------------------------------------

YAML_CHARS = "abc{}[]:-#&*!|>'\"%@,?\n  \t0123456789._/+"
YAML_TOKENS = [
    "9" * 400,
    "2001-02-30",
    "2001-13-01 25:00:00",
    "!!binary x",
    "!!python/object:os.system",
    "&a",
    "*a",
    "[",
    "{",
    "}",
    "null",
    "~",
    "yes",
    "0x",
    "1e400",
    ".nan",
    "{data}",
    "{x...}",
    "{topic}/{topic}",
    "+",
    "#",
    "'",
    '"',
    ":",
    "- ",
    "? ",
    "<<: *a",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "Europe/Nowhere",
    "0",
    "-1",
    "true",
    "raw",
    "@",
    "`",
    "ENERGY.Power | sum(@)",
]
TOPIC_LEVELS = [
    "tele",
    "{topic}",
    "{name...}",
    "+",
    "#",
    "stat",
    "{x}",
    "a{b}",
    "",
    "$SYS",
    "{data}",
]
TOPIC_PATTERNS = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join)
YAML_SCALARS = st.one_of(SCALARS, st.sampled_from(YAML_TOKENS), TOPIC_PATTERNS)
PATHS = st.one_of(
    st.sampled_from([*PATH_TEXTS, "@", "a.b", "[0]", "length(@)", "a[", "`1`"]), SHORT_TEXT
)
CONDITIONS = st.fixed_dictionaries(
    {},
    optional={
        "path": PATHS,
        "equals": YAML_SCALARS,
        "in": st.lists(YAML_SCALARS, max_size=3),
        "exists": YAML_SCALARS,
    },
)
RULES = st.fixed_dictionaries(
    {"topic": st.one_of(TOPIC_PATTERNS, YAML_SCALARS)},
    optional={
        "id": st.one_of(st.sampled_from(["r1", "r2"]), YAML_SCALARS),
        "device": st.one_of(
            st.sampled_from(["tasmota:{topic}", "{name}", "x:{x}", "{data}"]),
            st.fixed_dictionaries(
                {"uri": st.one_of(st.sampled_from(["t:{topic}", "{x}"]), YAML_SCALARS)},
                optional={
                    "name": YAML_SCALARS,
                    "tags": st.dictionaries(SHORT_TEXT, YAML_SCALARS, max_size=3),
                    "type": YAML_SCALARS,
                },
            ),
            YAML_SCALARS,
        ),
        "service": YAML_SCALARS,
        "payload": st.one_of(
            st.sampled_from(["json", "text", "number", "boolean", "raw"]), YAML_SCALARS
        ),
        "readings": st.one_of(
            st.dictionaries(
                SHORT_TEXT,
                st.one_of(
                    PATHS,
                    st.fixed_dictionaries({}, optional={"path": PATHS, "scale": YAML_SCALARS}),
                ),
                max_size=3,
            ),
            YAML_SCALARS,
        ),
        "primary": YAML_SCALARS,
        "priority": YAML_SCALARS,
        "when": st.one_of(CONDITIONS, st.lists(CONDITIONS, max_size=2)),
        "timestamp": st.fixed_dictionaries(
            {},
            optional={
                "path": PATHS,
                "timezone": st.one_of(st.sampled_from(["UTC", "Europe/Berlin"]), YAML_SCALARS),
            },
        ),
        "availability": st.fixed_dictionaries(
            {},
            optional={
                "path": PATHS,
                "online": YAML_SCALARS,
                "offline": st.lists(YAML_SCALARS, max_size=2),
            },
        ),
        "ignore": YAML_SCALARS,
    },
)
COMMANDS = st.fixed_dictionaries(
    {
        "service": YAML_SCALARS,
        "device": st.one_of(
            st.sampled_from(["tasmota:{topic}", "z:{name...}", "{x}:{y}"]), YAML_SCALARS
        ),
    },
    optional={
        "id": YAML_SCALARS,
        "device_type": YAML_SCALARS,
        "publish": st.fixed_dictionaries(
            {
                "topic": st.one_of(
                    st.sampled_from(["cmnd/{topic}/POWER", "{name...}/set", "x/{id}"]), YAML_SCALARS
                )
            },
            optional={
                "payload": st.one_of(
                    YAML_SCALARS, json_values(st.sampled_from(["state", "{data}", "id"]))
                ),
                "qos": YAML_SCALARS,
            },
        ),
        "reply": st.fixed_dictionaries(
            {
                "topic": st.one_of(
                    st.sampled_from(["stat/{topic}/RESULT", "{name...}"]), YAML_SCALARS
                )
            },
            optional={
                "timeout": YAML_SCALARS,
                "match": st.one_of(CONDITIONS, st.lists(CONDITIONS, max_size=2)),
                "payload": YAML_SCALARS,
                "data": PATHS,
            },
        ),
    },
)
DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "family": YAML_SCALARS,
        "device_type": YAML_SCALARS,
        "enabled": YAML_SCALARS,
        "description": YAML_SCALARS,
        "rules": st.one_of(st.lists(RULES, max_size=3), YAML_SCALARS),
        "commands": st.one_of(st.lists(COMMANDS, max_size=2), YAML_SCALARS),
        "unknown": YAML_SCALARS,
    },
)


def safe_dump(document: Any) -> str:
    try:
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):  # e.g. a lone surrogate
        return json.dumps(document, default=str)


def exercise(name: str, text: str) -> None:
    """Compile; then build the set, look for conflicts, map and plan with what it made."""
    compiled = attempt(
        f"compile_text ({name})", lambda: compile_text(text, "fuzz.yaml"), MappingError
    )
    if compiled is None:
        return
    rules, command_rules = compiled
    mappings = attempt("MappingSet(...)", lambda: MappingSet(rules, command_rules), MappingError)
    if mappings is None:
        return
    attempt("MappingSet.conflicts", mappings.conflicts)
    for rule in rules:
        topic = "/".join(
            "x" if lv.startswith("{") or lv in "+#" else lv for lv in rule.pattern.text.split("/")
        )
        payload = b'{"ENERGY":{"Power":1},"a":{"b":"x"}}'
        attempt("MappingSet.map (compiled)", partial(mappings.map, topic, payload, NOW))
    for command in command_rules:
        uri = re.sub(r"\{[^}]*\}", "x", command.device)
        plan = attempt(
            "MappingSet.plan_command (compiled)",
            partial(mappings.plan_command, uri, command.service, "ON", CORRELATION),
            CommandRefused,  # a channel the data does not name
        )
        if plan is not None:
            validate_topic_name(plan.topic)


@budget(250)
@given(
    st.one_of(
        st.text(YAML_CHARS, max_size=300),
        st.text(max_size=200),
        st.text(YAML_CHARS, max_size=60),
        # PyYAML is slow on deep nesting (a second for 2,000 levels): kept small and rare.
        st.integers(300, 900).map(lambda n: "[" * n),
    )
)
def test_mapping_loader_on_random_text(text: str) -> None:
    exercise("random text", text)


@budget(250)
@given(DOCUMENTS)
def test_mapping_loader_on_random_documents(document: dict[str, Any]) -> None:
    exercise("random document", safe_dump(document))


@budget(250)
@given(st.sampled_from(sorted(BUNDLED)), st.data())
def test_mapping_loader_on_mutated_bundled_files(name: str, data: st.DataObject) -> None:
    exercise("mutated bundled file", mutate(enabled(BUNDLED[name]), data, YAML_CHARS, YAML_TOKENS))


def test_bundled_files_compile_unchanged() -> None:
    """The mutation fuzzer starts from files that compile (disabled ones forced on)."""
    for name, text in BUNDLED.items():
        rules, _ = compile_text(enabled(text), name)
        assert rules, name


# --- the bugs found, pinned --------------------------------------------------------------

TASMOTA = SETS["tasmota.yaml"]
Z2M = SETS["zigbee2mqtt.yaml"]


def test_bug_huge_integer_reading_is_a_missing_reading() -> None:
    payload = b'{"ENERGY":{"Power":' + b"9" * 400 + b',"Voltage":230}}'
    outcome = TASMOTA.map("tele/kitchen/SENSOR", payload, NOW)
    assert isinstance(outcome, Mapped)
    # Tasmota's convention reads what a message has: the number that is none is left out.
    assert outcome.readings == {"voltage": 230.0} and "power" not in outcome.readings


@pytest.mark.parametrize(
    "value", [10**400, "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
)
def test_bug_device_time_out_of_range_is_no_time(value: Any) -> None:
    assert parse_device_time(value, UTC) is None
    payload = dumps({"state": "ON", "last_seen": value}).encode()
    outcome = Z2M.map("zigbee2mqtt/lamp", payload, NOW)
    assert isinstance(outcome, Mapped) and outcome.time == NOW


DEEP_TEXT = "[" * 100_000


@pytest.mark.parametrize("frame", [DEEP_TEXT, "command:" + DEEP_TEXT, "change:" + DEEP_TEXT])
def test_bug_legacy_deep_frame_is_a_protocol_error(frame: str) -> None:
    with pytest.raises(ProtocolError):
        if frame.startswith("change:"):
            legacy.decode_client_frame(frame)
        else:
            legacy.decode_command(frame)


def test_bug_legacy_credentials_check_on_deep_frame() -> None:
    assert legacy.is_legacy_credentials(DEEP_TEXT) is False


def test_bug_lookup_deep_body_is_a_lookup_error() -> None:
    with pytest.raises(LookupError_):
        parse_lookup_body('{"url":' + DEEP_TEXT, https=False)


def test_bug_invalid_yaml_date_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match=r"^x\.yaml:1:"):
        compile_text("family: 2001-02-30\n", "x.yaml")


def test_bug_deep_yaml_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        compile_text("[" * 1500, "x.yaml")


def test_bug_huge_scale_is_a_mapping_error() -> None:
    text = "rules:\n  - topic: a/{x}\n    readings: {p: {path: a, scale: " + "9" * 400 + "}}\n"
    with pytest.raises(MappingError, match=r"scale"):
        compile_text(text, "x.yaml")


def billion_laughs(levels: int) -> str:
    anchors = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return (
        "commands:\n  - service: 'on'\n    device: 'tasmota:{topic}'\n    publish:\n"
        "      topic: 'cmnd/{topic}/POWER'\n      payload: {" + ", ".join(anchors) + "}\n"
    )


def test_bug_alias_expansion_in_a_mapping_file_is_bounded() -> None:
    text = billion_laughs(5)  # 10^5 strings: fast enough to run, big enough to tell
    assert len(text) < 500
    try:
        _, commands = compile_text(text, "x.yaml")
    except MappingError:
        return
    expanded = len(json.dumps(commands[0].payload))
    assert expanded < 100 * len(text), f"{len(text)} bytes of YAML became {expanded} bytes"


@pytest.mark.parametrize("uri", ["tasmota:\ud800", "tasmota:" + "a" * 70_000])
def test_bug_planned_topic_is_publishable(uri: str) -> None:
    plan = TASMOTA.plan_command(uri, "off", "")
    if plan is None:
        return
    try:
        encoded = plan.topic.encode("utf-8")
    except UnicodeEncodeError:
        raise AssertionError(f"topic {plan.topic[:40]!r} is not UTF-8") from None
    assert len(encoded) <= 65535, "longer than an MQTT topic can be"


def test_bug_plan_without_correlation() -> None:
    mappings = SETS["shelly-gen2.yaml"]
    rule = mappings.commands[0]
    uri = re.sub(r"\{[^}]*\}", "x", rule.device)
    plan = mappings.plan_command(uri, rule.service, "")
    assert plan is not None


# --- the count ---------------------------------------------------------------------------


def test_zz_examples_tried(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the examples each target ran (run the whole file for the full count)."""
    with capsys.disabled():
        print(f"\nfuzz examples tried: {sum(EXAMPLES.values())} in total")
        for target, count in sorted(EXAMPLES.items()):
            print(f"  {count:6d}  {target}")
        if TOLERATED:
            print("known bugs hit (pinned by the test_bug_* tests):")
            for name, count in sorted(TOLERATED.items()):
                print(f"  {count:6d}  {name}")
    assert all(count > 0 for count in EXAMPLES.values())
