"""Schema versions of the SQLite files (adapter/migrations.py): a file of every earlier version
opens, migrates and keeps its rows; a file of a newer version is refused, not downgraded.

The fixtures in tests/fixtures/ were written by the code of each earlier version (see
make_schema_v0.py); `<kind>-v<N>.sqlite3` files added for later versions are picked up
by `test_every_fixture_migrates_and_keeps_its_rows` without further changes.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapter import cli, history, outbox
from adapter.history import HistoryStore, Query
from adapter.migrations import (
    Migration,
    SchemaTooNew,
    latest_version,
    migrate,
    split_statements,
    user_version,
)
from adapter.outbox import Outbox
from adapter.sandbox import store as sandbox_store
from adapter.sandbox.store import SandboxStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T0 = 1_763_900_000.0  # make_schema_v0.T0
KITCHEN = "tasmota:kitchen"
PLUG = "shelly:plug-1"

Store = Outbox | HistoryStore | SandboxStore
KINDS: dict[str, tuple[Callable[[Path | str], Store], tuple[Migration, ...]]] = {
    "outbox": (Outbox, outbox.MIGRATIONS),
    "history": (HistoryStore, history.MIGRATIONS),
    "sandbox": (SandboxStore, sandbox_store.MIGRATIONS),
}
FIXTURE_NAME = re.compile(r"(?P<kind>[a-z]+)-v(?P<version>\d+)\.sqlite3")


def fixture_copy(tmp_path: Path, name: str) -> Path:
    """A copy: opening switches the file to WAL and migrates it, the fixture stays as is."""
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def schema_of(path: Path) -> set[tuple[str, str, str]]:
    """Tables and indexes with their SQL, whitespace-normalised."""
    with raw(path) as db:
        rows = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
        ).fetchall()
    return {(kind, name, " ".join(sql.split())) for kind, name, sql in rows}


def table_counts(path: Path) -> dict[str, int]:
    with raw(path) as db:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        counts = {t: int(db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}
        # Since schema 4 of the history a row is a message: what counts is its readings.
        for table in ("messages", "messages_recent"):
            if table in counts:
                (readings,) = db.execute(
                    f"SELECT COALESCE(SUM(json_array_length(vals)), 0) FROM {table}"
                ).fetchone()
                counts[table] = int(readings)
        return counts


def fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.sqlite3"))


# --- the fixtures of the oldest version


def test_the_oldest_fixtures_are_version_0() -> None:
    names = fixtures()
    assert {"outbox-v0.sqlite3", "history-v0.sqlite3", "sandbox-v0.sqlite3"} <= set(names)
    for name in names:
        match = FIXTURE_NAME.fullmatch(name)
        assert match is not None and match["kind"] in KINDS, name
        with raw(FIXTURES / name) as db:
            assert user_version(db) == int(match["version"]), name
        # Committed as one file: no WAL beside it that a copy would miss.
        assert not Path(f"{FIXTURES / name}-wal").exists()


def test_outbox_v0_opens_migrates_and_keeps_its_events(tmp_path: Path) -> None:
    path = fixture_copy(tmp_path, "outbox-v0.sqlite3")
    box = Outbox(path)
    try:
        assert user_version(box.db) == latest_version(outbox.MIGRATIONS) >= 1
        # Six events were added; one went to the dead letters.
        assert len(box) == 5
        entries = box.after(0, 100)
        assert [e.device_uri for e in entries] == [KITCHEN, KITCHEN, PLUG, KITCHEN, PLUG]
        assert [json.loads(e.data)["ENERGY"]["Power"] for e in entries] == [10, 12, 13, 14, 15]
        assert entries[0].attempts == 1 and entries[1].attempts == 0
        assert entries[0].device.name == "Tasmota kitchen"
        assert entries[0].device.tags == (("vendor", "tasmota"),)
        assert entries[0].rule == "tasmota-sensor"
        assert json.loads(entries[2].metadata)["readings"] == {"power": 13.0}
        assert box.oldest_created() == T0

        letters = box.dead_letters()
        assert [(d["device_uri"], d["reason"]) for d in letters] == [
            (PLUG, "platform answered 400: unknown service"),
            (KITCHEN, "invalid JSON"),
        ]
        assert letters[0]["seq"] == 2 and letters[1]["data"] == "not json {"
        # The retained payload forwarded before the upgrade is still known.
        assert not box.should_forward("tele/kitchen/LWT", b"Online", retained=True)
        assert box.should_forward("tele/kitchen/LWT", b"Offline", retained=True)

        # And it works on: new events continue the sequence, replay and delete work.
        last = entries[-1].seq
        box.add([outbox.NewEvent(entries[0].device, "sepl_get", "{}", "{}")])
        assert box.after(last, 10)[0].seq > last
        assert box.replay([letters[0]["id"]]) == 1
        box.delete([e.seq for e in entries])
        assert len(box) == 2
    finally:
        box.close()


def test_history_v3_answers_as_it_did_with_a_row_per_message(tmp_path: Path) -> None:
    """Schema 4 keeps a row per message, not per reading: every device, reading, unit and
    average of a schema-3 file (made by the last release of schema 3, folded and staged
    readings, a unit change) is the same after the migration, to the last bit, and a new
    message of a known shape goes on where the old series stopped."""
    path = fixture_copy(tmp_path, "history-v3.sqlite3")
    expected = json.loads((FIXTURES / "history-v3.expected.json").read_text())
    store = HistoryStore(path, retention=100 * 365 * 86400.0)
    try:
        assert store.devices() == expected["devices"]
        for uri, reading, granularity, rows in expected["averages"]:
            answer = store.average(uri, Query(None, granularity, reading), now=T0 + 600)
            assert answer == rows, (uri, reading, granularity)
        assert table_counts(path)["messages"] + table_counts(path)["messages_recent"] == 52
        before = store.db.execute("SELECT COUNT(*) FROM series").fetchone()[0]
        store.record(
            [
                history.Reading(
                    "zigbee2mqtt:thermo",
                    T0 + 130,
                    {"temperature": 73.5, "humidity": 45.0},
                    "temperature",
                    "Thermo",
                    "thermometer",
                    {"temperature": "°F", "humidity": "%"},
                )
            ]
        )
        assert store.db.execute("SELECT COUNT(*) FROM series").fetchone()[0] == before
        (row,) = store.average("zigbee2mqtt:thermo", Query(None, "all", None), now=T0 + 600)
        assert (row["result"], row["data_points"]) == ((71.6 + 72.5 + 73.5) / 3, 3)
    finally:
        store.close()


def test_history_v0_opens_migrates_and_keeps_its_readings(tmp_path: Path) -> None:
    path = fixture_copy(tmp_path, "history-v0.sqlite3")
    store = HistoryStore(path, retention=100 * 365 * 86400.0)
    try:
        assert user_version(store.db) == latest_version(history.MIGRATIONS) >= 1
        devices = {d["uri"]: d for d in store.devices()}
        assert set(devices) == {KITCHEN, PLUG}
        kitchen = store.device(KITCHEN)
        assert kitchen is not None and kitchen["name"] == "Tasmota kitchen"
        rows = store.average(KITCHEN, Query(None, "all", None), now=T0 + 3600)
        assert rows == [
            {"time_stamp": "2025-11-23T12:13:20.000Z", "result": 14.5, "data_points": 10}
        ]
        volts = store.average(KITCHEN, Query(None, "all", "voltage"), now=T0 + 3600)
        assert volts[0]["result"] == 230.0
        assert store.average(PLUG, Query(None, "all", None), now=T0 + 3600)[0]["result"] == 3.5
        # 10 × (power, voltage) + 1: readings of 3 series, in messages since schema 4
        assert table_counts(path)["messages"] == 21
        assert table_counts(path)["series"] == 3
    finally:
        store.close()


def test_sandbox_v0_opens_migrates_and_keeps_its_gateways(tmp_path: Path) -> None:
    path = fixture_copy(tmp_path, "sandbox-v0.sqlite3")
    store = SandboxStore(path)
    try:
        assert user_version(store.db) == latest_version(sandbox_store.MIGRATIONS) >= 1
        gateway = store.gateway("gw-1")
        assert gateway is not None and (gateway.hash, gateway.devices) == ("hash-1", ["dev-1"])
        device = store.device("dev-1")
        assert device is not None and device.uri == KITCHEN
        assert store.event_count() == 1
    finally:
        store.close()


@pytest.mark.parametrize("name", fixtures())
def test_every_fixture_migrates_and_keeps_its_rows(tmp_path: Path, name: str) -> None:
    """Generic: every fixture of every earlier version reaches the latest version, loses
    no row, and ends with the schema a new file gets."""
    match = FIXTURE_NAME.fullmatch(name)
    assert match is not None
    opener, migrations = KINDS[match["kind"]]
    path = fixture_copy(tmp_path, name)
    before = table_counts(path)
    opener(path).close()
    after = table_counts(path)
    for table, count in before.items():
        # Schema 3 of the history kept readings as samples of series, schema 4 as messages.
        kept = {
            "readings": "messages",
            "readings_recent": "messages_recent",
            "samples": "messages",
            "samples_recent": "messages_recent",
        }.get(table, table)
        assert after.get(kept, 0) >= count, table
    with raw(path) as db:
        assert user_version(db) == latest_version(migrations)

    fresh = tmp_path / "fresh.sqlite3"
    opener(fresh).close()
    assert schema_of(path) == schema_of(fresh)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_new_file_gets_the_latest_version(tmp_path: Path, kind: str) -> None:
    opener, migrations = KINDS[kind]
    path = tmp_path / f"{kind}.sqlite3"
    opener(path).close()
    with raw(path) as db:
        assert user_version(db) == latest_version(migrations)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_in_memory_stores_are_versioned_too(kind: str) -> None:
    opener, migrations = KINDS[kind]
    store = opener(":memory:")
    try:
        assert user_version(store.db) == latest_version(migrations)
    finally:
        store.close()


# --- newer than the code: refused, never downgraded


@pytest.fixture
def from_the_future(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    def make(kind: str) -> Path:
        path = fixture_copy(tmp_path, f"{kind}-v0.sqlite3")
        with raw(path) as db:
            db.execute("PRAGMA user_version = 99")
        return path

    yield make


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_newer_file_is_refused_and_left_as_it_is(
    from_the_future: Callable[[str], Path], kind: str
) -> None:
    path = from_the_future(kind)
    before_schema, before_rows = schema_of(path), table_counts(path)
    opener, migrations = KINDS[kind]
    with pytest.raises(SchemaTooNew) as info:
        opener(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"schema version 99, newer than this sepl-adapter knows ({len(migrations)})" in message
    assert "never downgraded" in message
    assert (info.value.found, info.value.known) == (99, len(migrations))
    with raw(path) as db:
        assert user_version(db) == 99
    assert schema_of(path) == before_schema
    assert table_counts(path) == before_rows


def test_the_command_line_says_so_in_one_line(
    from_the_future: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = from_the_future("outbox")
    path.rename(tmp_path / "outbox.sqlite3")
    monkeypatch.setenv("ADAPTER_STATE_DIR", str(tmp_path))
    assert cli.main(["deadletters", "list"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: outbox database ") and err.count("\n") == 1
    assert "schema version 99" in err


# --- the framework


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    calls: list[int] = []
    steps = (
        Migration(1, "t", "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1);"),
        Migration(2, "column b", "ALTER TABLE t ADD COLUMN b TEXT NOT NULL DEFAULT 'x';"),
        Migration(
            3, "data", function=lambda db: calls.append(db.execute("SELECT 3").fetchone()[0])
        ),
    )
    db = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    assert migrate(db, steps[:1], "test") == 1
    assert migrate(db, steps, "test") == 3
    assert migrate(db, steps, "test") == 3
    assert calls == [3]
    assert db.execute("SELECT a, b FROM t").fetchall() == [(1, "x")]
    assert user_version(db) == 3


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.sqlite3", isolation_level=None)
    migrate(db, (Migration(1, "t", "CREATE TABLE t (a);"),), "test")
    steps = (
        Migration(1, "t", "CREATE TABLE t (a);"),
        Migration(2, "u", "CREATE TABLE u (a);"),
        Migration(3, "broken", "INSERT INTO u VALUES (1); INSERT INTO nowhere VALUES (1);"),
    )
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        migrate(db, steps, "test")
    assert user_version(db) == 1
    assert not db.in_transaction
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"t"}


def test_another_process_that_migrated_first_is_not_migrated_again(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    first = sqlite3.connect(path, isolation_level=None)
    second = sqlite3.connect(path, isolation_level=None)
    steps = (Migration(1, "t", "CREATE TABLE t (a);"),)
    assert user_version(second) == 0  # read before the other one migrated
    migrate(first, steps, "test")
    assert migrate(second, steps, "test") == 1  # no "table t already exists"


def test_migrations_must_be_numbered_in_order() -> None:
    with pytest.raises(ValueError, match="numbered 3, expected 2"):
        latest_version((Migration(1, "a"), Migration(3, "b")))


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("CREATE TABLE a (x); CREATE TABLE b (y);", ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]),
        ("INSERT INTO a VALUES ('x;y');", ["INSERT INTO a VALUES ('x;y');"]),
        (
            "-- a comment; with a semicolon\nSELECT 1;\n-- trailing",
            ["-- a comment; with a semicolon\nSELECT 1;"],
        ),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; DELETE FROM c; END;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; DELETE FROM c; END;"],
        ),
        ("", []),
        (";;", []),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert split_statements(script) == expected


def test_split_statements_refuses_a_statement_without_its_semicolon() -> None:
    with pytest.raises(ValueError, match="closing"):
        split_statements("CREATE TABLE a (x); CREATE TABLE b (y)")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_released_migration_is_numbered(kind: str) -> None:
    _, migrations = KINDS[kind]
    assert latest_version(migrations) == len(migrations) >= 1
    for migration in migrations:
        split_statements(migration.sql)  # parses
