"""A cache of compiled mapping files, so that a start with unchanged files skips parsing and
compiling them (10,000 rules: most of a second even after the YAML fast path), and a start
or reload after editing one file compiles only that file.

One file, `mappings.cache`, in a directory of the adapter's own state. It holds the code
digest, then per mapping file the pickled rules and commands under a key: a hash of the
file's name (rule locations name it) and bytes. The code digest is a hash of the source of
every module of the `adapter` package, taken when this module is imported (the code this
process runs), and of the Python, PyYAML and jmespath versions: a cache written by other
code is never read. A file's compiled rules do not depend on the other files nor on the
device prefix (MappingSet applies it), so entries are per file; the one check that spans
files (rules that precedence cannot order) is skipped only when the set of file keys and
the prefix are those it last passed with (`checked`).

The file carries a checksum of its contents, so a truncated or damaged one is ignored and
rewritten; it is written to a temporary file that then replaces the old one, so a reader
never sees half a file. Any problem reading or writing it only costs a load without it.

The entries are pickles. Unpickling can run code, which is acceptable only because the
file is our own, in the adapter's own state directory, written by the adapter's own user:
whoever can write there can already change the outbox and the device registry. Even so,
the unpickler accepts only classes defined in the mapping modules and a few harmless
constructors (`SafeUnpickler.find_class`), so a foreign file cannot call anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import pickle
import re
import struct
import sys
import tempfile
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import jmespath
import yaml

import adapter
import adapter.topic as topic_module
from adapter.mapping import rules as rules_module
from adapter.mapping.compile import path_of
from adapter.mapping.rules import CommandRule, Rule

log = logging.getLogger(__name__)

FILE_NAME = "mappings.cache"
MAGIC = b"SEPLMAP2"  # the layout's version: change it when the layout below changes
_DIGEST = 32  # sha256
_HEAD = struct.Struct(f"<8s{_DIGEST}s{_DIGEST}s")  # magic, code digest, checksum of the rest
_INDEX = struct.Struct(f"<{_DIGEST}sI")  # `checked`, number of entries
_ENTRY = struct.Struct(f"<{_DIGEST}sQ")  # file key, length of its pickle
_PROTOCOL = 5

Compiled = tuple[list[Rule], list[CommandRule]]

# Modules whose classes a cache may hold (Rule, TopicPattern, Node, ...). Only classes
# defined there: they build mapping values and touch nothing else.
_CLASS_MODULES = frozenset(
    {
        "adapter.mapping.rules",
        "adapter.mapping.paths",
        "adapter.mapping.yamlsource",
        "adapter.topic",
    }
)


def _path(text: str) -> rules_module.Path:
    # Paths hold compiled closures, which pickle cannot store: stored as their text.
    return path_of(text)


def _zone(key: str) -> tzinfo:
    return zoneinfo.ZoneInfo(key)


def _regex(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _missing() -> object:
    return rules_module._MISSING


def _rebuild(cls: type, names: tuple[str, ...], values: tuple[Any, ...]) -> Any:
    """An instance as its constructor left it: attributes set one by one in their original
    order, so that CPython keeps them inline and shares the key table among instances.
    (Pickle's default sets `__dict__`, which makes each instance a dict of its own: a fifth
    more memory for 10,000 rules, and slower attribute reads in `map`.)"""
    if not (isinstance(cls, type) and cls.__module__ in _CLASS_MODULES):
        raise pickle.UnpicklingError(f"{cls!r} in a mapping cache")
    if names not in _CHECKED_NAMES:
        if len(names) != len(values) or any(name.startswith("__") for name in names):
            raise pickle.UnpicklingError(f"attributes {names!r} in a mapping cache")
        _CHECKED_NAMES.add(names)
    instance: Any = object.__new__(cls)
    for name, value in zip(names, values):  # noqa: B905 - lengths checked above
        _set(instance, name, value)
    return instance


_CHECKED_NAMES: set[tuple[str, ...]] = set()
_set = object.__setattr__  # frozen dataclasses refuse their own __setattr__


# The few functions and stdlib classes a cache may call, besides those classes.
_CALLABLES: dict[tuple[str, str], Any] = {
    (__name__, "_path"): _path,
    (__name__, "_zone"): _zone,
    (__name__, "_regex"): _regex,
    (__name__, "_missing"): _missing,
    (__name__, "_rebuild"): _rebuild,
    ("datetime", "timezone"): timezone,
    ("datetime", "timedelta"): timedelta,
}


def _code_digest() -> bytes | None:
    """The source of the running `adapter` package and the versions of what compiling uses:
    any change gives another digest. None (no caching) when the source cannot be read."""
    try:
        root = Path(str(adapter.__file__)).parent
        digest = hashlib.sha256()
        versions = (MAGIC, sys.version, yaml.__version__, yaml.__with_libyaml__)
        digest.update(repr((*versions, jmespath.__version__, _PROTOCOL)).encode())
        for path in sorted(root.rglob("*.py")):
            data = path.read_bytes()
            digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.digest()
    except (OSError, TypeError, ValueError) as exc:
        log.debug("mapping cache disabled: cannot hash the adapter's source: %s", exc)
        return None


# Taken at import, together with the modules it describes: a package upgraded under a
# running adapter must not make a hot reload write a cache that the new code would trust.
_CODE = _code_digest()


def enabled() -> bool:
    return _CODE is not None


def file_key(path: Path, data: bytes) -> bytes:
    """The key of one mapping file's compiled form: its name and its bytes."""
    digest = hashlib.sha256(repr((str(path), len(data))).encode())
    digest.update(data)
    return digest.digest()


