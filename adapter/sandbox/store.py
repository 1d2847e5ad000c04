"""SQLite persistence of the sandbox platform: gateways, devices, events, commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapter.migrations import Migration, open_versioned
from adapter.sepl.platform import Gateway, PlatformDevice

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,
    hash TEXT NOT NULL DEFAULT '', devices TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, uri TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS devices_by_uri ON devices(owner, uri);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, received REAL NOT NULL, gateway TEXT NOT NULL,
    device_uri TEXT NOT NULL, service_uri TEXT NOT NULL, parts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_device ON events(device_uri, seq);
CREATE TABLE IF NOT EXISTS commands (
    task_id TEXT PRIMARY KEY, device_uri TEXT NOT NULL, service_uri TEXT NOT NULL,
    sent REAL NOT NULL, request TEXT NOT NULL, response TEXT, answered REAL);
"""
# Schema versions (adapter/migrations.py): SCHEMA above is version 1, the first release.
# Do not edit it or any released migration; append one for every change, and
# tests/integration/test_migrations.py checks that files of every earlier version open.
MIGRATIONS = (Migration(1, "gateways, devices, events and commands", SCHEMA),)


class SandboxStore:
    def __init__(self, path: Path | str) -> None:
        self.db = open_versioned(path, MIGRATIONS, "sandbox")

    def close(self) -> None:
        self.db.close()

    # gateways
    def gateway(self, gid: str) -> Gateway | None:
        row = self.db.execute(
            "SELECT id, owner, name, hash, devices FROM gateways WHERE id = ?", (gid,)
        ).fetchone()
        if row is None:
            return None
        return Gateway(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def save_gateway(self, gw: Gateway) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO gateways (id, owner, name, hash, devices) VALUES (?,?,?,?,?)",
            (gw.id, gw.owner, gw.name, gw.hash, json.dumps(gw.devices)),
        )

    def gateways(self) -> list[Gateway]:
        rows = self.db.execute("SELECT id FROM gateways ORDER BY rowid").fetchall()
        return [gw for (gid,) in rows if (gw := self.gateway(gid)) is not None]

    # devices
    def _device(self, row: tuple[Any, ...]) -> PlatformDevice:
        return PlatformDevice(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    def devices_by_uri(self, owner: str, uri: str) -> list[PlatformDevice]:
        rows = self.db.execute(
            "SELECT id, owner, uri, name, type, tags FROM devices WHERE owner = ? AND uri = ?",
            (owner, uri),
        ).fetchall()
        return [self._device(r) for r in rows]

    def device(self, device_id: str) -> PlatformDevice | None:
        row = self.db.execute(
            "SELECT id, owner, uri, name, type, tags FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        return None if row is None else self._device(row)

    def all_devices(self) -> list[PlatformDevice]:
        rows = self.db.execute(
            "SELECT id, owner, uri, name, type, tags FROM devices ORDER BY rowid"
        ).fetchall()
        return [self._device(r) for r in rows]

    def save_device(self, d: PlatformDevice) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO devices (id, owner, uri, name, type, tags) "
            "VALUES (?,?,?,?,?,?)",
            (d.id, d.owner, d.uri, d.name, d.type, json.dumps(d.tags)),
        )

    def delete_device(self, device_id: str) -> None:
        self.db.execute("DELETE FROM devices WHERE id = ?", (device_id,))

    # events
    def add_event(
        self,
        received: float,
        gateway: str,
        device_uri: str,
        service_uri: str,
        parts: dict[str, str],
    ) -> int:
        cur = self.db.execute(
            "INSERT INTO events (received, gateway, device_uri, service_uri, parts) "
            "VALUES (?,?,?,?,?)",
            (received, gateway, device_uri, service_uri, json.dumps(parts)),
        )
        return int(cur.lastrowid or 0)

    def events(
        self, device_uri: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        query = "SELECT seq, received, gateway, device_uri, service_uri, parts FROM events"
        query += " WHERE seq > ?" + (" AND device_uri = ?" if device_uri else "")
        args: tuple[Any, ...] = (after, device_uri) if device_uri else (after,)
        rows = self.db.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [
            {
                "seq": r[0],
                "received": r[1],
                "gateway": r[2],
                "device_uri": r[3],
                "service_uri": r[4],
                "parts": json.loads(r[5]),
            }
            for r in rows
        ]

    def event_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # commands
    def add_command(
        self, task_id: str, device_uri: str, service_uri: str, sent: float, request: dict[str, Any]
    ) -> None:
        self.db.execute(
            "INSERT INTO commands (task_id, device_uri, service_uri, sent, request) "
            "VALUES (?,?,?,?,?)",
            (task_id, device_uri, service_uri, sent, json.dumps(request)),
        )

    def answer_command(self, task_id: str, answered: float, response: Any) -> bool:
        cur = self.db.execute(
            "UPDATE commands SET response = ?, answered = ? WHERE task_id = ?",
            (json.dumps(response), answered, task_id),
        )
        return cur.rowcount > 0

    def command(self, task_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT task_id, device_uri, service_uri, sent, request, response, answered "
            "FROM commands WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        return {
            "task_id": row[0],
            "device_uri": row[1],
            "service_uri": row[2],
            "sent": row[3],
            "request": json.loads(row[4]),
            "response": None if row[5] is None else json.loads(row[5]),
            "answered": row[6],
        }
