"""The readings history and the average query (D9) on fixed datasets with a fixed `now`.

Every granularity is checked against hand-computed rows (UTC alignment, Monday weeks,
calendar months, quarters and years, partial first buckets, skipped empty buckets), and a
hypothesis property compares the SQL bucketing with a plain-Python reference implementation
on random datasets. The HTTP layer is `average_response` behind aiohttp's test server.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter import history as history_module
from adapter import httpserver
from adapter.history import (
    GRANULARITIES,
    HistoryStore,
    Query,
    QueryError,
    Reading,
    UnknownDevice,
    average_answer,
    format_stamp,
    parse_query,
    readings_from_metadata,
)
from adapter.sandbox.server import average_response
from tests.integration.test_httpserver import serving

DEVICE = "tasmota:plug"
FAR_FUTURE = "2030-01-01T00:00:00.000Z"
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

Row = tuple[str, float, int]


def t(text: str) -> float:
    """Epoch seconds of an ISO-8601 UTC time (`Z` suffix)."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, text
    return moment.timestamp()


def rows(expected: Sequence[Row]) -> list[dict[str, Any]]:
    return [{"time_stamp": s, "result": r, "data_points": n} for s, r, n in expected]


def fill(
    store: HistoryStore,
    readings: Sequence[tuple[str, float]],
    device: str = DEVICE,
    name: str = "power",
    primary: str | None = "power",
) -> None:
    """One reading per message, recorded newest first (insertion order must not matter)."""
    store.record(
        [Reading(device, t(stamp), {name: value}, primary) for stamp, value in reversed(readings)]
    )


def average(
    store: HistoryStore,
    granularity: str,
    window: str | None = None,
    now: str = FAR_FUTURE,
    measurement: str | None = None,
    device: str = DEVICE,
) -> list[dict[str, Any]]:
    params = {"granularity": granularity}
    if window is not None:
        params["time_window"] = window
    if measurement is not None:
        params["measurement"] = measurement
    return store.average(device, parse_query(params), now=t(now))


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    path: Path | str = (
        tmp_path / "state" / "history.sqlite3" if request.param == "file" else ":memory:"
    )
    history = HistoryStore(path)
    try:
        yield history
    finally:
        history.close()


# --- every granularity on a fixed dataset ----------------------------------------------------

