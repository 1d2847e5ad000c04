"""fastjson reads what json.loads reads: the same values (types, key order, big integers,
NaN) and the same errors, for any text or bytes."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from adapter import fastjson

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: json writes and reads them
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def outcome(read: Any, data: Any) -> tuple[str, Any]:
    try:
        value = read(data)
    except (ValueError, RecursionError) as exc:
        return ("error", f"{type(exc).__name__}: {exc}")
    return ("value", canonical(value))


def canonical(value: Any) -> Any:
    """Comparable structure: NaN equal to itself, types kept (1 is not 1.0 or True)."""
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    if isinstance(value, dict):
        return ("dict", [(k, canonical(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [canonical(v) for v in value])
    return (type(value).__name__, value)


def expected_bytes(data: bytes) -> tuple[str, Any]:
    return outcome(lambda d: json.loads(d.decode("utf-8")), data)


@given(values, st.booleans())
def test_written_json_reads_the_same(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert outcome(fastjson.loads_text, text) == outcome(json.loads, text)
    data = text.encode("utf-8", "surrogatepass")
    assert outcome(fastjson.loads, data) == expected_bytes(data)


@given(st.binary(max_size=60))
@example(b'{"n": 12345678901234567890123}')
@example(b'{"n": -9223372036854775809}')
@example(b"[1e400, -1e400, NaN, Infinity]")
@example(b'{"a": 1, "a": 2}')
@example(b'"\\ud800"')
@example(b"\xef\xbb\xbf{}")  # a byte order mark
@example(b"\xff")
@example(b"[" * 5000)
def test_any_bytes_read_the_same_or_fail_the_same(data: bytes) -> None:
    assert outcome(fastjson.loads, data) == expected_bytes(data)


@given(st.text(max_size=60))
@example('"\udc00"')
@example("[01]")
def test_any_text_reads_the_same_or_fails_the_same(text: str) -> None:
    assert outcome(fastjson.loads_text, text) == outcome(json.loads, text)


def test_a_tasmota_payload() -> None:
    payload = (
        b'{"Time":"2026-11-24T01:00:00","ENERGY":{"Total":100.500,"Power":78,'
        b'"Factor":0.94,"Voltage":229,"Current":0.357},"Id":12345678901234567890}'
    )
    assert outcome(fastjson.loads, payload) == expected_bytes(payload)
    assert fastjson.loads(payload)["Id"] == 12345678901234567890


def test_dumps_text_is_read_back() -> None:
    readings = {"power": 78.0, "voltage": 229.0, "tëmp": -0.5}
    assert json.loads(fastjson.dumps_text(readings)) == readings
