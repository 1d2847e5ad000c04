"""The durable outbox: mapped events wait in SQLite (WAL) until the platform answered 200.

A reading is written here before the broker gets its PUBACK, and deleted only after the
platform acknowledged it, so a crash anywhere costs duplicates, never gaps. Events the
platform refuses for good go to the dead-letter table, where they can be listed,
replayed or purged (`sepl-adapter deadletters`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from adapter.mapping.eventparts import TextPieces
from adapter.mapping.renames import physical_device, reading_of
from adapter.migrations import CorruptDatabase, Migration, SchemaError, open_versioned
from adapter.sepl.device import Device
from adapter.sqlitedb import transaction
from adapter.status import OutboxStatus

log = logging.getLogger("adapter.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    device TEXT NOT NULL,          -- JSON: uri, name, type, tags
    device_uri TEXT NOT NULL,
    service TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS deadletters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER,                   -- the outbox sequence number it had, if any
    created REAL NOT NULL,
    device TEXT NOT NULL,
    device_uri TEXT NOT NULL,
    service TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    failed REAL NOT NULL,
    reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL);
"""
# Schema versions (adapter/migrations.py): SCHEMA above is version 1, the first release.
# Do not edit it or any released migration; append one for every change, and
# tests/integration/test_migrations.py checks that files of every earlier version open.
MIGRATIONS = (
    Migration(1, "outbox, dead letters and retained payloads", SCHEMA),
    Migration(
        2,
        "events of the split uris of the bundled Shelly and ESPHome files re-keyed to their"
        " physical device, their metadata's readings renamed and converted (issue [12])",
        function=lambda db: _one_device_per_physical_device(db),
    ),
)

COLUMNS = "seq, created, device, device_uri, service, data, metadata, rule, attempts"


class Entry(NamedTuple):
    # A tuple, not a frozen dataclass: one is made per event on the hot path, and a frozen
    # dataclass's __init__ costs five times as much.
    seq: int
    created: float
    device: Device
    service: str
    data: str
    metadata: str
    rule: str
    attempts: int

    @property
    def device_uri(self) -> str:
        return self.device.uri


class NewEvent(NamedTuple):  # one per message: a tuple is the cheapest to make
    device: Device
    service: str
    data: str
    metadata: str
    rule: str = ""


def _device_json(device: Device) -> str:
    text = _DEVICE_JSON.get(device)
    if text is None:
        if len(_DEVICE_JSON) >= _DEVICE_JSON_KEPT:
            _DEVICE_JSON.clear()
        text = _DEVICE_JSON[device] = _encode_device(device)
        # Rows read back find this very Device: no second copy of its texts (10,000
        # devices: 3 MB), and no parsing.
        if len(_DEVICES) >= _DEVICE_JSON_KEPT:
            _DEVICES.clear()
        _DEVICES[text] = device
    return text


# Every event row carries its device; the few thousand devices are encoded once each.
_DEVICE_JSON: dict[Device, str] = {}
_DEVICE_JSON_KEPT = 100_000


def _encode_device(device: Device) -> str:
    return json.dumps(
        {
            "uri": device.uri,
            "name": device.name,
            "type": device.device_type,
            "tags": list(device.tags),
        },
        ensure_ascii=False,
    )


def _device_from(text: str) -> Device:
    device = _DEVICES.get(text)
    if device is None:
        if len(_DEVICES) >= _DEVICE_JSON_KEPT:
            _DEVICES.clear()
        row = json.loads(text)
        tags = tuple((str(k), str(v)) for k, v in row["tags"])
        device = _DEVICES[text] = Device(row["uri"], row["name"], row["type"], tags)
    return device


# Rows read back (a backlog after an outage) share one Device per distinct device.
_DEVICES: dict[str, Device] = {}


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(row[0], row[1], _device_from(row[2]), row[4], row[5], row[6], row[7], row[8])