CASES: dict[str, tuple[list[tuple[str, float]], list[Row]]] = {
    "all": (
        [
            ("2016-12-06T13:06:20.205Z", 6.0),
            ("2016-12-06T14:00:00.000Z", 7.0),
            ("2017-01-01T00:00:00.000Z", 8.0),
        ],
        [("2016-12-06T13:06:20.205Z", 7.0, 3)],
    ),
    "second": (
        [
            ("2024-05-01T12:00:00.100Z", 1.0),
            ("2024-05-01T12:00:00.900Z", 3.0),
            ("2024-05-01T12:00:01.000Z", 5.0),
            ("2024-05-01T12:00:03.999Z", 7.0),
        ],
        [
            ("2024-05-01T12:00:00.000Z", 2.0, 2),
            ("2024-05-01T12:00:01.000Z", 5.0, 1),
            ("2024-05-01T12:00:03.000Z", 7.0, 1),
        ],
    ),
    "minute": (
        [
            ("2024-05-01T12:00:00.000Z", 1.0),
            ("2024-05-01T12:00:59.999Z", 2.0),
            ("2024-05-01T12:01:00.000Z", 4.0),
            ("2024-05-01T12:05:30.500Z", 8.0),
        ],
        [
            ("2024-05-01T12:00:00.000Z", 1.5, 2),
            ("2024-05-01T12:01:00.000Z", 4.0, 1),
            ("2024-05-01T12:05:00.000Z", 8.0, 1),
        ],
    ),
    "fifteen_minute": (
        [
            ("2024-05-01T12:00:00.000Z", 1.0),
            ("2024-05-01T12:14:59.999Z", 3.0),
            ("2024-05-01T12:15:00.000Z", 5.0),
            ("2024-05-01T12:44:59.999Z", 7.0),
            ("2024-05-01T13:00:00.000Z", 9.0),
            ("2024-05-01T23:59:59.999Z", 10.0),
            ("2024-05-02T00:00:00.000Z", 20.0),
        ],
        [
            ("2024-05-01T12:00:00.000Z", 2.0, 2),
            ("2024-05-01T12:15:00.000Z", 5.0, 1),
            ("2024-05-01T12:30:00.000Z", 7.0, 1),
            ("2024-05-01T13:00:00.000Z", 9.0, 1),
            ("2024-05-01T23:45:00.000Z", 10.0, 1),
            ("2024-05-02T00:00:00.000Z", 20.0, 1),
        ],
    ),
    "thirty_minute": (
        [
            ("2024-05-01T12:00:00.000Z", 2.0),
            ("2024-05-01T12:29:59.999Z", 4.0),
            ("2024-05-01T12:30:00.000Z", 6.0),
            ("2024-05-01T13:59:59.999Z", 8.0),
            ("2024-05-01T14:00:00.000Z", 10.0),
        ],
        [
            ("2024-05-01T12:00:00.000Z", 3.0, 2),
            ("2024-05-01T12:30:00.000Z", 6.0, 1),
            ("2024-05-01T13:30:00.000Z", 8.0, 1),
            ("2024-05-01T14:00:00.000Z", 10.0, 1),
        ],
    ),
    "hour": (  # the shape of the origin document's example: two non-adjacent buckets
        [
            ("2016-11-29T12:00:00.000Z", 6.0),
            ("2016-11-29T12:59:59.999Z", 7.0),
            ("2016-12-06T13:00:00.000Z", 5.0),
            ("2016-12-06T13:06:20.205Z", 6.0),
            ("2016-12-06T13:59:59.000Z", 7.0),
        ],
        [
            ("2016-11-29T12:00:00.000Z", 6.5, 2),
            ("2016-12-06T13:00:00.000Z", 6.0, 3),
        ],
    ),
    "day": (  # across the leap day
        [
            ("2024-02-28T23:59:59.999Z", 1.0),
            ("2024-02-29T00:00:00.000Z", 2.0),
            ("2024-02-29T23:59:59.999Z", 4.0),
            ("2024-03-01T00:00:00.000Z", 8.0),
            ("2024-03-03T12:00:00.000Z", 16.0),
        ],
        [
            ("2024-02-28T00:00:00.000Z", 1.0, 1),
            ("2024-02-29T00:00:00.000Z", 3.0, 2),
            ("2024-03-01T00:00:00.000Z", 8.0, 1),
            ("2024-03-03T00:00:00.000Z", 16.0, 1),
        ],
    ),
    "week": (  # Sunday → Monday, and a week starting in the previous year (2024-12-30)
        [
            ("2024-06-03T00:00:00.000Z", 1.0),  # Monday
            ("2024-06-09T23:59:59.999Z", 3.0),  # Sunday
            ("2024-06-10T00:00:00.000Z", 5.0),  # Monday
            ("2024-06-12T08:00:00.000Z", 7.0),
            ("2024-06-16T23:59:59.000Z", 9.0),  # Sunday; the week of 06-17 has no data
            ("2024-06-24T00:00:00.000Z", 11.0),
            ("2024-12-29T23:59:59.999Z", 1.0),  # Sunday
            ("2024-12-30T00:00:00.000Z", 2.0),  # Monday
            ("2024-12-31T23:59:59.999Z", 3.0),
            ("2025-01-01T00:00:00.000Z", 4.0),
            ("2025-01-05T23:59:59.999Z", 5.0),  # Sunday
            ("2025-01-06T00:00:00.000Z", 6.0),  # Monday
        ],
        [
            ("2024-06-03T00:00:00.000Z", 2.0, 2),
            ("2024-06-10T00:00:00.000Z", 7.0, 3),
            ("2024-06-24T00:00:00.000Z", 11.0, 1),
            ("2024-12-23T00:00:00.000Z", 1.0, 1),
            ("2024-12-30T00:00:00.000Z", 3.5, 4),
            ("2025-01-06T00:00:00.000Z", 6.0, 1),
        ],
    ),
    "month": (
        [
            ("2024-01-31T23:59:59.999Z", 1.0),
            ("2024-02-01T00:00:00.000Z", 2.0),
            ("2024-02-29T00:00:00.000Z", 3.0),
            ("2024-02-29T23:59:59.999Z", 4.0),
            ("2024-03-01T00:00:00.000Z", 5.0),
            ("2024-05-15T12:00:00.000Z", 6.0),  # April has no data
            ("2024-12-31T23:59:59.999Z", 7.0),
            ("2025-01-01T00:00:00.000Z", 8.0),
        ],
        [
            ("2024-01-01T00:00:00.000Z", 1.0, 1),
            ("2024-02-01T00:00:00.000Z", 3.0, 3),
            ("2024-03-01T00:00:00.000Z", 5.0, 1),
            ("2024-05-01T00:00:00.000Z", 6.0, 1),
            ("2024-12-01T00:00:00.000Z", 7.0, 1),
            ("2025-01-01T00:00:00.000Z", 8.0, 1),
        ],
    ),
    "quarter": (
        [
            ("2024-02-15T00:00:00.000Z", 1.0),
            ("2024-03-31T23:59:59.999Z", 3.0),
            ("2024-04-01T00:00:00.000Z", 4.0),
            ("2024-06-30T23:59:59.999Z", 6.0),
            ("2024-07-01T00:00:00.000Z", 7.0),
            ("2024-09-30T23:59:59.999Z", 9.0),
            ("2024-10-01T00:00:00.000Z", 10.0),
            ("2024-11-15T00:00:00.000Z", 11.0),
            ("2024-12-31T23:59:59.999Z", 12.0),
            ("2025-01-01T00:00:00.000Z", 13.0),
            ("2025-08-01T00:00:00.000Z", 20.0),  # 2025 Q2 has no data
        ],
        [
            ("2024-01-01T00:00:00.000Z", 2.0, 2),
            ("2024-04-01T00:00:00.000Z", 5.0, 2),
            ("2024-07-01T00:00:00.000Z", 8.0, 2),
            ("2024-10-01T00:00:00.000Z", 11.0, 3),
            ("2025-01-01T00:00:00.000Z", 13.0, 1),
            ("2025-07-01T00:00:00.000Z", 20.0, 1),
        ],
    ),
    "year": (
        [
            ("2023-12-31T23:59:59.999Z", 1.0),
            ("2024-01-01T00:00:00.000Z", 2.0),
            ("2024-02-29T12:00:00.000Z", 3.0),
            ("2024-12-31T23:59:59.999Z", 4.0),
            ("2026-01-01T00:00:00.000Z", 5.0),  # 2025 has no data
        ],
        [
            ("2023-01-01T00:00:00.000Z", 1.0, 1),
            ("2024-01-01T00:00:00.000Z", 3.0, 3),
            ("2026-01-01T00:00:00.000Z", 5.0, 1),
        ],
    ),
}


def test_cases_cover_every_granularity() -> None:
    assert set(CASES) == set(GRANULARITIES)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_fixed_dataset(store: HistoryStore, granularity: str) -> None:
    readings, expected = CASES[granularity]
    fill(store, readings)
    assert average(store, granularity) == rows(expected)


def test_stamps_and_results_have_the_d9_types(store: HistoryStore) -> None:
    fill(store, CASES["hour"][0])
    for row in average(store, "hour"):
        assert STAMP.match(row["time_stamp"])
        assert type(row["result"]) is float
        assert type(row["data_points"]) is int


def test_the_data_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "history.sqlite3"
    first = HistoryStore(path)
    fill(first, CASES["month"][0])
    first.close()
    second = HistoryStore(path)
    try:
        assert average(second, "month") == rows(CASES["month"][1])
    finally:
        second.close()


def test_the_first_bucket_of_a_window_is_partial(store: HistoryStore) -> None:
    # now 13:30, window 2h: from 11:30:00.000 (inclusive) to 13:30:00.000 (inclusive).
    fill(
        store,
        [
            ("2024-04-30T11:45:00.000Z", 100.0),
            ("2024-05-01T11:00:00.000Z", 100.0),
            ("2024-05-01T11:29:59.999Z", 100.0),
            ("2024-05-01T11:30:00.000Z", 1.0),
            ("2024-05-01T11:45:00.000Z", 3.0),
            ("2024-05-01T12:10:00.000Z", 5.0),
            ("2024-05-01T13:30:00.000Z", 7.0),
            ("2024-05-01T13:30:00.001Z", 100.0),
            ("2024-05-02T00:00:00.000Z", 100.0),
        ],
    )
    now = "2024-05-01T13:30:00.000Z"
    hourly = rows(
        [
            ("2024-05-01T11:00:00.000Z", 2.0, 2),
            ("2024-05-01T12:00:00.000Z", 5.0, 1),
            ("2024-05-01T13:00:00.000Z", 7.0, 1),
        ]
    )
    for window in ("2h", "120m", "7200s"):
        assert average(store, "hour", window, now) == hourly
    assert average(store, "all", "2h", now) == rows([("2024-05-01T11:30:00.000Z", 4.0, 4)])
    assert average(store, "day", "2h", now) == rows([("2024-05-01T00:00:00.000Z", 4.0, 4)])
    # Without a window: everything up to now, nothing after it.
    assert average(store, "all", None, now) == rows([("2024-04-30T11:45:00.000Z", 316 / 7, 7)])


