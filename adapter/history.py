"""Readings history and the origin document's average query (decision D9).

One module for both servers: the adapter records what its mappings extract, the sandbox
platform records `metadata.readings` of the events it receives (D10), and both answer
`GET /devices/{id}/average` through `HistoryStore.average`, so their answers agree.

Buckets are computed in SQL on integer epoch arithmetic (second … day, Monday-aligned
weeks) or calendar fields (month, quarter, year), all in UTC.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from adapter import fastjson
from adapter.mapping.renames import device_of, physical_device, reading_of
from adapter.migrations import Migration, open_versioned
from adapter.sqlitedb import disk_full, transaction
from adapter.status import HistoryStatus

GRANULARITIES = (
    "all",
    "second",
    "minute",
    "fifteen_minute",
    "thirty_minute",
    "hour",
    "day",
    "week",
    "month",
    "quarter",
    "year",
)
FIXED_SECONDS = {
    "second": 1,
    "minute": 60,
    "fifteen_minute": 900,
    "thirty_minute": 1800,
    "hour": 3600,
    "day": 86400,
}
WEEK = 7 * 86400
MONDAY = 4 * 86400  # 1970-01-05 was the first Monday after the epoch
_WINDOW = re.compile(r"^([1-9][0-9]{0,9})([hms])$")
_UNIT = {"h": 3600, "m": 60, "s": 1}

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
DROP INDEX IF EXISTS readings_by_device;
-- Covering: the average query reads the index alone (1M readings: 590 -> 355 ms).
CREATE INDEX IF NOT EXISTS readings_cover ON readings(device, name, ts, value);
CREATE TABLE IF NOT EXISTS devices (
    uri TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', type TEXT NOT NULL DEFAULT '',
    primary_reading TEXT, last_seen REAL, last_readings TEXT NOT NULL DEFAULT '{}');
"""
# A reading's series: one device's reading of one name in one unit ('' when none is
# known); its samples refer to it by number, so a sample row is three numbers and the
# covering index small (12 readings a message cost half the CPU and disk of rows that
# repeat device, name and unit).
SERIES_SCHEMA = """
CREATE TABLE series (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, name TEXT NOT NULL,
    unit TEXT NOT NULL DEFAULT '', UNIQUE (device, name, unit));
CREATE TABLE samples (series INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
CREATE TABLE samples_recent (series INTEGER NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);
ALTER TABLE devices ADD COLUMN units TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN times TEXT NOT NULL DEFAULT '{}';
"""
# A row per message, not per reading: a Tasmota energy message is 10 readings, and their
# 10 index entries were most of the history's cost (in CPU and on disk). A device's message
# shape is a layout, its series in order; `vals` is the JSON array of the message's values
# in that order, and layout_series says where a series' value is in the layouts that have it.
# A device's state is in its layouts too (each one's newest message): the devices table
# keeps name, type, primary and last_seen.
MESSAGES_SCHEMA = """
CREATE TABLE layouts (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, series TEXT NOT NULL UNIQUE,
    last_ts REAL, last_vals TEXT, arrival INTEGER NOT NULL DEFAULT 0);
CREATE TABLE layout_series (
    series INTEGER NOT NULL, layout INTEGER NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (series, layout)) WITHOUT ROWID;
CREATE TABLE messages (layout INTEGER NOT NULL, ts REAL NOT NULL, vals TEXT NOT NULL);
CREATE TABLE messages_recent (layout INTEGER NOT NULL, ts REAL NOT NULL, vals TEXT NOT NULL);
"""
# Schema versions (adapter/migrations.py): SCHEMA above is version 1, the first release.
# Do not edit it or any released migration; append one for every change, and
# tests/integration/test_migrations.py checks that files of every earlier version open.
MIGRATIONS = (
    Migration(1, "readings with a covering index, and devices", SCHEMA),
    Migration(
        2,
        "new readings staged in a table without index, folded into readings in bulk",
        "CREATE TABLE IF NOT EXISTS readings_recent ("
        " device TEXT NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL);",
    ),
    Migration(
        3,
        "readings as series (device, name, unit) and their samples, each reading with its"
        " unit; each device's readings with unit and time; one device per physical device"
        " (the split uris of the bundled Shelly and ESPHome files re-keyed, renamed"
        " readings renamed, Shelly energy converted to kWh)",
        SERIES_SCHEMA,
        function=lambda db: _one_device_per_physical_device(db),
    ),
    Migration(
        4,
        "readings stored a row per message (its layout: the series of its values), not a"
        " row per reading",
        MESSAGES_SCHEMA,
        function=lambda db: _samples_to_messages(db),
    ),
)