def _where_ids(ids: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    if ids is None:
        return "", ()
    return f" WHERE id IN ({','.join('?' * len(ids))})", tuple(ids)


class Outbox:
    """The SQLite file; every method is one short transaction."""

    def __init__(
        self, path: Path | str, max_events: int = 1_000_000, max_age: float = 7 * 86400.0
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.max_age = max_age
        self.dropped = 0
        try:
            self.db = open_versioned(path, MIGRATIONS, "outbox")
        except CorruptDatabase as exc:
            # Never replaced silently: it holds the events not yet delivered.
            raise SchemaError(
                f"{exc}. It holds the events not yet delivered: move it aside to start"
                f" with an empty outbox, or rescue its rows first with"
                f" `sqlite3 {path} .recover | sqlite3 recovered.sqlite3`"
            ) from None
        self._count = int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self.last_written = self.last_seq()  # the highest seq this process wrote or saw
        self._retained = self._load_retained()

    def close(self) -> None:
        self.db.close()

    def status(self) -> OutboxStatus:
        oldest = self.oldest_created()
        waiting = None if oldest is None else round(max(0.0, time.time() - oldest), 1)
        return OutboxStatus(len(self), self.dead_letter_count(), self.dropped, waiting)

    def __len__(self) -> int:
        return self._count

    # --- writing -------------------------------------------------------------------------

    def add(self, events: Sequence[NewEvent], now: float | None = None) -> list[Entry]:
        """Store a batch in one transaction; at the limit the oldest are dropped. Returns
        the stored entries, so the sender can take them without reading them back."""
        if not events:
            return []
        created = time.time() if now is None else now
        with transaction(self.db):
            self.db.executemany(
                "INSERT INTO outbox (created, device, device_uri, service, data, metadata, rule)"
                " VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        created,
                        _device_json(e.device),
                        e.device.uri,
                        e.service,
                        e.data,
                        e.metadata,
                        e.rule,
                    )
                    for e in events
                ],
            )
            # One writer holds the lock for the whole transaction, so AUTOINCREMENT gave
            # the batch consecutive numbers ending at the last insert's.
            last = int(self.db.execute("SELECT last_insert_rowid()").fetchone()[0])
        first = last - len(events) + 1
        self._count += len(events)
        if first != self.last_written + 1:
            self._recount()  # another process wrote in between (a dead-letter replay)
        if self._count > self.max_events:
            self._drop_oldest(self._count - self.max_events, "the outbox is full")
        self.last_written = last
        return [
            Entry(first + i, created, e.device, e.service, e.data, e.metadata, e.rule, 0)
            for i, e in enumerate(events)
        ]

    def add_dead_letters(
        self, items: Sequence[tuple[NewEvent, str]], now: float | None = None
    ) -> None:
        """Messages refused before they became events (e.g. `payload: json` but not JSON):
        kept with the reason, so nothing the device sent is lost."""
        if not items:
            return
        moment = time.time() if now is None else now
        with transaction(self.db):
            self.db.executemany(
                "INSERT INTO deadletters (created, device, device_uri, service, data,"
                " metadata, rule, failed, reason) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        moment,
                        _device_json(e.device),
                        e.device.uri,
                        e.service,
                        e.data,
                        e.metadata,
                        e.rule,
                        moment,
                        reason,
                    )
                    for e, reason in items
                ],
            )

    def add_raw_dead_letter(
        self, event: NewEvent, text: TextPieces, reason: str, now: float | None = None
    ) -> None:
        """A payload too large to be an event, kept as it came (its `event.data` is not
        used): the text goes into SQLite piece by piece through blob I/O, so neither this
        process nor SQLite holds another copy of it. The row's data is then a BLOB of the
        text's UTF-8, which the readers cast back to TEXT."""
        moment = time.time() if now is None else now
        with transaction(self.db):
            row = self.db.execute(
                "INSERT INTO deadletters (created, device, device_uri, service, data,"
                " metadata, rule, failed, reason) VALUES (?,?,?,?,zeroblob(?),?,?,?,?)",
                (
                    moment,
                    _device_json(event.device),
                    event.device.uri,
                    event.service,
                    text.length,
                    event.metadata,
                    event.rule,
                    moment,
                    reason,
                ),
            ).lastrowid
            assert row is not None
            with self.db.blobopen("deadletters", "data", row) as blob:
                for piece in text.pieces:
                    blob.write(piece)

    def _drop_oldest(self, count: int, why: str) -> None:
        with transaction(self.db):
            cur = self.db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                (count,),
            )
        dropped = cur.rowcount
        self._removed(dropped)
        self.dropped += dropped
        log.warning("dropped the %d oldest events: %s", dropped, why)

    def expire(self, now: float | None = None) -> int:
        """Drop events older than max_age; returns how many."""
        cutoff = (time.time() if now is None else now) - self.max_age
        with transaction(self.db):
            cur = self.db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,))
        if cur.rowcount:
            self._removed(cur.rowcount)
            self.dropped += cur.rowcount
            log.warning("dropped %d events older than %.0f s", cur.rowcount, self.max_age)
        return cur.rowcount

    def delete(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        if not seqs:
            return
        with transaction(self.db):
            cur = self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        self._removed(cur.rowcount)

    def record_attempt(self, seq: int) -> None:
        with transaction(self.db):
            self.db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def dead_letter(self, entry: Entry, reason: str, now: float | None = None) -> None:
        with transaction(self.db):
            self.db.execute(
                f"INSERT INTO deadletters ({COLUMNS}, failed, reason) "
                f"SELECT {COLUMNS}, ?, ? FROM outbox WHERE seq = ?",
                (time.time() if now is None else now, reason, entry.seq),
            )
            cur = self.db.execute("DELETE FROM outbox WHERE seq = ?", (entry.seq,))
        self._removed(cur.rowcount)

    # --- reading -------------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[Entry]:
        rows = self.db.execute(
            f"SELECT {COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [_entry(r) for r in rows]

    def last_seq(self) -> int:
        """The highest sequence number in the outbox (0 when empty)."""
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])

    def written_elsewhere(self) -> bool:
        """Rows added by another process (a dead-letter replay) since the last look; they
        are counted now (this process's count knew only its own)."""
        last = self.last_seq()
        if last > self.last_written:
            self.last_written = last
            self._recount()
            return True
        return False

    def _recount(self) -> None:
        # O(rows) but rare: another process wrote, or the count went wrong (it was wrong
        # below zero when a replay's rows were delivered before this process saw them).
        self._count = int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _removed(self, count: int) -> None:
        self._count -= count
        if self._count < 0:
            self._recount()

    def oldest_created(self) -> float | None:
        row = self.db.execute("SELECT MIN(created) FROM outbox").fetchone()
        return None if row[0] is None else float(row[0])

    # --- dead letters --------------------------------------------------------------------

    def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, seq, created, device, device_uri, service, CAST(data AS TEXT),"
            " metadata, rule, attempts, failed, reason FROM deadletters ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        keys = (
            "id",
            "seq",
            "created",
            "device",
            "device_uri",
            "service",
            "data",
            "metadata",
            "rule",
            "attempts",
            "failed",
            "reason",
        )
        return [{k: v for k, v in zip(keys, r, strict=True) if k != "device"} for r in rows]

    def dead_letter_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM deadletters").fetchone()[0])

    def replay(self, ids: Sequence[int] | None = None) -> int:
        """Dead letters back into the outbox (with new sequence numbers, at the end)."""
        where, args = _where_ids(ids)
        with transaction(self.db):
            cur = self.db.execute(
                "INSERT INTO outbox (created, device, device_uri, service, data, metadata, rule)"
                " SELECT ?, device, device_uri, service, CAST(data AS TEXT), metadata, rule"
                f" FROM deadletters{where} ORDER BY id",
                (time.time(), *args),  # replayed events count their age from now
            )
            self.db.execute(f"DELETE FROM deadletters{where}", args)
        self._count += cur.rowcount
        return cur.rowcount

    def purge(self, ids: Sequence[int] | None = None) -> int:
        where, args = _where_ids(ids)
        with transaction(self.db):
            cur = self.db.execute(f"DELETE FROM deadletters{where}", args)
        return cur.rowcount

    # --- retained messages already forwarded (FORWARD_RETAINED=changed) ----------------

    def _load_retained(self) -> dict[str, bytes]:
        rows = self.db.execute("SELECT topic, payload FROM retained").fetchall()
        return {str(topic): bytes(digest) for topic, digest in rows}

    def should_forward(self, topic: str, payload: bytes, retained: bool) -> bool:
        """With FORWARD_RETAINED=changed: a retained message is forwarded only if it differs
        from the last message forwarded on its topic. Live messages on topics that carry
        retained ones update that memory, so a resubscribe does not replay old state."""
        known = self._retained.get(topic)
        if not retained and known is None:
            return True
        digest = hashlib.sha1(payload).digest()
        if retained and known == digest:
            return False
        if known != digest:
            self._retained[topic] = digest
            with transaction(self.db):
                self.db.execute(
                    "INSERT OR REPLACE INTO retained (topic, payload) VALUES (?, ?)",
                    (topic, digest),
                )
        return True