def test_partial_first_week_and_month(store: HistoryStore) -> None:
    fill(
        store,
        [
            ("2024-06-08T23:59:59.999Z", 100.0),  # Saturday, before the window
            ("2024-06-09T00:00:00.000Z", 1.0),  # Sunday, the window's first instant
            ("2024-06-09T18:00:00.000Z", 3.0),
            ("2024-06-10T00:00:00.000Z", 5.0),  # Monday
            ("2024-06-11T12:00:00.000Z", 7.0),  # now
        ],
    )
    assert average(store, "week", "60h", "2024-06-11T12:00:00.000Z") == rows(
        [("2024-06-03T00:00:00.000Z", 2.0, 2), ("2024-06-10T00:00:00.000Z", 6.0, 2)]
    )
    assert average(store, "month", "60h", "2024-06-11T12:00:00.000Z") == rows(
        [("2024-06-01T00:00:00.000Z", 4.0, 4)]
    )

    other = "tasmota:other"
    fill(
        store,
        [
            ("2024-02-28T23:59:59.999Z", 100.0),
            ("2024-02-29T00:00:00.000Z", 1.0),  # 240h before now
            ("2024-03-05T00:00:00.000Z", 3.0),
        ],
        device=other,
    )
    assert average(store, "month", "240h", "2024-03-10T00:00:00.000Z", device=other) == rows(
        [("2024-02-01T00:00:00.000Z", 1.0, 1), ("2024-03-01T00:00:00.000Z", 3.0, 1)]
    )


def test_the_week_of_the_epoch_starts_on_the_monday_before_it(store: HistoryStore) -> None:
    # 1970-01-01 was a Thursday: devices without a clock report times in that week.
    fill(store, [("1970-01-01T00:00:05.000Z", 1.0), ("1970-01-04T23:59:59.999Z", 3.0)])
    fill(store, [("1970-01-05T00:00:00.000Z", 5.0)])
    assert average(store, "week") == rows(
        [("1969-12-29T00:00:00.000Z", 2.0, 2), ("1970-01-05T00:00:00.000Z", 5.0, 1)]
    )


def test_calendar_buckets_agree_with_fixed_ones_below_a_millisecond(store: HistoryStore) -> None:
    # 0.4 ms before April: the day bucket is March 31, so the month must be March too.
    store.record([Reading(DEVICE, t("2024-03-31T23:59:59.000Z") + 0.9996, {"power": 1.0}, "power")])
    assert average(store, "day")[0]["time_stamp"] == "2024-03-31T00:00:00.000Z"
    assert average(store, "week")[0]["time_stamp"] == "2024-03-25T00:00:00.000Z"
    assert average(store, "month")[0]["time_stamp"] == "2024-03-01T00:00:00.000Z"
    assert average(store, "quarter")[0]["time_stamp"] == "2024-01-01T00:00:00.000Z"
    assert average(store, "year")[0]["time_stamp"] == "2024-01-01T00:00:00.000Z"


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_an_empty_window_is_an_empty_list(store: HistoryStore, granularity: str) -> None:
    fill(store, [("2024-05-01T10:00:00.000Z", 1.0), ("2024-05-01T13:00:00.001Z", 2.0)])
    assert average(store, granularity, "1h", "2024-05-01T13:00:00.000Z") == []
    assert average(store, granularity, "1s", "2024-05-01T10:00:00.999Z") != []


def test_rows_are_ascending_whatever_the_insertion_order(store: HistoryStore) -> None:
    readings, expected = CASES["quarter"]
    shuffled = list(readings)
    random.Random(7).shuffle(shuffled)
    for stamp, value in shuffled:
        store.record([Reading(DEVICE, t(stamp), {"power": value}, "power")])
    assert average(store, "quarter") == rows(expected)


def test_other_devices_do_not_leak_in(store: HistoryStore) -> None:
    fill(store, CASES["day"][0])
    fill(store, [("2024-02-29T06:00:00.000Z", 1000.0)], device="tasmota:plug2")
    fill(store, [("2024-02-29T06:00:00.000Z", 1000.0)], device="tasmota:plu")
    assert average(store, "day") == rows(CASES["day"][1])


# --- measurement, primary, unknown devices ---------------------------------------------------


def test_measurement_selects_another_reading(store: HistoryStore) -> None:
    store.record(
        [
            Reading(
                DEVICE, t("2024-05-01T12:00:00.000Z"), {"power": 10.0, "voltage": 230.0}, "power"
            ),
            Reading(
                DEVICE, t("2024-05-01T12:30:00.000Z"), {"power": 20.0, "voltage": 231.0}, "power"
            ),
            Reading(DEVICE, t("2024-05-01T13:15:00.000Z"), {"voltage": 232.0}, "power"),
        ]
    )
    assert average(store, "hour") == rows([("2024-05-01T12:00:00.000Z", 15.0, 2)])
    assert average(store, "hour", measurement="power") == average(store, "hour")
    assert average(store, "hour", measurement="voltage") == rows(
        [("2024-05-01T12:00:00.000Z", 230.5, 2), ("2024-05-01T13:00:00.000Z", 232.0, 1)]
    )
    assert average(store, "all", measurement="voltage") == rows(
        [("2024-05-01T12:00:00.000Z", 231.0, 3)]
    )
    for granularity in ("all", "hour"):
        assert average(store, granularity, measurement="current") == []
        assert average(store, granularity, measurement="Power") == []


def test_no_primary_and_no_measurement_is_an_empty_list(store: HistoryStore) -> None:
    fill(store, [("2024-05-01T12:00:00.000Z", 5.0)], primary=None)
    assert store.device(DEVICE) is not None
    assert average(store, "all") == []
    assert average(store, "hour") == []
    assert average(store, "all", measurement="power") == rows(
        [("2024-05-01T12:00:00.000Z", 5.0, 1)]
    )