def set_key(file_keys: Sequence[bytes], device_prefix: str) -> bytes:
    """The key of a whole load: which files, in which order, and the prefix."""
    digest = hashlib.sha256(repr(device_prefix).encode())
    for key in file_keys:
        digest.update(key)
    return digest.digest()


UNCHECKED = bytes(_DIGEST)  # `checked` of files that failed the check across files


@dataclass(frozen=True)
class Stored:
    checked: bytes  # the set_key of the last load that passed the check across files
    entries: dict[bytes, bytes]  # file key -> pickled (rules, commands)


def _reduce_path(path: rules_module.Path) -> tuple[Any, ...]:
    return _path, (path.text,)


def _reduce_zone(zone: zoneinfo.ZoneInfo) -> tuple[Any, ...]:
    if zone.key is None:
        raise pickle.PicklingError("a time zone without key")
    return _zone, (zone.key,)


def _reduce_regex(regex: re.Pattern[str]) -> tuple[Any, ...]:
    return _regex, (regex.pattern, regex.flags)


def _reduce_object(value: object) -> tuple[Any, ...]:
    # Condition.equals defaults to a sentinel compared by identity: stored by name.
    if value is rules_module._MISSING:
        return _missing, ()
    raise pickle.PicklingError(f"an anonymous object: {value!r}")


_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_DERIVED: dict[type, frozenset[str]] = {}


def _reduce_instance(instance: Any) -> tuple[Any, ...]:
    cls = type(instance)
    attributes = vars(instance)
    # Values of cached_property are derived (and may be closures): computed again on use.
    derived = _DERIVED.get(cls)
    if derived is None:
        derived = _DERIVED[cls] = frozenset(
            name for name in dir(cls) if isinstance(getattr(cls, name), functools.cached_property)
        )
    if derived.isdisjoint(attributes):
        names, values = tuple(attributes), tuple(attributes.values())
    else:
        kept = [(name, value) for name, value in attributes.items() if name not in derived]
        names, values = tuple(n for n, _ in kept), tuple(v for _, v in kept)
    # One tuple of names per class, which pickle then stores once.
    return _rebuild, (cls, _NAMES.setdefault(names, names), values)


def _instance_classes() -> dict[type, Any]:
    """The dataclasses of the mapping modules (Rule, TopicPattern, Reading, ...)."""
    found: dict[type, Any] = {}
    for module in (rules_module, topic_module):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__ == module.__name__
                and dataclasses.is_dataclass(value)
                and not hasattr(value, "__slots__")
            ):
                found[value] = _reduce_instance
    return found


