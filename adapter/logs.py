"""Where the adapter's log lines go and what they look like.

Always stderr, one record a line (a traceback continues on the following lines), in one of
two forms (`LOGFORMAT`):

- `text` (default): `2026-11-23 21:52:00,123 INFO adapter: message`, with the instance
  name of a fleet (`ADAPTER_INSTANCE`) in brackets before the logger. The level is
  coloured only when stderr is a terminal (and `NO_COLOR` is unset, `TERM` not `dumb`);
  piped into a file, journald or `docker logs`, the lines carry no escape sequences.
- `json`: one JSON object a line, `{"time", "level", "logger", "message"}`, `"instance"`
  when one is set, and, when the record carries one, `"exception"` (the formatted
  traceback) and `"stack"`.

Under systemd with stderr connected to the journal (`JOURNAL_STREAM` names stderr's device
and inode), every line starts with the syslog priority, `<3>` … `<7>` (sd-daemon(3)):
journald strips it and files the line under that priority, so `journalctl -p warning`
works. The timestamp is left out of the text form there: journald keeps its own.

Secrets (D3): the websockets library logs whole frames at DEBUG, the credentials frame
among them, so its logger never goes below INFO, whatever LOGLEVEL says.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "journal_stream", "setup"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# sd-daemon(3) priority prefixes, by logging level (at or above).
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_COLOURS = {
    logging.DEBUG: "\x1b[2m",  # dim
    logging.INFO: "",
    logging.WARNING: "\x1b[33m",  # yellow
    logging.ERROR: "\x1b[31m",  # red
    logging.CRITICAL: "\x1b[1;31m",  # bold red
}
_RESET = "\x1b[0m"


def _priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7  # debug


def _prefixed(text: str, levelno: int) -> str:
    """Every line with the record's priority, so a traceback keeps its level in the journal."""
    prefix = f"<{_priority(levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """The classic text line; colour only on a terminal, a priority prefix in the journal."""

    def __init__(self, *, colour: bool = False, journal: bool = False, instance: str = "") -> None:
        layout = JOURNAL_TEXT_FORMAT if journal else TEXT_FORMAT
        if instance:  # letters, digits, - and _ only (adapter.config): no % to escape
            layout = layout.replace("%(name)s", f"[{instance}] %(name)s")
        super().__init__(layout)
        self.colour = colour
        self.journal = journal

    def formatMessage(self, record: logging.LogRecord) -> str:
        colour = _COLOURS.get(record.levelno, "") if self.colour else ""
        if not colour:
            return super().formatMessage(record)
        plain = record.levelname
        record.levelname = f"{colour}{plain}{_RESET}"
        try:
            return super().formatMessage(record)
        finally:
            record.levelname = plain

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _prefixed(text, record.levelno) if self.journal else text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601, milliseconds), level, logger, message,
    and exception/stack when the record has them. Newlines inside stay escaped, so a
    traceback never splits the line."""

    def __init__(self, *, journal: bool = False, instance: str = "") -> None:
        super().__init__()
        self.journal = journal
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        document: dict[str, str] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.instance:
            document["instance"] = self.instance
        if record.exc_info and not record.exc_text:
            # Cached like logging.Formatter does, for other handlers of the same record.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(document, ensure_ascii=False)
        return f"<{_priority(record.levelno)}>{line}" if self.journal else line


def journal_stream(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journal connection systemd gave this service: systemd
    sets JOURNAL_STREAM=<device>:<inode> of it (systemd.exec(5))."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a file (io.StringIO)
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def _wants_colour(stream: TextIO, environ: dict[str, str]) -> bool:
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def formatter_for(
    fmt: str, stream: TextIO, environ: dict[str, str] | None = None, instance: str = ""
) -> logging.Formatter:
    """The formatter for `fmt` ("text" or "json") writing to `stream`."""
    env = dict(os.environ) if environ is None else environ
    journal = journal_stream(stream, env)
    if fmt == "json":
        return JsonFormatter(journal=journal, instance=instance)
    if fmt != "text":
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    colour = not journal and _wants_colour(stream, env)
    return TextFormatter(colour=colour, journal=journal, instance=instance)


def setup(
    level: str, fmt: str | None = None, stream: TextIO | None = None, instance: str = ""
) -> None:
    """Configure the root logger once, like `logging.basicConfig` (nothing changes when it
    already has handlers, e.g. under pytest). `fmt` None means the LOGFORMAT environment
    variable (validated by adapter.config before this runs), else text."""
    if fmt is None:
        fmt = os.environ.get("LOGFORMAT", "").strip().lower() or "text"
        if fmt not in FORMATS:
            fmt = "text"
    target = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter_for(fmt, target, instance=instance))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # The websockets debug log prints whole frames, the credentials frame among them (D3).
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))
