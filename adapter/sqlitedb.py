"""SQLite files of the adapter and the sandbox: WAL, and explicit transactions.

With `isolation_level=None` Python's sqlite3 runs in autocommit mode, where `with db:`
does not open a transaction: every statement of an `executemany` would commit on its own
(about 35,000 rows/s here instead of several hundred thousand). `transaction` opens one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_db(path: Path | str) -> sqlite3.Connection:
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL with WAL survives a crash of the process (kill -9); only a power cut may lose
    # the last transactions.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    # 512 KiB of page cache, not SQLite's 2 MiB: the adapter holds three connections, its
    # writes touch a few pages each, and the OS caches the file anyway.
    db.execute("PRAGMA cache_size=-512")
    return db


# SQLite's primary result codes of a write the disk refused: SQLITE_FULL, and SQLITE_IOERR
# (a file system that fails writes when full reports that). sqlite_errorcode may carry an
# extended code (SQLITE_IOERR_WRITE is 778): its low byte is the primary one.
_DISK_FULL_CODES = {10, 13}


def disk_full(exc: BaseException) -> bool:
    """Whether a sqlite3 error is the disk refusing to write (full, or failing)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and isinstance(code, int) and code & 0xFF in _DISK_FULL_CODES
    )


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
