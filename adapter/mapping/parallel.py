"""Compiling many mapping files on two cores: a forked child compiles the later files while
this process compiles the earlier ones, and hands them over in the cache's pickle format.

Worth it only for a first start (or an upgrade) with a large rule set: 10,000 rules take
about 0.6 s to parse and compile on one core, and a start-up should take less than a
second. Small sets, a single file, one core, a platform without fork, or a process that
already runs other threads (a hot reload: forking then is unsafe) compile in this process
as before.

Whatever goes wrong in the child costs only its help: files it did not hand over in full
are compiled here, so errors are found and worded as in a plain compile, and the first
failing file in name order is the one reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from adapter.mapping import cache
from adapter.mapping.compile import compile_files
from adapter.mapping.yamlsource import MappingError

MIN_BYTES = 256 * 1024  # less than this compiles faster than a fork pays back
CHILD_SHARE = 0.55  # of the bytes, compiled here; the rest by the child
CHILD_TIMEOUT = 120.0  # s; a child that takes longer is killed and its files compiled here
_OK, _ERROR, _UNPICKLABLE = b"o", b"e", b"u"
_RECORD = struct.Struct("<cQ")  # kind, length of what follows

Source = tuple[Path, bytes]
Compiled = tuple[cache.Compiled, bytes | None]  # rules and commands, and their pickle if made


def compile_sources(sources: Sequence[Source]) -> list[Compiled]:
    """Each source's compiled rules and commands, in order; MappingError for the first
    file (in order) that fails."""
    split = _split(sources)
    if split is None:
        return _compile_here(sources)
    with tempfile.TemporaryFile() as out:
        pid = _fork_child(sources[split:], out.fileno())
        if pid is None:
            return _compile_here(sources)
        try:
            mine = _compile_here(sources[:split])
        except BaseException:
            _stop(pid)
            raise
        _wait(pid)
        out.seek(0)
        theirs = _read_results(out.read(), sources[split:])
    return mine + theirs


def _compile_here(sources: Sequence[Source]) -> list[Compiled]:
    return [(compile_files([source]), None) for source in sources]


def _split(sources: Sequence[Source]) -> int | None:
    """Where the child's files begin, or None to compile here."""
    total = sum(len(data) for _, data in sources)
    if len(sources) < 2 or total < MIN_BYTES or not hasattr(os, "fork"):
        return None
    if threading.active_count() > 1 or _cpus() < 2:
        return None
    # The child also pickles what it compiled, and this process reads that back: about a
    # sixth of compiling. So the child takes a little less than half of the bytes.
    seen = 0
    for index, (_, data) in enumerate(sources):
        if seen >= total * CHILD_SHARE:
            return max(index, 1)
        seen += len(data)
    return len(sources) - 1


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fork_child(sources: Sequence[Source], fd: int) -> int | None:
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid:
        return pid
    # The child: compile, write each file's record, leave without running anything of the
    # parent's (no atexit, no flushing of inherited buffers).
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            for source in sources:
                try:
                    compiled = compile_files([source])
                except MappingError as exc:
                    _write(out, _ERROR, str(exc).encode("utf-8"))
                    break
                blob = cache.dumps(compiled)
                _write(out, _OK if blob is not None else _UNPICKLABLE, blob or b"")
    finally:
        os._exit(0)


def _write(out: IO[bytes], kind: bytes, payload: bytes) -> None:
    out.write(_RECORD.pack(kind, len(payload)) + payload)


def _read_results(data: bytes, sources: Sequence[Source]) -> list[Compiled]:
    """The child's files: as it handed them over, and compiled here from the first one it
    did not hand over whole (or that does not load)."""
    results: list[Compiled] = []
    position = 0
    for source in sources:
        head_end = position + _RECORD.size
        if head_end > len(data):
            break
        kind, length = _RECORD.unpack_from(data, position)
        payload = data[head_end : head_end + length]
        if len(payload) < length:
            break
        position = head_end + length
        if kind == _ERROR:
            raise MappingError(payload.decode("utf-8"))
        compiled = cache.loads(payload) if kind == _OK else None
        if compiled is None:
            results.append((compile_files([source]), None))
        else:
            results.append((compiled, payload))
    results += _compile_here(sources[len(results) :])
    return results


def _wait(pid: int) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.002)
    _stop(pid)


def _stop(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