class QueryError(ValueError):
    """A bad query parameter: 400 with the parameter and the accepted values."""

    def __init__(self, parameter: str, value: str, accepted: str) -> None:
        super().__init__(f"invalid {parameter} {value!r}: expected {accepted}")
        self.parameter = parameter
        self.value = value
        self.accepted = accepted

    def as_json(self) -> dict[str, str]:
        return {"error": str(self), "parameter": self.parameter, "accepted": self.accepted}


log = logging.getLogger("adapter.history")
EXPIRE_EVERY = 60.0  # seconds between deletes of readings past the retention
GATHER = 0.01  # seconds the writer waits for more readings before a transaction
# New messages are appended to messages_recent (no index: a transaction writes a few pages)
# and moved into the indexed table in bulk, sorted, when this many are staged or this long
# after the last move. Written straight into the index, each transaction rewrote a page
# per device it touched: at 2,000 devices that cost more than the rest of the adapter's
# work and held back the intake. An average over staged readings scans at most this many
# rows (a few ms).
FOLD_ROWS = 50_000
RECORD_CHUNK = 250  # messages a transaction of the writer holds at most
MAX_LAYOUTS = 16  # message shapes remembered per device (Tasmota: SENSOR, STATE, ...)
FOLD_EVERY = 30.0  # seconds


class UnknownDevice(LookupError):
    """404: the store has never seen this device."""


@dataclass(frozen=True)
class Query:
    window: float | None  # seconds back from now; None = since the epoch
    granularity: str
    measurement: str | None


def parse_query(params: Mapping[str, str]) -> Query:
    window_text = params.get("time_window")
    window = None
    if window_text is not None:
        match = _WINDOW.fullmatch(window_text)  # `$` alone would accept "12h\n"
        if match is None:
            raise QueryError(
                "time_window", window_text, "a positive whole number with h, m or s, e.g. 12h"
            )
        window = float(int(match.group(1)) * _UNIT[match.group(2)])
    granularity = params.get("granularity", "all")
    if granularity not in GRANULARITIES:
        raise QueryError("granularity", granularity, "one of " + ", ".join(GRANULARITIES))
    measurement = params.get("measurement")
    if measurement is not None and not measurement:
        raise QueryError("measurement", measurement, "the name of a numeric reading")
    return Query(window, granularity, measurement)


def average_answer(
    history: HistoryStore, uri: str, params: Mapping[str, str], now: float
) -> tuple[int, Any]:
    """`GET /devices/{id}/average` (D9) as (HTTP status, JSON body): 400 for a bad
    parameter, 404 for a device the store has never seen. Shared by the adapter's API and
    the sandbox."""
    try:
        return 200, history.average(uri, parse_query(params), now)
    except QueryError as exc:
        return 400, exc.as_json()
    except UnknownDevice:
        return 404, {"error": f"unknown device {uri!r}"}