# Per type, looked up by the C pickler itself: a reducer_override or persistent_id would be
# a Python call for each of the 100,000 objects of 10,000 rules (half the time of a dump).
_REDUCERS: dict[type, Any] = {
    **_instance_classes(),
    rules_module.Path: _reduce_path,
    zoneinfo.ZoneInfo: _reduce_zone,
    re.Pattern: _reduce_regex,
    object: _reduce_object,
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        known = _CALLABLES.get((module, name))
        if known is not None:
            return known
        if module in _CLASS_MODULES and "." not in name:
            value = getattr(sys.modules.get(module), name, None)
            if isinstance(value, type) and value.__module__ == module:  # not imported ones
                return value
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a mapping cache")


def dumps(compiled: Compiled) -> bytes | None:
    """One file's pickled rules and commands, or None when they cannot be pickled (then
    that file is not cached). What MappingSet or `map` cached on the rules (cached_property
    values) is left out."""
    buffer = io.BytesIO()
    try:
        pickler = pickle.Pickler(buffer, protocol=_PROTOCOL)
        pickler.dispatch_table = _REDUCERS
        pickler.dump(compiled)
    except Exception as exc:  # whatever a value's reduction raises: only no cache
        log.warning("mapping cache: compiled rules that do not pickle, not cached: %s", exc)
        return None
    return buffer.getvalue()


def loads(blob: bytes) -> Compiled | None:
    """One file's rules and commands from the cache, or None when the entry is unusable."""
    try:
        value = SafeUnpickler(io.BytesIO(blob)).load()
    except Exception as exc:  # a damaged pickle raises nearly anything; it is only a miss
        log.warning("mapping cache entry unreadable (%s); compiling the file", exc)
        return None
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], list)
        and isinstance(value[1], list)
        and all(type(rule) is Rule for rule in value[0])
        and all(type(command) is CommandRule for command in value[1])
    ):
        log.warning("mapping cache entry holds something else; compiling the file")
        return None
    return value[0], value[1]


def load(directory: Path) -> Stored | None:
    """The cache of `directory`, or None: no file, written by other code, damaged."""
    if _CODE is None:
        return None
    path = directory / FILE_NAME
    try:
        with path.open("rb") as file:
            head = file.read(_HEAD.size)
            if len(head) != _HEAD.size:
                return None
            magic, code, checksum = _HEAD.unpack(head)
            if magic != MAGIC or code != _CODE:
                return None  # written by other code: the usual miss after an upgrade
            rest = file.read()
    except OSError:
        return None
    if hashlib.sha256(rest).digest() != checksum:
        log.warning("mapping cache %s is damaged; compiling the mapping files", path)
        return None
    try:
        checked, count = _INDEX.unpack_from(rest)
        offset = _INDEX.size
        index = []
        for _ in range(count):
            index.append(_ENTRY.unpack_from(rest, offset))
            offset += _ENTRY.size
        entries = {}
        for key, length in index:
            entries[key] = rest[offset : offset + length]
            offset += length
    except struct.error:
        return None  # a good checksum over a bad layout: not ours after all
    if offset != len(rest):
        return None
    return Stored(checked, entries)


def write(directory: Path, checked: bytes, entries: Mapping[bytes, bytes]) -> None:
    """Replace the cache file atomically; failing only logs (the load itself succeeded)."""
    if _CODE is None:
        return
    parts = [_INDEX.pack(checked, len(entries))]
    parts += [_ENTRY.pack(key, len(blob)) for key, blob in entries.items()]
    parts += entries.values()
    checksum = hashlib.sha256()
    for part in parts:  # not joined: that would be one more copy of every pickle
        checksum.update(part)
    tmp: str | None = None
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mappings.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(_HEAD.pack(MAGIC, _CODE, checksum.digest()))
            file.writelines(parts)
        # No fsync: after a crash a short or empty file fails its checksum and is rebuilt.
        os.replace(tmp, directory / FILE_NAME)
        tmp = None
    except OSError as exc:
        log.warning("mapping cache not written to %s: %s", directory, exc)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


__all__ = [
    "FILE_NAME",
    "UNCHECKED",
    "SafeUnpickler",
    "Stored",
    "dumps",
    "enabled",
    "file_key",
    "load",
    "loads",
    "set_key",
    "write",
]