def test_a_known_device_without_readings_is_an_empty_list(store: HistoryStore) -> None:
    store.record([Reading(DEVICE, t("2024-05-01T12:00:00.000Z"), {}, None, "Plug", "t1")])
    assert average(store, "all") == []


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_an_unknown_device_is_unknown(store: HistoryStore, granularity: str) -> None:
    fill(store, [("2024-05-01T12:00:00.000Z", 5.0)])
    with pytest.raises(UnknownDevice):
        average(store, granularity, device="tasmota:nobody")
    with pytest.raises(UnknownDevice):
        average(store, granularity, device=DEVICE.upper())


# --- parse_query ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12h", 43200.0),
        ("1h", 3600.0),
        ("90m", 5400.0),
        ("45s", 45.0),
        ("9999999999s", 9999999999.0),
    ],
)
def test_valid_time_windows(text: str, seconds: float) -> None:
    assert parse_query({"time_window": text}) == Query(seconds, "all", None)


def test_defaults_and_valid_queries() -> None:
    assert parse_query({}) == Query(None, "all", None)
    for granularity in GRANULARITIES:
        query = parse_query({"granularity": granularity, "measurement": "voltage"})
        assert query == Query(None, granularity, "voltage")


@pytest.mark.parametrize(
    "text", ["0h", "-1h", "12", "12d", "1.5h", "h", "", " 12h", "12h ", "12h\n", "12H", "+1h", "٣h"]
)
def test_invalid_time_window(text: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query({"time_window": text, "granularity": "hour"})
    error = caught.value
    assert error.parameter == "time_window"
    assert error.value == text
    assert "h, m or s" in error.accepted
    assert "time_window" in str(error)
    assert error.as_json() == {
        "error": str(error),
        "parameter": "time_window",
        "accepted": error.accepted,
    }


@pytest.mark.parametrize("text", ["hourly", "Hour", "", "HOUR", " hour", "five_minute"])
def test_invalid_granularity(text: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query({"time_window": "12h", "granularity": text})
    error = caught.value
    assert error.parameter == "granularity"
    assert "granularity" in str(error)
    for granularity in GRANULARITIES:
        assert granularity in error.accepted
    assert error.as_json()["parameter"] == "granularity"


def test_invalid_measurement() -> None:
    with pytest.raises(QueryError) as caught:
        parse_query({"measurement": ""})
    assert caught.value.parameter == "measurement"
    assert "measurement" in str(caught.value)
    assert caught.value.accepted


# --- the timestamp format ---------------------------------------------------------------------


def test_format_stamp_examples() -> None:
    assert format_stamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_stamp(t("2016-12-06T13:06:20.205Z")) == "2016-12-06T13:06:20.205Z"
    assert format_stamp(t("2024-02-29T23:59:59.999Z")) == "2024-02-29T23:59:59.999Z"
    assert format_stamp(1.9996) == "1970-01-01T00:00:02.000Z"  # rounded to the millisecond
    assert format_stamp(4e9) == "2096-10-02T07:06:40.000Z"


@given(st.integers(min_value=0, max_value=4_000_000_000_000))
def test_format_stamp_round_trips(millis: int) -> None:
    stamp = format_stamp(millis / 1000)
    assert STAMP.match(stamp)
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert round(parsed.timestamp() * 1000) == millis
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)
    assert parsed == expected


# --- the SQL against a Python reference -------------------------------------------------------

REFERENCE_SIZES = {
    "second": 1,
    "minute": 60,
    "fifteen_minute": 15 * 60,
    "thirty_minute": 30 * 60,
    "hour": 60 * 60,
    "day": 24 * 60 * 60,
}


def reference_bucket(ts: float, granularity: str) -> datetime:
    whole = math.floor(ts)
    if granularity in REFERENCE_SIZES:
        size = REFERENCE_SIZES[granularity]
        return datetime.fromtimestamp(whole // size * size, UTC)
    moment = datetime.fromtimestamp(whole, UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if granularity == "week":
        return midnight - timedelta(days=midnight.weekday())
    if granularity == "month":
        return midnight.replace(day=1)
    if granularity == "quarter":
        return midnight.replace(month=(moment.month - 1) // 3 * 3 + 1, day=1)
    if granularity == "year":
        return midnight.replace(month=1, day=1)
    raise AssertionError(granularity)


def reference_average(
    readings: Sequence[tuple[float, float]], granularity: str, start: float, now: float
) -> list[dict[str, Any]]:
    inside = [(ts, value) for ts, value in readings if start <= ts <= now]
    if not inside:
        return []
    if granularity == "all":
        first = min(ts for ts, _ in inside)
        values = [value for _, value in inside]
        return [
            {
                "time_stamp": format_stamp(first),
                "result": sum(values) / len(values),
                "data_points": len(values),
            }
        ]
    buckets: dict[datetime, list[float]] = {}
    for ts, value in inside:
        buckets.setdefault(reference_bucket(ts, granularity), []).append(value)
    return [
        {
            "time_stamp": start_of.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "result": sum(values) / len(values),
            "data_points": len(values),
        }
        for start_of, values in sorted(buckets.items())
    ]


ANY_TIME = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2096, 12, 31, 23, 59, 59)
).map(lambda moment: moment.replace(tzinfo=UTC).timestamp())
# ±1 ms or ±2 s in microseconds
NEAR = st.integers(min_value=-1000, max_value=1000) | st.integers(-2_000_000, 2_000_000)
NEAR_MONTH = st.builds(
    lambda year, month, micros: datetime(year, month, 1, tzinfo=UTC).timestamp() + micros / 1e6,
    st.integers(min_value=1970, max_value=2096),
    st.integers(min_value=1, max_value=12),
    NEAR,
)
NEAR_MONDAY = st.builds(
    lambda weeks, micros: (
        (datetime(1970, 1, 5, tzinfo=UTC) + timedelta(weeks=weeks)).timestamp() + micros / 1e6
    ),
    st.integers(min_value=0, max_value=6500),
    NEAR,
)
EPOCH_WEEK = st.integers(min_value=0, max_value=5 * 86400_000).map(lambda ms: ms / 1000)
MOMENTS = st.one_of(ANY_TIME, NEAR_MONTH, NEAR_MONDAY, EPOCH_WEEK).filter(lambda ts: ts >= 0)
# Quarter steps keep every sum exact, so SQL and Python agree to the last bit.
VALUES = st.integers(min_value=-4_000_000, max_value=4_000_000).map(lambda n: n / 4)


AFTER_ALL = 4_200_000_000.0  # later than every moment MOMENTS draws


# One run per granularity: a sampled_from would leave some granularities nearly untested.
@pytest.mark.parametrize("granularity", GRANULARITIES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=st.lists(st.tuples(MOMENTS, VALUES), max_size=25),
    noise=st.lists(st.tuples(MOMENTS, VALUES), max_size=5),
    now=st.just(AFTER_ALL) | MOMENTS,
    window=st.none() | st.integers(min_value=1, max_value=5 * 366 * 86400),
)
def test_sql_bucketing_matches_the_reference(
    granularity: str,
    readings: list[tuple[float, float]],
    noise: list[tuple[float, float]],
    now: float,
    window: int | None,
) -> None:
    history = HistoryStore(":memory:")
    try:
        history.record(
            [
                Reading(DEVICE, ts, {"power": value, "other": -value}, "power")
                for ts, value in readings
            ]
            + [Reading("tasmota:noise", ts, {"power": value}, "power") for ts, value in noise]
        )
        if not readings:
            history.record([Reading(DEVICE, now, {}, "power")])
        query = Query(None if window is None else float(window), granularity, None)
        start = 0.0 if window is None else now - window
        assert history.average(DEVICE, query, now=now) == reference_average(
            readings, granularity, start, now
        )
    finally:
        history.close()


# --- record, expire, readings_from_metadata ---------------------------------------------------


def test_readings_keep_their_units_and_an_average_never_mixes_them(store: HistoryStore) -> None:
    c, f = {"temperature": "°C"}, {"temperature": "°F"}
    store.record(
        [
            Reading("t:dev", 100.0, {"temperature": 20.0}, "temperature", "T", "t", c),
            Reading("t:dev", 200.0, {"temperature": 22.0, "humidity": 40.0}, None, "T", "t", c),
        ]
    )
    device = store.device("t:dev")
    assert device is not None
    assert device["readings"] == {
        "temperature": {"value": 22.0, "unit": "°C", "ts": 200.0},
        "humidity": {"value": 40.0, "ts": 200.0},  # no unit known: none given
    }
    everything = Query(None, "all", None)
    assert store.average("t:dev", everything, now=1000.0)[0]["result"] == 21.0
    # The device's TempUnit changed: the average takes the readings in its unit now.
    store.record([Reading("t:dev", 300.0, {"temperature": 77.0}, None, "T", "t", f)])
    store.fold()
    assert store.average("t:dev", everything, now=1000.0) == [
        {"time_stamp": "1970-01-01T00:05:00.000Z", "result": 77.0, "data_points": 1}
    ]
    humidity = Query(None, "all", "humidity")
    assert store.average("t:dev", humidity, now=1000.0)[0]["result"] == 40.0


def test_a_devices_units_are_written_when_new_and_kept_across_chunks_and_restarts(
    tmp_path: Path,
) -> None:
    """Units are written into a device's row only with a shape (names and units) the
    writer has not seen for it; later messages leave them as they are, a changed unit
    replaces its own, and a new writer (a restart) writes them again once."""
    path = tmp_path / "history.sqlite3"
    w, kwh = {"power": "W"}, {"power": "W", "energy": "kWh"}
    first = HistoryStore(path)
    first.record([Reading("t:p", 100.0, {"power": 1.0}, "power", "P", "t", w)])
    first.record([Reading("t:p", 101.0, {"power": 2.0}, "power", "P", "t", w)])
    first.record([Reading("t:p", 102.0, {"power": 3.0, "energy": 9.0}, "power", "P", "t", kwh)])
    first.record([Reading("t:p", 103.0, {"power": 4.0}, "power", "P", "t", w)])
    first.close()
    again = HistoryStore(path)
    again.record([Reading("t:p", 104.0, {"power": 5.0}, "power", "P", "t", {"power": "kW"})])
    again.record([Reading("t:p", 105.0, {"power": 6.0}, "power", "P", "t", {"power": "kW"})])
    device = again.device("t:p")
    assert device is not None
    assert device["readings"] == {
        "power": {"value": 6.0, "unit": "kW", "ts": 105.0},
        "energy": {"value": 9.0, "unit": "kWh", "ts": 102.0},
    }
    again.close()


def test_record_keeps_the_latest_state_of_each_device(store: HistoryStore) -> None:
    store.record([])
    assert store.devices() == []
    store.record(
        [
            Reading("b:dev", 100.0, {"power": 1.0}, "power", "B", "type-b"),
            Reading("a:dev", 200.0, {"power": 2.0}, "power", "A", "type-a"),
            Reading("a:dev", 300.0, {"power": 3.0, "voltage": 230.0}, "power", "A", "type-a"),
        ]
    )
    assert store.devices() == [
        {
            "uri": "a:dev",
            "name": "A",
            "type": "type-a",
            "primary": "power",
            "last_seen": "1970-01-01T00:05:00.000Z",
            "last_readings": {"power": 3.0, "voltage": 230.0},
            "readings": {
                "power": {"value": 3.0, "ts": 300.0},
                "voltage": {"value": 230.0, "ts": 300.0},
            },
        },
        {
            "uri": "b:dev",
            "name": "B",
            "type": "type-b",
            "primary": "power",
            "last_seen": "1970-01-01T00:01:40.000Z",
            "last_readings": {"power": 1.0},
            "readings": {"power": {"value": 1.0, "ts": 100.0}},
        },
    ]
    # A message received later wins whatever time it carries (a device's clock may be off,
    # and messages without a time of their own are stamped by the adapter); last_seen
    # stays the newest time seen, and every reading is history all the same.
    store.record([Reading("a:dev", 250.0, {"power": 2.5}, "power", "A", "type-a")])
    device = store.device("a:dev")
    assert device is not None
    assert device["last_seen"] == "1970-01-01T00:05:00.000Z"
    assert device["last_readings"] == {"power": 2.5, "voltage": 230.0}
    assert device["readings"]["power"] == {"value": 2.5, "ts": 250.0}
    assert store.average("a:dev", Query(None, "all", None), now=1000.0) == [
        {"time_stamp": "1970-01-01T00:03:20.000Z", "result": 2.5, "data_points": 3}
    ]
    # A newer message without readings or primary moves last_seen only.
    store.record([Reading("a:dev", 400.5, {}, None, "A", "type-a")])
    device = store.device("a:dev")
    assert device is not None
    assert device["last_seen"] == "1970-01-01T00:06:40.500Z"
    assert device["last_readings"] == {"power": 2.5, "voltage": 230.0}
    assert device["primary"] == "power"
    # A message with other readings (another topic of the device, a partial update)
    # merges into them (issue [12]).
    store.record([Reading("a:dev", 500.0, {"energy": 7.0, "power": 4.0}, "energy", "A2", "type-a")])
    assert store.device("a:dev") == {
        "uri": "a:dev",
        "name": "A2",
        "type": "type-a",
        "primary": "energy",
        "last_seen": "1970-01-01T00:08:20.000Z",
        "last_readings": {"power": 4.0, "voltage": 230.0, "energy": 7.0},
        "readings": {  # each with the time of the message that brought it
            "power": {"value": 4.0, "ts": 500.0},
            "voltage": {"value": 230.0, "ts": 300.0},
            "energy": {"value": 7.0, "ts": 500.0},
        },
    }
    # Within one batch, in the order the messages came.
    store.record(
        [
            Reading("b:dev", 700.0, {"power": 9.0}, "power", "B", "type-b"),
            Reading("b:dev", 600.0, {"power": 8.0, "energy": 2.0}, "power", "B", "type-b"),
        ]
    )
    device = store.device("b:dev")
    assert device is not None and device["last_readings"] == {"power": 8.0, "energy": 2.0}
    assert device["last_seen"] == "1970-01-01T00:11:40.000Z"
    assert store.device("c:dev") is None


def test_one_batch_with_a_message_without_readings_last(store: HistoryStore) -> None:
    # A new device whose newest message in the batch carries no readings (and so no
    # primary): the batch's earlier readings and primary still count.
    store.record(
        [
            Reading("a:dev", 100.0, {"power": 1.0}, "power", "A", "t"),
            Reading("a:dev", 200.0, {}, None, "A", "t"),
        ]
    )
    device = store.device("a:dev")
    assert device is not None
    assert device["last_seen"] == "1970-01-01T00:03:20.000Z"
    assert device["last_readings"] == {"power": 1.0}
    assert device["primary"] == "power"
    assert store.average("a:dev", Query(None, "all", None), now=1000.0) == [
        {"time_stamp": "1970-01-01T00:01:40.000Z", "result": 1.0, "data_points": 1}
    ]


def test_expire_drops_readings_older_than_the_retention(tmp_path: Path) -> None:
    history = HistoryStore(tmp_path / "h.sqlite3", retention=100.0)
    try:
        now = 10_000.0
        history.record(
            [
                Reading(DEVICE, now - 200.0, {"power": 1.0, "voltage": 9.0}, "power"),
                Reading(DEVICE, now - 100.0, {"power": 2.0}, "power"),  # exactly at the cutoff
                Reading(DEVICE, now - 50.0, {"power": 4.0}, "power"),
            ]
        )
        assert history.expire(now) == 2
        assert history.expire(now) == 0
        assert history.average(DEVICE, Query(None, "all", None), now=now) == [
            {"time_stamp": format_stamp(now - 100.0), "result": 3.0, "data_points": 2}
        ]
        assert history.device(DEVICE) is not None  # the device itself stays known
    finally:
        history.close()

    recent = HistoryStore(":memory:", retention=3600.0)
    try:
        wall = time.time()
        recent.record(
            [Reading(DEVICE, wall - 7200.0, {"power": 1.0}), Reading(DEVICE, wall, {"power": 2.0})]
        )
        assert recent.expire() == 1
    finally:
        recent.close()


def test_readings_from_metadata() -> None:
    metadata = json.dumps(
        {
            "time": "2024-05-01T12:00:00.205Z",
            "topic": "tele/plug/SENSOR",
            "readings": {
                "power": 12,
                "voltage": 230.5,
                "on": True,
                "off": False,
                "name": "x",
                "missing": None,
                "list": [1],
                "big": 10**30,
                "huge": 10**400,
            },
            "primary": "power",
        }
    )
    reading = readings_from_metadata(DEVICE, metadata, 5.0)
    assert reading == Reading(
        DEVICE,
        t("2024-05-01T12:00:00.205Z"),
        {"power": 12.0, "voltage": 230.5, "big": 1e30},
        "power",
    )
    assert reading is not None
    assert all(type(v) is float for v in reading.values.values())


@pytest.mark.parametrize(
    "metadata", ["", "not json", "{", "[1, 2]", "null", "12", '{"readings": [1]}', '{"time": "x"}']
)
def test_metadata_without_readings_is_none(metadata: str) -> None:
    assert readings_from_metadata(DEVICE, metadata, 5.0) is None


@pytest.mark.parametrize(
    ("time_field", "expected"),
    [
        ("2024-05-01T14:00:00.000+02:00", t("2024-05-01T12:00:00.000Z")),
        ("2024-05-01T12:00:00Z", t("2024-05-01T12:00:00.000Z")),
        ("yesterday", 5.0),
        ("", 5.0),
        (1714564800, 5.0),
        (None, 5.0),
    ],
)
def test_metadata_time_and_its_fallback(time_field: object, expected: float) -> None:
    metadata = json.dumps({"time": time_field, "readings": {"power": 1}, "primary": 7})
    assert readings_from_metadata(DEVICE, metadata, 5.0) == Reading(
        DEVICE, expected, {"power": 1.0}, None
    )
    no_time = json.dumps({"readings": {}})
    assert readings_from_metadata(DEVICE, no_time, 5.0) == Reading(DEVICE, 5.0, {}, None)


def test_metadata_with_non_finite_numbers_is_recordable(store: HistoryStore) -> None:
    # Python's JSON parser accepts NaN and Infinity; neither is a reading to average.
    metadata = (
        '{"readings": {"power": NaN, "voltage": Infinity, "current": 0.5}, "primary": "power"}'
    )
    reading = readings_from_metadata(DEVICE, metadata, 60.0)
    assert reading == Reading(DEVICE, 60.0, {"current": 0.5}, "power")
    store.record([reading])
    assert average(store, "all", measurement="current") == rows(
        [("1970-01-01T00:01:00.000Z", 0.5, 1)]
    )


# --- the HTTP layer ---------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SLASHED = "z2m:living room/sensor:1"


@pytest.fixture(params=["adapter", "sandbox"])
async def client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Any, float]]:
    """The average route on the adapter's own HTTP server (adapter/httpserver.py) and on
    the sandbox's aiohttp application."""
    history = HistoryStore(":memory:")
    wall = round(time.time(), 3)
    history.record(
        [
            Reading(DEVICE, wall - 1800.0, {"power": 10.0, "voltage": 230.0}, "power"),
            Reading(DEVICE, wall - 600.0, {"power": 20.0, "voltage": 232.0}, "power"),
            Reading(DEVICE, wall - 7200.0, {"power": 99.0}, "power"),
            Reading(SLASHED, wall - 60.0, {"temperature": 21.5}, "temperature"),
        ]
    )
    try:
        if request.param == "sandbox":

            async def handler(request: web.Request) -> web.Response:
                return average_response(history, request)

            app = web.Application()
            app.router.add_get(r"/devices/{id:.+}/average", handler)
            async with TestClient(TestServer(app)) as test_client:
                yield test_client, wall
            return

        async def average(request: httpserver.Request) -> httpserver.Response:
            status, body = average_answer(history, request.params["id"], request.query, time.time())
            return httpserver.json_response(body, status)

        router = httpserver.Router()
        router.add("GET", "/devices/{id:.+}/average", average)
        async with (
            serving(router) as port,
            aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session,
        ):
            yield session, wall
    finally:
        history.close()


