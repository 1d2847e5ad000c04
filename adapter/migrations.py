"""Schema versions of the SQLite files, and the forward migrations between them.

Each file (the outbox, the history, the sandbox's store) keeps its schema version in
`PRAGMA user_version`, and its module keeps a list of `Migration`s: migration N takes a
file from version N-1 to N. Opening a file runs every migration it has not had yet, in
one transaction, so a crash or an error in the middle leaves it at the version it had.

Version 0 is a file the code before versioning created (the same tables, user_version
left at 0) or a new, empty file; migration 1 is that first released schema, written with
`CREATE … IF NOT EXISTS`, so it turns both into version 1. To change a schema later,
append a migration (`ALTER TABLE …`, a new index, a table copy, or a Python function for
data) and leave the earlier ones as they are: they are what the files in the field went
through. A file whose version is newer than the code knows was written by a newer
release; it is refused (`SchemaTooNew`), never downgraded or written to.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapter.sqlitedb import open_db, transaction

__all__ = [
    "Migration",
    "SchemaError",
    "SchemaTooNew",
    "latest_version",
    "migrate",
    "open_versioned",
    "split_statements",
    "user_version",
]

log = logging.getLogger("adapter.migrations")


class SchemaError(RuntimeError):
    """A database file this code cannot use as it is; `str(e)` is fit to show as is."""


class SchemaTooNew(SchemaError):
    """The file's schema version is newer than the code knows: a newer release wrote it."""

    def __init__(self, what: str, where: str, found: int, known: int) -> None:
        super().__init__(
            f"{what} database {where} has schema version {found}, newer than this "
            f"sepl-adapter knows ({known}): a newer release wrote it. Run that release (or "
            "newer) again, or restore the copy saved before the upgrade; a database is "
            "never downgraded."
        )
        self.found = found
        self.known = known


class CorruptDatabase(SchemaError):
    """The file is not a SQLite database, or SQLite found it damaged (SQLITE_CORRUPT,
    SQLITE_NOTADB): `str(e)` names it and says what to do, for the caller to add to."""

    def __init__(self, what: str, where: str, reason: str) -> None:
        super().__init__(f"{what} database {where} is damaged ({reason})")
        self.what = what
        self.where = where


# SQLite's result codes for a damaged file (sqlite3.Error.sqlite_errorcode, Python 3.11).
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


@dataclass(frozen=True)
class Migration:
    """The step to `version` from `version - 1`: SQL statements, then `function`."""

    version: int
    description: str
    sql: str = ""
    function: Callable[[sqlite3.Connection], None] | None = None


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each ending with its `;`.

    `executescript` would do this too, but it commits any open transaction first, and a
    migration must run inside one.
    """
    statements: list[str] = []
    current = ""
    for char in script:
        current += char
        if char == ";" and sqlite3.complete_statement(current):
            if current.strip() != ";":
                statements.append(current.strip())
            current = ""
    # Only comments and whitespace may follow the last `;`.
    if any(line.split("--", 1)[0].strip() for line in current.splitlines()):
        raise ValueError(f"SQL statement without a closing ';': {current.strip()[:60]!r}")
    return statements


def user_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def latest_version(migrations: Sequence[Migration]) -> int:
    """The version the migrations end at; they must number 1, 2, 3, … in order."""
    for number, migration in enumerate(migrations, start=1):
        if migration.version != number:
            raise ValueError(
                f"migration {migration.description!r} is numbered {migration.version}, "
                f"expected {number}"
            )
    return len(migrations)


def _where(db: sqlite3.Connection) -> str:
    for _, name, file in db.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return file or ":memory:"
    return "?"


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration], what: str) -> int:
    """Bring `db` to the latest version of `migrations`; returns that version.

    Nothing is written when the file is current. Otherwise one `BEGIN IMMEDIATE`
    transaction holds the write lock while the version is read again (another process
    opening the same file may have migrated it meanwhile) and the missing steps run.
    """
    latest = latest_version(migrations)
    found = user_version(db)
    if found == latest:
        return latest
    if found > latest:
        raise SchemaTooNew(what, _where(db), found, latest)
    with transaction(db):
        found = user_version(db)
        if found > latest:
            raise SchemaTooNew(what, _where(db), found, latest)
        for migration in migrations[found:]:
            if found > 0:  # a new file is not news; an upgrade is
                log.info(
                    "%s database %s: schema %d -> %d (%s)",
                    what,
                    _where(db),
                    migration.version - 1,
                    migration.version,
                    migration.description,
                )
            for statement in split_statements(migration.sql):
                db.execute(statement)
            if migration.function is not None:
                migration.function(db)
            # PRAGMA takes no parameters; the value is our own integer.
            db.execute(f"PRAGMA user_version = {int(migration.version)}")
    return latest


def open_versioned(
    path: Path | str, migrations: Sequence[Migration], what: str
) -> sqlite3.Connection:
    """`open_db`, then `migrate`; the connection is closed again when migrating fails.
    CorruptDatabase when SQLite finds the file damaged or no database at all."""
    try:
        db = open_db(path)
    except sqlite3.DatabaseError as exc:
        _raise_if_corrupt(exc, what, path)
        raise
    try:
        migrate(db, migrations, what)
        # The first pages: a file whose header is fine but whose schema is damaged fails
        # here, at start-up, rather than at the first write of a message.
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        _raise_if_corrupt(exc, what, path)
        raise
    except BaseException:
        db.close()
        raise
    return db


def _raise_if_corrupt(exc: sqlite3.DatabaseError, what: str, path: Path | str) -> None:
    if getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES:
        raise CorruptDatabase(what, str(path), str(exc)) from None


def move_aside(path: Path) -> Path:
    """A damaged database file renamed `<name>.damaged-<UTC time>`, with its -wal and
    -shm files; returns the new name of the database."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(aside.with_name(aside.name + suffix))
    return aside