def _one_device_per_physical_device(db: sqlite3.Connection) -> None:
    """Queued and dead-lettered events of `shelly:<id>/relay/<n>` and the like go to their
    physical device, with the readings in their metadata named and counted as the new
    mappings do, so relay 1's power never lands in the device's `power`. `data` stays the
    payload as published (D10)."""
    for table, key in (("outbox", "seq"), ("deadletters", "id")):
        rows = db.execute(f"SELECT {key}, device, metadata FROM {table}").fetchall()
        for row_id, device_text, metadata in rows:
            try:
                row = json.loads(device_text)
                old_uri = row["uri"]
                tags = tuple((str(k), str(v)) for k, v in row.get("tags", []))
                uri, name, device_type, tags = physical_device(
                    old_uri, row["name"], row["type"], tags
                )
            except (ValueError, KeyError, TypeError):
                continue  # a row this code cannot read is sent (or listed) as it is
            new_metadata = _renamed_metadata(old_uri, metadata)
            if uri == old_uri and new_metadata == metadata:
                continue
            device = Device(uri, name, device_type, tags)
            db.execute(
                f"UPDATE {table} SET device = ?, device_uri = ?, metadata = ? WHERE {key} = ?",
                (_device_json(device), uri, new_metadata, row_id),
            )


def _renamed_metadata(uri: str, metadata: str) -> str:
    try:
        body = json.loads(metadata)
    except ValueError:
        return metadata
    if not isinstance(body, dict) or not isinstance(body.get("readings"), dict):
        return metadata
    readings: dict[str, Any] = {}
    units: dict[str, str] = dict(body.get("units") or {})
    for name, value in body["readings"].items():
        renamed = reading_of(uri, name)
        number = value * renamed.factor if isinstance(value, int | float) else value
        readings[renamed.name] = number
        if renamed.unit is not None:
            units[renamed.name] = renamed.unit
    changed = {**body, "readings": readings}
    if isinstance(body.get("primary"), str):
        changed["primary"] = reading_of(uri, body["primary"]).name
    if units:
        changed["units"] = units
    if changed == body:
        return metadata
    return json.dumps(changed, ensure_ascii=False, separators=(",", ":"))