HttpClient = tuple[Any, float]  # an aiohttp TestClient or ClientSession: get(path, params)


def path_of(device: str) -> str:
    return f"/devices/{quote(device, safe='')}/average"


@pytest.mark.anyio
async def test_http_rows(client: HttpClient) -> None:
    http, wall = client
    answer = await http.get(path_of(DEVICE), params={"time_window": "1h"})
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert await answer.json() == [
        {"time_stamp": format_stamp(wall - 1800.0), "result": 15.0, "data_points": 2}
    ]
    answer = await http.get(
        path_of(DEVICE), params={"granularity": "all", "measurement": "voltage"}
    )
    assert await answer.json() == [
        {"time_stamp": format_stamp(wall - 1800.0), "result": 231.0, "data_points": 2}
    ]
    answer = await http.get(path_of(DEVICE), params={"time_window": "3h", "granularity": "minute"})
    body = await answer.json()
    assert [row["data_points"] for row in body] == [1, 1, 1]
    assert [row["result"] for row in body] == [99.0, 10.0, 20.0]
    assert all(
        STAMP.match(row["time_stamp"]) and row["time_stamp"].endswith(":00.000Z") for row in body
    )
    answer = await http.get(path_of(DEVICE), params={"time_window": "1s"})
    assert answer.status == 200
    assert await answer.json() == []


