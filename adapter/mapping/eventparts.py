"""The two parts an event carries (decision D10): `data`, the payload exactly as the
device published it (UTF-8 text, else base64), and `metadata`, JSON text with the receive
time, the topic, the readings the rule extracted and the primary one. Also the time
format the platform's answers use (D9). Pure.
"""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z: `2026-11-23T20:14:04.123Z` (D9, D10)."""
    moment = moment.astimezone(UTC)
    # strftime is the dearest part of an event's metadata and its text changes once a
    # second: it is remembered per second (events come in bursts of the same seconds).
    second = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    prefix = _SECONDS.get(second)
    if prefix is None:
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        _SECONDS[second] = prefix
    return prefix + _MILLIS[moment.microsecond // 1000]


_SECONDS: dict[tuple[int, int, int, int, int, int], str] = {}
_SECONDS_KEPT = 4096  # seconds remembered (cleared when full): about an hour of traffic
_MILLIS = tuple(f"{millis:03d}Z" for millis in range(1000))


def to_millis(moment: datetime) -> datetime:
    """The instant `format_time` writes: microseconds cut to milliseconds."""
    cut = moment.microsecond % 1000
    # Datetimes are immutable: a moment already on a millisecond is its own answer.
    return moment if cut == 0 else moment.replace(microsecond=moment.microsecond - cut)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def millis_timestamp(moment: datetime) -> float:
    """`to_millis(moment).timestamp()` (the same float: both divide the same integer
    exactly), without building the cut datetime."""
    if moment.tzinfo is None:  # local time: only timestamp() knows the zone's rules
        return to_millis(moment).timestamp()
    return ((moment - _EPOCH) // _MILLISECOND) / 1000


def payload_text(payload: bytes) -> tuple[str, str | None]:
    """The device payload as event text: UTF-8 as is, otherwise base64 (D10)."""
    try:
        return payload.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


class TextPieces(NamedTuple):
    """`payload_text` of a payload too large to copy whole: the text's UTF-8 length, its
    encoding, and the text as UTF-8 pieces of at most about `PIECE` bytes each."""

    length: int
    encoding: str | None
    pieces: Iterator[bytes | memoryview]


PIECE = 3 << 20  # a multiple of 3: base64 of consecutive pieces is base64 of the whole


def payload_text_pieces(payload: bytes) -> TextPieces:
    """What `payload_text` gives, read in pieces: the payload is never decoded or encoded
    whole, so a payload of hundreds of MB costs a few MB more, not its size again."""
    view = memoryview(payload)
    if _is_utf8(view):  # the text is the payload's own bytes
        return TextPieces(
            len(view), None, (view[at : at + PIECE] for at in range(0, len(view), PIECE))
        )
    return TextPieces(
        -(-len(view) // 3) * 4,
        "base64",
        (base64.b64encode(view[at : at + PIECE]) for at in range(0, len(view), PIECE)),
    )


def _is_utf8(view: memoryview) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for at in range(0, len(view), PIECE):
            decoder.decode(view[at : at + PIECE])  # the text made is dropped at once
        decoder.decode(b"", final=True)  # a sequence cut off at the end
    except UnicodeDecodeError:
        return False
    return True


def event_metadata(
    *,
    time: datetime,
    topic: str,
    readings: Mapping[str, float],
    primary: str | None,
    encoding: str | None = None,
    units: Mapping[str, str] | None = None,
) -> str:
    """`{"time", "topic", "readings", "primary"[, "units"][, "encoding"]}`: the units of
    the readings that have one (D10 as amended), none when no reading has a unit."""
    body: dict[str, Any] = {
        "time": format_time(time),
        "topic": topic,
        "readings": readings,
        "primary": primary,
    }
    if units:
        body["units"] = units
    if encoding:
        body["encoding"] = encoding
    if _finite_floats(readings):
        # orjson: a fifth of the standard encoder's time for the same JSON (it writes an
        # exponent as 1e16 where Python writes 1e+16). It takes plain dicts and str keys
        # only, and would write NaN as null: anything else goes to the encoder.
        try:
            return orjson.dumps(body).decode("utf-8")
        except TypeError:
            pass
    body["readings"] = dict(readings)
    if units:
        body["units"] = dict(units)
    return _METADATA_ENCODER.encode(body)


def _finite_floats(readings: Mapping[str, float]) -> bool:
    # value - value is 0.0 exactly for finite floats (NaN and infinities give NaN).
    return all(value.__class__ is float and value - value == 0.0 for value in readings.values())


# What json.dumps(body, ensure_ascii=False, separators=(",", ":")) uses, made once: dumps
# builds a new encoder for every call when given arguments.
_METADATA_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
