"""The state directory's identity: the lock that keeps it to one running adapter, and the
MQTT client id of the adapter's persistent session (issue [14]).

Both protect the broker's session: two adapters with one client id throw each other off
the broker every second, and a new id silently orphans the QoS 1 messages the broker keeps
for the old one. Each problem stops start-up with one line that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from adapter.statefile import write_atomically

LOCK_FILE = "lock"
CLIENT_ID_FILE = "mqtt-client-id"


class StateDirError(RuntimeError):
    """The state directory cannot be used as it is; `str(e)` is one line fit to show."""


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Holds an exclusive `flock` on `<state_dir>/lock` for as long as the adapter runs.
    The kernel releases it when the process ends, however it ends, so a crash leaves no
    stale lock. CLI commands that only read the state (query, deadletters, check) do not
    take it."""
    path = state_dir / LOCK_FILE
    try:
        handle = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise StateDirError(
            f"{path}: cannot open the state directory's lock: {exc.strerror}"
        ) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirError(
                    f"{path}: cannot lock the state directory: {exc.strerror}"
                ) from None
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StateDirError(
                f"{state_dir} is in use by another sepl-adapter (pid {holder}): one state "
                "directory per running adapter; give a second instance its own "
                "ADAPTER_STATE_DIR"
            ) from None
        # Who holds it, for the message above; written after the lock is ours. On a full
        # disk the pid may not fit: the lock holds without it.
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield


def client_id(state_dir: Path, instance: str = "") -> str:
    """The MQTT client id kept in the state directory: created once (`sepl-adapter-<8 hex>`,
    `sepl-adapter-<instance>-<8 hex>` for an instance of a fleet) when the file does not
    exist; an id already kept stays whatever the instance is now called. An empty or
    unreadable file is an error, never a reason to make a new id: the broker keeps the
    QoS 1 messages of the old session for it."""
    path = state_dir / CLIENT_ID_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        named = f"{instance}-" if instance else ""
        new = f"sepl-adapter-{named}{secrets.token_hex(4)}"
        write_atomically(path, new + "\n")
        return new
    except OSError as exc:
        raise StateDirError(f"{path}: cannot read the MQTT client id: {exc.strerror}") from None
    keep = (
        "write into it the client id the adapter used before (the broker's log names it), "
        "or delete it to start a new session (what the broker kept for the old one is lost)"
    )
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise StateDirError(f"{path} is not UTF-8 text: {keep}") from None
    if not text:
        raise StateDirError(f"{path} is empty: {keep}")
    if any(not char.isprintable() for char in text) or len(text.encode("utf-8")) > 65535:
        raise StateDirError(f"{path} holds no valid client id (one printable line): {keep}")
    return text


def health(state_dir: Path) -> list[str]:
    """One line per part of the state directory, for `sepl-adapter check --state-dir`:
    whether an adapter runs on it, its client id, and each database's integrity (SQLite's
    quick_check, read-only: safe beside a running adapter)."""
    lines = [_running(state_dir)]
    path = state_dir / CLIENT_ID_FILE
    if not path.exists():
        lines.append(f"{path}: none yet (made at start-up)")
    else:
        try:
            lines.append(f"{path}: ok ({client_id(state_dir)})")
        except StateDirError as exc:
            lines.append(f"error: {exc}")
    for name, what, damaged in (
        ("outbox.sqlite3", "events not yet delivered", "start-up stops until it is moved aside"),
        ("history.sqlite3", "readings for averages", "start-up moves it aside, starts anew"),
    ):
        lines.append(_database(state_dir / name, what, damaged))
    return lines


def _running(state_dir: Path) -> str:
    path = state_dir / LOCK_FILE
    if not path.exists():
        return f"{state_dir}: no adapter has run here yet"
    with path.open("r", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return f"{state_dir}: in use by a running adapter (pid {handle.read().strip()})"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return f"{state_dir}: no adapter runs on it"


def _database(path: Path, what: str, damaged: str) -> str:
    if not path.exists():
        return f"{path}: none yet"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    if found == ["ok"]:
        return f"{path}: ok ({what})"
    return f"error: {path} is damaged ({'; '.join(found[:3])}): it holds {what}; {damaged}"


__all__ = ["StateDirError", "client_id", "health", "locked"]