@pytest.mark.anyio
async def test_http_device_ids_with_slashes_and_colons(client: HttpClient) -> None:
    http, wall = client
    expected = [{"time_stamp": format_stamp(wall - 60.0), "result": 21.5, "data_points": 1}]
    encoded = "/devices/z2m%3Aliving%20room%2Fsensor%3A1/average"
    assert path_of(SLASHED) == encoded
    answer = await http.get(encoded)
    assert answer.status == 200
    assert await answer.json() == expected
    # The route takes an unencoded slash too.
    answer = await http.get("/devices/z2m:living%20room/sensor:1/average")
    assert answer.status == 200
    assert await answer.json() == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "parameter", "accepted"),
    [
        ({"time_window": "12d"}, "time_window", "h, m or s"),
        ({"time_window": "0h"}, "time_window", "h, m or s"),
        ({"granularity": "hourly"}, "granularity", ", ".join(GRANULARITIES)),
        ({"time_window": "1h", "measurement": ""}, "measurement", "numeric reading"),
    ],
)
async def test_http_bad_parameters(
    client: HttpClient, params: dict[str, str], parameter: str, accepted: str
) -> None:
    http, _ = client
    for device in (DEVICE, "tasmota:nobody"):  # a bad query is a 400 before any lookup
        answer = await http.get(path_of(device), params=params)
        assert answer.status == 400
        assert answer.content_type == "application/json"
        body = await answer.json()
        assert body["parameter"] == parameter
        assert accepted in body["accepted"]
        assert parameter in body["error"]