def format_stamp(seconds: float) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` (D9), millisecond-exact."""
    millis = round(seconds * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def bucket_sql(granularity: str) -> str:
    """An SQL expression for the UTC-aligned bucket start (epoch seconds) of `ts`."""
    if granularity in FIXED_SECONDS:
        size = FIXED_SECONDS[granularity]
        return f"(CAST(ts AS INTEGER) / {size} * {size})"
    if granularity == "week":
        # Offset from the Monday before the epoch (1969-12-29), so that SQLite's division
        # (truncating toward zero) also floors 1970-01-01 … 04 into that week.
        before = WEEK - MONDAY
        return f"((CAST(ts AS INTEGER) + {before}) / {WEEK} * {WEEK} - {before})"
    # Whole seconds, as above: SQLite's date functions round a REAL to the millisecond,
    # which would put 23:59:59.9996 into the next month while its day stays the same.
    if granularity == "month":
        return "unixepoch(CAST(ts AS INTEGER), 'unixepoch', 'start of month')"
    if granularity == "year":
        return "unixepoch(CAST(ts AS INTEGER), 'unixepoch', 'start of year')"
    if granularity == "quarter":
        # Start of month, then back (month - 1) % 3 months: Jan, Apr, Jul, Oct.
        return (
            "unixepoch(CAST(ts AS INTEGER), 'unixepoch', 'start of month', '-' || "
            "((CAST(strftime('%m', CAST(ts AS INTEGER), 'unixepoch') AS INTEGER) - 1) % 3)"
            " || ' months')"
        )
    raise ValueError(granularity)


# A device's message shape: its reading names, their units, its layout's number.
Layout = tuple[tuple[str, ...], Mapping[str, str], int]


class HistoryStore:
    def __init__(
        self, path: Path | str, retention: float = 30 * 86400.0, max_bytes: int | None = None
    ) -> None:
        self.retention = retention
        self.max_bytes = max_bytes  # HISTORY_MAX_BYTES: the oldest readings go beyond it
        self.dropped_for_space = 0
        self.used = 0  # bytes of the file's pages in use, at the last look
        self.db = open_versioned(path, MIGRATIONS, "history")
        self._staged = self.db.execute("SELECT COUNT(*) FROM messages_recent").fetchone()[0]
        # Messages are numbered as they arrive: a device's state takes each reading from
        # the layout whose message arrived last.
        self._arrival = self.db.execute("SELECT MAX(arrival) FROM layouts").fetchone()[0] or 0
        self._folded_at = time.monotonic()
        # Per device, per set of reading names: their units and layout number, so a
        # message's row is its layout and its values. Names and units are shared by every
        # device with the same (10,000 plugs: 3 MB, not 17).
        # Most devices send one shape: kept as a tuple; a dict by names for those with more.
        self._layouts: dict[str, Layout | dict[tuple[str, ...], Layout]] = {}
        self._shared: dict[Any, Any] = {}

    def close(self) -> None:
        self.db.close()

    # --- writing -------------------------------------------------------------------------

    def record(self, batch: Sequence[Reading]) -> None:
        """The readings, and each device's latest state: a transaction per 250 messages
        (a burst from 10,000 devices held every device's state at once: 20 MB)."""
        for start in range(0, len(batch), RECORD_CHUNK):
            try:
                self._record(batch[start : start + RECORD_CHUNK])
            except BaseException:
                # Layouts made in the transaction that was rolled back are gone again.
                self._layouts.clear()
                raise

    def _record(self, batch: Sequence[Reading]) -> None:
        if not batch:
            return
        # Per device: the last message received names the primary; the device's state
        # merges every message's readings, the one received last winning, so readings from
        # a device's different topics (or partial updates) do not erase each other. The
        # order is the order of arrival, not of the messages' times: a device's clock may
        # be off (a Tasmota before NTP says 1970) or another than the adapter's, which
        # stamps the messages that carry no time.
        # The state is kept per layout (its last message's values and time, and when it
        # arrived), so a message costs one short row update, not a merge of JSON texts.
        newest: dict[str, Reading] = {}
        with_primary: dict[str, Reading] = {}
        seen: dict[str, float] = {}  # the newest time of each device's messages
        last: dict[int, tuple[float, str, int, int]] = {}  # per layout: its newest message
        rows = []
        with transaction(self.db):
            for item in batch:
                uri = item.device
                newest[uri] = item
                seen[uri] = max(seen.get(uri, item.ts), item.ts)
                values = item.values
                if values:
                    layout = self._layout_of(uri, values, item.units or {})
                    text = fastjson.dumps_text(list(values.values()))
                    rows.append((layout, item.ts, text))
                    self._arrival += 1
                    last[layout] = (item.ts, text, self._arrival, layout)
                if item.primary:
                    with_primary[uri] = item
            self._staged += self.db.executemany(
                "INSERT INTO messages_recent (layout, ts, vals) VALUES (?,?,?)", rows
            ).rowcount
            self.db.executemany(
                "UPDATE layouts SET last_ts = ?, last_vals = ?, arrival = ? WHERE id = ?",
                last.values(),
            )
            self.db.executemany(
                f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?,?,?,?,?)"
                " ON CONFLICT(uri) DO UPDATE SET"
                " name = excluded.name, type = excluded.type,"
                " primary_reading = COALESCE(excluded.primary_reading, primary_reading),"
                " last_seen = MAX(excluded.last_seen, COALESCE(last_seen, excluded.last_seen))",
                [
                    (
                        uri,
                        item.name,
                        item.device_type,
                        with_primary.get(uri, item).primary,
                        seen[uri],
                    )
                    for uri, item in newest.items()
                ],
            )

        if self._staged >= FOLD_ROWS or time.monotonic() - self._folded_at >= FOLD_EVERY:
            self.fold()

    def _layout_of(self, uri: str, values: Mapping[str, float], units: Mapping[str, str]) -> int:
        """The layout of a message's readings, made (with any new series, inside the
        caller's transaction) when new."""
        names = tuple(values)
        layouts = self._layouts.get(uri)
        known = layouts.get(names) if isinstance(layouts, dict) else layouts
        if known is not None and known[0] == names and known[1] == units:
            return known[2]
        # A few statements for all of the message's readings, not a few for each.
        wanted = {name: units.get(name, "") for name in names}
        self.db.execute(
            "INSERT OR IGNORE INTO series (device, name, unit)"
            " SELECT ?, key, value FROM json_each(?)",
            (uri, fastjson.dumps_text(wanted)),
        )
        found = {
            (name, unit): number
            for number, name, unit in self.db.execute(
                "SELECT id, name, unit FROM series WHERE device = ?", (uri,)
            )
        }
        ids = [found[(name, unit)] for name, unit in wanted.items()]
        key = fastjson.dumps_text(ids)
        self.db.execute("INSERT OR IGNORE INTO layouts (device, series) VALUES (?, ?)", (uri, key))
        number = int(
            self.db.execute("SELECT id FROM layouts WHERE series = ?", (key,)).fetchone()[0]
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO layout_series (series, layout, pos) VALUES (?, ?, ?)",
            [(series, number, pos) for pos, series in enumerate(ids)],
        )
        shared_names = self._shared.setdefault(names, names)
        shared_units = self._shared.setdefault(tuple(sorted(units.items())), dict(units))
        layout: Layout = (shared_names, shared_units, number)
        if layouts is None or (not isinstance(layouts, dict) and layouts[0] == names):
            self._layouts[uri] = layout
        else:
            if not isinstance(layouts, dict):
                layouts = self._layouts[uri] = {layouts[0]: layouts}
            if len(layouts) >= MAX_LAYOUTS:
                layouts.clear()  # a device whose messages keep changing shape: start again
            layouts[shared_names] = layout
        return number

    def fold(self) -> int:
        """Move the staged messages into the indexed table; returns how many."""
        with transaction(self.db):
            moved = self.db.execute(
                "INSERT INTO messages (layout, ts, vals) SELECT layout, ts, vals"
                " FROM messages_recent ORDER BY layout, ts"
            ).rowcount
            self.db.execute("DELETE FROM messages_recent")
        self._staged = 0
        self._folded_at = time.monotonic()
        return moved

    def expire(self, now: float | None = None) -> int:
        """Readings past the retention, then the oldest beyond HISTORY_MAX_BYTES."""
        now = time.time() if now is None else now
        dropped = self._delete_before(now - self.retention)
        return dropped + self.trim(now)

    def _delete_before(self, cutoff: float) -> int:
        """Deletes the messages before `cutoff`; returns how many readings they had."""
        readings = 0
        with transaction(self.db):
            for table in ("messages", "messages_recent"):
                (count,) = self.db.execute(
                    f"SELECT COALESCE(SUM(json_array_length(vals)), 0) FROM {table} WHERE ts < ?",
                    (cutoff,),
                ).fetchone()
                if count:
                    self.db.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,))
                    readings += count
        return int(readings)

    def used_bytes(self) -> int:
        """Bytes of the file's pages in use (freed pages are reused before it grows)."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        self.used = int((pages - free) * page_size)
        return self.used

    def trim(self, now: float) -> int:
        """The oldest readings, until the history's pages in use fit HISTORY_MAX_BYTES:
        a cut-off time as far into the readings' span as the excess is of the whole (and
        5 % more, so a trim is not due again at the next write), a few rounds at most."""
        if self.max_bytes is None:
            return 0
        dropped = 0
        for _ in range(5):
            used = self.used_bytes()
            if used <= self.max_bytes:
                break
            oldest = min(
                (
                    row[0]
                    for table in ("messages", "messages_recent")
                    for row in self.db.execute(f"SELECT MIN(ts) FROM {table}")
                    if row[0] is not None
                ),
                default=None,
            )
            if oldest is None or oldest >= now:
                break
            share = min(1.0, (used - self.max_bytes) / used + 0.05)
            dropped += self._delete_before(oldest + (now - oldest) * share)
        if dropped:
            self.dropped_for_space += dropped
            log.warning(
                "the history is over HISTORY_MAX_BYTES (%d bytes): its %d oldest readings"
                " were removed",
                self.max_bytes,
                dropped,
            )
        return dropped

    # --- reading -------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        rows = self.db.execute(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY uri").fetchall()
        states = self._states(None)
        return [_device_row(r, states.get(r[0], {})) for r in rows]

    def device(self, uri: str) -> dict[str, Any] | None:
        row = self.db.execute(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE uri = ?", (uri,)
        ).fetchone()
        return None if row is None else _device_row(row, self._states(uri).get(uri, {}))

    def _states(self, uri: str | None) -> dict[str, dict[str, tuple[float, str, float]]]:
        """Per device (one, or all): each reading's value, unit and time, from the newest
        message of each layout, the one that arrived last winning."""
        where, args = ("WHERE device = ?", (uri,)) if uri is not None else ("", ())
        names = {
            number: (name, unit)
            for number, name, unit in self.db.execute(
                f"SELECT id, name, unit FROM series {where}", args
            )
        }
        states: dict[str, dict[str, tuple[float, str, float]]] = {}
        for device, series, values, ts in self.db.execute(
            "SELECT device, series, last_vals, last_ts FROM layouts"
            f" {where}{' AND' if where else ' WHERE'} last_vals IS NOT NULL ORDER BY arrival",
            args,
        ):
            state = states.setdefault(device, {})
            for number, value in zip(json.loads(series), json.loads(values), strict=True):
                name, unit = names[number]
                state[name] = (value, unit, ts)
        return states

    def channels(self, uri: str) -> list[str]:
        """The channels a device has reported: `x` of its `state_x` readings, and the
        empty channel of `state` (for commands whose data names none)."""
        return [
            name.removeprefix("state_") if name != "state" else ""
            for (name,) in self.db.execute(
                "SELECT DISTINCT name FROM series WHERE device = ?"
                " AND (name = 'state' OR name LIKE 'state\\_%' ESCAPE '\\')",
                (uri,),
            )
        ]

    def average(self, uri: str, query: Query, now: float | None = None) -> list[dict[str, Any]]:
        device = self.device(uri)
        if device is None:
            raise UnknownDevice(uri)
        name = query.measurement or device["primary"]
        if name is None:
            return []
        # The readings in the unit the device reports now: a device whose unit changed
        # (TempUnit set to F) never averages °C with °F.
        series = self._current_series(uri, name)
        if series is None:
            return []
        now = time.time() if now is None else now
        start = 0.0 if query.window is None else now - query.window
        # The series' values in the messages of every layout that has it, in the order of
        # (ts, value): AVG then adds the same numbers in the same order whichever table or
        # layout holds them, and the sandbox's answer agrees to the last bit. In the usual
        # case (one layout, nothing staged) the index gives the ts order and SQLite sorts
        # only readings of equal times.
        select = (
            "SELECT m.ts AS ts, m.vals ->> ls.pos AS value FROM layout_series AS ls"
            " JOIN {table} AS m ON m.layout = ls.layout"
            " WHERE ls.series = ? AND m.ts >= ? AND m.ts <= ?"
        )
        args: tuple[Any, ...] = (series, start, now)
        parts = [select.format(table="messages")]
        # Another connection (the writer's) stages the new messages: asked, not counted.
        if self.db.execute("SELECT EXISTS (SELECT 1 FROM messages_recent)").fetchone()[0]:
            parts.append(select.format(table="messages_recent"))
            args = args * 2
        source = f"({' UNION ALL '.join(parts)} ORDER BY ts, value)"
        if query.granularity == "all":
            row = self.db.execute(
                f"SELECT MIN(ts), AVG(value), COUNT(*) FROM {source}", args
            ).fetchone()
            if not row[2]:
                return []
            return [_row(row[0], row[1], row[2])]
        rows = self.db.execute(
            f"SELECT {bucket_sql(query.granularity)} AS bucket, AVG(value), COUNT(*)"
            f" FROM {source} GROUP BY bucket ORDER BY bucket",
            args,
        ).fetchall()
        return [_row(b, avg, count) for b, avg, count in rows]

    def _current_series(self, uri: str, name: str) -> int | None:
        """The series of the device's reading with the newest sample (its current unit)."""
        newest: tuple[float, int] | None = None
        for series, layout in self.db.execute(
            "SELECT ls.series, ls.layout FROM series AS s"
            " JOIN layout_series AS ls ON ls.series = s.id WHERE s.device = ? AND s.name = ?",
            (uri, name),
        ).fetchall():
            for table in ("messages", "messages_recent"):
                (ts,) = self.db.execute(
                    f"SELECT MAX(ts) FROM {table} WHERE layout = ?", (layout,)
                ).fetchone()
                if ts is not None and (newest is None or ts > newest[0]):
                    newest = (ts, series)
        return None if newest is None else newest[1]


class Reading(NamedTuple):
    """The numeric readings of one message of one device (a tuple: one per message)."""

    device: str
    ts: float
    values: dict[str, float]
    primary: str | None = None
    name: str = ""
    device_type: str = ""
    units: Mapping[str, str] | None = None  # the unit of each reading that has one


def readings_from_metadata(device: str, metadata: str, fallback_ts: float) -> Reading | None:
    """The sandbox's view of an event: D10 metadata JSON → a Reading (None if none)."""
    try:
        body = json.loads(metadata)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("readings"), dict):
        return None
    values = {
        str(k): number for k, v in body["readings"].items() if (number := _finite(v)) is not None
    }
    ts = fallback_ts
    if isinstance(body.get("time"), str):
        with contextlib.suppress(ValueError):
            ts = datetime.fromisoformat(body["time"].replace("Z", "+00:00")).timestamp()
    primary = body.get("primary") if isinstance(body.get("primary"), str) else None
    units = body.get("units")
    units = (
        {str(k): v for k, v in units.items() if isinstance(v, str) and str(k) in values}
        if isinstance(units, dict)
        else None
    )
    return Reading(device, ts, values, primary, units=units or None)


def _finite(value: Any) -> float | None:
    """A JSON number as a float; None for booleans, NaN, ±Infinity and huge integers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _row(bucket: float, average: float, count: int) -> dict[str, Any]:
    return {"time_stamp": format_stamp(bucket), "result": float(average), "data_points": count}


DEVICE_COLUMNS = "uri, name, type, primary_reading, last_seen"


def _device_row(
    row: Iterable[Any], state: Mapping[str, tuple[float, str, float]]
) -> dict[str, Any]:
    uri, name, type_, primary, last_seen = row
    readings = {}
    for reading, (value, unit, ts) in state.items():
        entry: dict[str, Any] = {"value": value, "ts": ts}
        if unit:
            entry["unit"] = unit
        readings[reading] = entry
    return {
        "uri": uri,
        "name": name,
        "type": type_,
        "primary": primary,
        "last_seen": None if last_seen is None else format_stamp(last_seen),
        "last_readings": {reading: entry["value"] for reading, entry in readings.items()},
        # name -> {"value", "unit" (when known), "ts" (epoch seconds)}
        "readings": readings,
    }


def _one_device_per_physical_device(db: sqlite3.Connection) -> None:
    """Migration 3's data: the readings become series and samples; those of the old split
    uris re-keyed to their physical device, renamed readings renamed, values converted
    where the unit changed (Shelly energy Wh -> kWh), units set where the family's are
    known; the device rows merged, each device's state rebuilt from its history."""
    pairs = db.execute(
        "SELECT DISTINCT device, name FROM readings"
        " UNION SELECT DISTINCT device, name FROM readings_recent"
    ).fetchall()
    for device, name in pairs:
        renamed = reading_of(device, name)
        db.execute(
            "INSERT OR IGNORE INTO series (device, name, unit) VALUES (?, ?, ?)",
            (renamed.device, renamed.name, renamed.unit or ""),
        )
        (series,) = db.execute(
            "SELECT id FROM series WHERE device = ? AND name = ? AND unit = ?",
            (renamed.device, renamed.name, renamed.unit or ""),
        ).fetchone()
        for old, new in (("readings", "samples"), ("readings_recent", "samples_recent")):
            db.execute(
                f"INSERT INTO {new} (series, ts, value) SELECT ?, ts, value * ?"
                f" FROM {old} WHERE device = ? AND name = ? ORDER BY ts, value",
                (series, renamed.factor, device, name),
            )
    db.execute("DROP TABLE readings")
    db.execute("DROP TABLE readings_recent")
    # Covering: the average query reads the index alone; made after the bulk insert.
    db.execute("CREATE INDEX samples_cover ON samples (series, ts, value)")
    # Each device's state from its history: the newest value of every reading (the
    # devices table of those versions kept only the last message's readings).
    latest: dict[str, dict[str, tuple[float, str, float]]] = {}
    for table in ("samples", "samples_recent"):
        for device, name, unit, value, ts in db.execute(
            "SELECT s.device, s.name, s.unit, x.value, MAX(x.ts)"
            f" FROM {table} AS x JOIN series AS s ON s.id = x.series GROUP BY x.series"
        ):
            known = latest.setdefault(device, {}).get(name)
            if known is None or known[2] <= ts:
                latest[device][name] = (value, unit, ts)
    rows = db.execute(
        "SELECT uri, name, type, primary_reading, last_seen FROM devices ORDER BY last_seen"
    ).fetchall()
    merged: dict[str, list[Any]] = {}
    for uri, name, type_, primary, last_seen in rows:
        target = device_of(uri)
        new_uri = target[0] if target is not None else uri
        candidate = None if primary is None else reading_of(uri, primary).name
        if new_uri not in merged:
            if target is not None:  # named as the new rules name it, until its next message
                _, name, type_, _ = physical_device(uri, name, type_, ())
            merged[new_uri] = [new_uri, name, type_, candidate, last_seen]
            continue
        row = merged[new_uri]
        if _primary_rank(candidate) < _primary_rank(row[3]):
            row[3] = candidate
        if last_seen is not None and (row[4] is None or last_seen > row[4]):
            row[4] = last_seen
    for row in merged.values():
        # The bundled files' preference (power, then temperature) for their families: the
        # old rules' primary was whichever reading the device's last message had.
        readings = latest.get(row[0], {})
        if _BUNDLED_FAMILY.match(row[0]):
            row[3] = next((n for n in ("power", "temperature") if n in readings), row[3])
    db.execute("DELETE FROM devices")
    db.executemany(
        "INSERT INTO devices (uri, name, type, primary_reading, last_seen, last_readings,"
        " units, times) VALUES (?,?,?,?,?,?,?,?)",
        [
            (
                uri,
                name,
                type_,
                primary,
                seen,
                json.dumps({k: v[0] for k, v in latest.get(uri, {}).items()}),
                json.dumps({k: v[1] for k, v in latest.get(uri, {}).items() if v[1]}),
                json.dumps({k: v[2] for k, v in latest.get(uri, {}).items()}),
            )
            for uri, name, type_, primary, seen in merged.values()
        ],
    )


def _samples_to_messages(db: sqlite3.Connection) -> None:
    """Migration 4's data: each series' samples become messages of a layout of that one
    series (the layout takes the series' number), and each device's state goes to those
    layouts. Values are written with Python's repr, which gives the same double back, not
    with SQLite's json_array (15 digits)."""
    db.execute(
        "INSERT INTO layouts (id, device, series) SELECT id, device, '[' || id || ']' FROM series"
    )
    db.execute("INSERT INTO layout_series (series, layout, pos) SELECT id, id, 0 FROM series")
    for old, new in (("samples", "messages"), ("samples_recent", "messages_recent")):
        rows = db.execute(f"SELECT series, ts, value FROM {old} ORDER BY series, ts, value")
        while chunk := rows.fetchmany(10_000):
            db.executemany(
                f"INSERT INTO {new} (layout, ts, vals) VALUES (?, ?, ?)",
                [(series, ts, f"[{value!r}]") for series, ts, value in chunk],
            )
        db.execute(f"DROP TABLE {old}")
    # Made after the bulk insert; the average query finds a layout's messages by time.
    db.execute("CREATE INDEX messages_by_layout ON messages (layout, ts)")
    # Each device's state moves from its row's JSON texts to its one-series layouts (one
    # value per reading name: the order they are numbered in does not matter).
    arrival = 0
    for uri, readings, units, times, last_seen in db.execute(
        "SELECT uri, last_readings, units, times, last_seen FROM devices"
    ).fetchall():
        unit_of, time_of = json.loads(units), json.loads(times)
        for name, value in json.loads(readings).items():
            if (number := _finite(value)) is None:
                continue
            unit = unit_of.get(name) or ""
            db.execute(
                "INSERT OR IGNORE INTO series (device, name, unit) VALUES (?, ?, ?)",
                (uri, name, unit),
            )
            (series,) = db.execute(
                "SELECT id FROM series WHERE device = ? AND name = ? AND unit = ?",
                (uri, name, unit),
            ).fetchone()
            db.execute(
                "INSERT OR IGNORE INTO layouts (id, device, series) VALUES (?, ?, ?)",
                (series, uri, f"[{series}]"),
            )
            db.execute(
                "INSERT OR IGNORE INTO layout_series (series, layout, pos) VALUES (?, ?, 0)",
                (series, series),
            )
            arrival += 1
            db.execute(
                "UPDATE layouts SET last_ts = ?, last_vals = ?, arrival = ? WHERE id = ?",
                (time_of.get(name, last_seen), f"[{number!r}]", arrival, series),
            )
    for column in ("last_readings", "units", "times"):
        db.execute(f"ALTER TABLE devices DROP COLUMN {column}")


_BUNDLED_FAMILY = re.compile(r"^(?:[^:]*:)*?(?:shelly|esphome|tasmota):")


def _primary_rank(name: str | None) -> int:
    """The primary of a merged device: its power, else its temperature, else another
    reading; never a relay's state or the Shelly's own temperature if there is more."""
    if name is None:
        return 9
    order = ("power", "temperature", "energy")
    if name in order:
        return order.index(name)
    return 8 if name.startswith("state") or name == "device_temperature" else 5


class HistoryWriter:
    """Readings written on a worker thread, with a connection of its own, while the event
    loop maps the next messages: the inserts and the commit release the GIL, so they run
    beside it. Everything waiting is written in one transaction. Also deletes readings past
    the retention.

    The events themselves are in the outbox before the broker gets its acknowledgement;
    the history follows a few milliseconds later. A shutdown writes what is waiting; only
    a crash (kill -9, power cut) can lose those last milliseconds of the local history.
    """

    # Room for the batches that arrive while the store moves staged readings into the
    # index (fold: up to a few hundred ms with thousands of devices), so the intake does
    # not stall behind it.
    def __init__(self, store: HistoryStore, capacity: int = 256) -> None:
        self.store = store
        self._lost_to_full_disk = 0
        self._full_logged = -60.0
        store.used_bytes()
        self._in, self._out = anyio.create_memory_object_stream[list[Reading]](capacity)

    def status(self) -> HistoryStatus:
        return HistoryStatus(self.store.dropped_for_space, self.store.used)

    async def put(self, readings: list[Reading]) -> None:
        """Waits when `capacity` batches are waiting: the disk holds back the intake."""
        if readings:
            await self._in.send(readings)

    async def run(self) -> None:
        next_expiry = time.monotonic()
        try:
            while True:
                batches = []
                with anyio.move_on_after(EXPIRE_EVERY):
                    batches.append(await self._out.receive())
                    # A moment to gather more: at a trickle every message was a thread
                    # hand-off and a transaction of its own.
                    await anyio.sleep(GATHER)
                    batches += self._waiting()
                expire = time.monotonic() >= next_expiry
                if expire:
                    next_expiry = time.monotonic() + EXPIRE_EVERY
                await self._write([r for batch in batches for r in batch], expire)
        finally:
            await self._write([r for batch in self._waiting() for r in batch], False)

    def _waiting(self) -> list[list[Reading]]:
        batches = []
        while True:
            try:
                batches.append(self._out.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return batches

    async def _write(self, readings: list[Reading], expire: bool) -> None:
        if not readings and not expire:
            return
        # Shielded: a shutdown waits for the write in progress, and the last one runs in
        # the `finally` of a cancelled task.
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._write_now, readings, expire)
            except Exception as exc:
                # The events are in the outbox already; a history that cannot be written
                # (disk full, broken file) must not stop them.
                if not disk_full(exc):
                    log.exception("could not write %d readings to the history", len(readings))
                    return
                self._lost_to_full_disk += len(readings)
                now = time.monotonic()
                if now - self._full_logged >= 60.0:  # a line a minute, not one a write
                    self._full_logged = now
                    log.warning(
                        "the disk is full: %d readings not written to the history so far (%s)",
                        self._lost_to_full_disk,
                        exc,
                    )

    def _write_now(self, readings: list[Reading], expire: bool) -> None:
        self.store.record(readings)
        if expire:
            self.store.expire()