@pytest.mark.anyio
async def test_http_unknown_device(client: HttpClient) -> None:
    http, _ = client
    for device in ("tasmota:nobody", "z2m:living room/sensor"):
        answer = await http.get(path_of(device), params={"time_window": "1h"})
        assert answer.status == 404
        assert answer.content_type == "application/json"
        body = await answer.json()
        assert device in body["error"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8))
def test_stored_values_are_the_readings_bit_for_bit(values: list[float]) -> None:
    """The writer hands SQLite each message's readings as a JSON array: what SQLite reads
    back must be the very floats, or the averages drift from the platform's."""
    history = HistoryStore(":memory:")
    try:
        readings = {f"r{i}": value for i, value in enumerate(values)}
        history.record([Reading("dev", 1000.0, readings)])
        history.fold()  # from the staging table into the indexed one
        stored = history.db.execute(
            "SELECT s.name, m.vals ->> ls.pos FROM messages AS m"
            " JOIN layout_series AS ls ON ls.layout = m.layout"
            " JOIN series AS s ON s.id = ls.series ORDER BY s.name"
        ).fetchall()
        # Bit for bit, the sign of a zero included (kept in the JSON text).
        assert [(name, value.hex()) for name, value in stored] == [
            (name, value.hex()) for name, value in readings.items()
        ]
    finally:
        history.close()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 20_000),  # tenths of a second: ties in time are likely
            st.sampled_from([0.1, 0.2, 0.3, 1e16, -1e16, 1.0, 2.5])  # sums that round
            | st.floats(-1e6, 1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=120,
    ),
    st.lists(st.integers(0, 120), max_size=4),
)
def test_staged_and_folded_readings_give_the_same_answers_to_the_bit(
    rows: list[tuple[int, float]], folds: list[int]
) -> None:
    """Where readings are (the staging table, the indexed one, both) must not change an
    answer, not even in the last bit of an average: the sandbox folds at other moments."""
    start = 1_800_000_000.0
    readings = [Reading("dev", start + t / 10, {"power": v}, "power") for t, v in rows]
    folded, mixed = HistoryStore(":memory:"), HistoryStore(":memory:")
    try:
        folded.record(readings)
        folded.fold()
        cuts = sorted({0, len(readings), *(min(f, len(readings)) for f in folds)})
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            mixed.record(readings[a:b])
            if i % 2 == 0:
                mixed.fold()
        now = start + 2_100
        for granularity in GRANULARITIES:
            for window in (None, 600.0):
                query = Query(window, granularity, None)
                expected = folded.average("dev", query, now)
                assert mixed.average("dev", query, now) == expected
                assert [json.dumps(r) for r in mixed.average("dev", query, now)] == [
                    json.dumps(r) for r in expected
                ]
    finally:
        folded.close()
        mixed.close()


def test_readings_are_folded_by_count_and_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "FOLD_ROWS", 5)
    store = HistoryStore(":memory:")
    try:

        def counts() -> tuple[int, ...]:  # messages, folded and staged
            return tuple(
                store.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("messages", "messages_recent")
            )

        store.record([Reading("dev", 1000.0 + i, {"a": 1.0, "b": 2.0}) for i in range(4)])
        assert counts() == (0, 4)
        store.record([Reading("dev", 2000.0, {"a": 1.0, "b": 2.0})])
        assert counts() == (5, 0)  # 5 staged: moved
        store.record([Reading("dev", 3000.0, {"a": 1.0})])
        assert counts() == (5, 1)
        monkeypatch.setattr(history_module, "FOLD_EVERY", 0.0)
        store.record([Reading("dev", 3001.0, {"a": 1.0})])
        assert counts() == (7, 0)  # the time is up: moved whatever the count
        # Retention covers both tables, and counts readings, not messages.
        monkeypatch.setattr(history_module, "FOLD_EVERY", 3600.0)
        store.record([Reading("dev", 50.0, {"a": 1.0})])
        assert counts() == (7, 1)
        assert store.expire(now=store.retention + 2500.0) == 10 + 1  # before ts 2500
        assert counts() == (2, 0)
    finally:
        store.close()


def test_staged_readings_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    store = HistoryStore(path)
    store.record([Reading("dev", 1000.0, {"power": 5.0}, "power")])
    store.close()
    again = HistoryStore(path)
    try:
        assert again.average("dev", Query(None, "all", None), 2000.0)[0]["result"] == 5.0
        assert again.fold() == 1
        assert again.average("dev", Query(None, "all", None), 2000.0)[0]["result"] == 5.0
    finally:
        again.close()


def test_a_device_with_several_message_shapes_keeps_each_reading_apart(
    store: HistoryStore,
) -> None:
    # Tasmota's SENSOR and STATE alternate; a unit changes; more shapes than are remembered.
    w = {"power": "W"}
    batch = []
    for i in range(40):
        batch.append(
            Reading("t:dev", 100.0 + i, {"power": float(i), "voltage": 230.0}, None, "T", "t", w)
        )
        batch.append(Reading("t:dev", 100.5 + i, {"state": float(i % 2)}, None, "T", "t"))
        batch.append(Reading("t:dev", 100.7 + i, {f"extra_{i}": 1.0}, None, "T", "t"))
    store.record(batch)
    store.record([Reading("t:dev", 500.0, {"power": 2.0}, None, "T", "t", {"power": "kW"})])
    every = Query(None, "all", "power")
    # The newest power is in kW (its own series), the 40 before in W are not mixed in.
    assert store.average("t:dev", every, now=1000.0)[0]["data_points"] == 1
    assert store.average("t:dev", Query(None, "all", "state"), now=1000.0)[0] == {
        "time_stamp": "1970-01-01T00:01:40.500Z",
        "result": 0.5,
        "data_points": 40,
    }
    assert store.average("t:dev", Query(None, "all", "extra_39"), now=1000.0)[0]["result"] == 1.0
    assert store.average("t:dev", Query(None, "all", "voltage"), now=1000.0)[0]["data_points"] == 40


def test_the_channels_a_device_reported(store: HistoryStore) -> None:
    store.record(
        [
            Reading("e:node", 1.0, {"state_relay": 1.0, "temperature": 20.0}, None, "N", "t"),
            Reading("t:plug", 1.0, {"state": 1.0, "state_2": 0.0, "power": 5.0}, None, "P", "t"),
        ]
    )
    assert store.channels("e:node") == ["relay"]
    assert sorted(store.channels("t:plug")) == ["", "2"]
    assert store.channels("x:none") == []


# --- HISTORY_MAX_BYTES (issue [14]) ---------------------------------------------------------


def test_the_history_keeps_to_its_disk_budget_dropping_the_oldest(tmp_path: Path) -> None:
    """A day of readings of 50 devices in a history allowed 1 MB: the oldest go, the newest
    stay, the pages in use fit the budget and the removed readings are counted."""
    path = tmp_path / "history.sqlite3"
    budget = 1_000_000
    store = HistoryStore(path, retention=30 * 86400.0, max_bytes=budget)
    start = 1_800_000_000.0
    for minute in range(0, 24 * 60, 2):
        store.record(
            [
                Reading(
                    f"t:dev{d}", start + minute * 60 + d, {"power": 1.0, "energy": 1.0}, "power"
                )
                for d in range(50)
            ]
        )
    store.fold()
    before = store.used_bytes()
    assert before > budget  # the case the budget is for
    now = start + 24 * 3600
    dropped = store.expire(now)
    after = store.used_bytes()
    everything = Query(None, "all", None)
    (row,) = store.average("t:dev7", everything, now=now)
    print(f"used {before:,} -> {after:,} bytes (budget {budget:,}); dropped {dropped} readings")
    assert after <= budget
    assert dropped == store.dropped_for_space > 0
    # The oldest went first: what is left is the newest, up to the last minute.
    assert row["time_stamp"] > format_stamp(start + 3600)
    assert store.average("t:dev7", Query(600.0, "all", None), now=now)[0]["data_points"] == 5
    # Within the budget, nothing more goes.
    assert store.expire(now) == 0
    store.close()
    # Freed pages are reused: more readings do not grow the file past the budget's reach.
    size = path.stat().st_size
    again = HistoryStore(path, retention=30 * 86400.0, max_bytes=budget)
    again.record([Reading("t:dev0", now + k, {"power": 1.0}, "power") for k in range(2000)])
    again.fold()
    again.close()
    assert path.stat().st_size <= size


def test_no_budget_means_nothing_is_trimmed(store: HistoryStore) -> None:
    store.record([Reading("t:d", 100.0, {"power": 1.0})])
    assert store.trim(200.0) == 0 and store.dropped_for_space == 0
