"""Mapping files: YAML rules that turn MQTT messages into SEPL devices and events, and SEPL
commands into MQTT publishes. Compiling and matching are pure; `load_directory` reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapter.mapping import cache
from adapter.mapping.compile import compile_text, gc_paused, read_files
from adapter.mapping.mappingset import (
    AvailabilityChange,
    Mapped,
    MappingSet,
    Outcome,
    Overlap,
    PublishPlan,
    Rejected,
)
from adapter.mapping.parallel import compile_sources
from adapter.mapping.rules import CommandRule, Rule
from adapter.mapping.yamlsource import MappingError

CacheWrite = Callable[[], None]


def load_directory(
    directory: Path, device_prefix: str = "", *, cache_dir: Path | None = None
) -> MappingSet:
    """Every *.yaml/*.yml file of a directory; two rules that precedence cannot order
    (equal priority and specificity, overlapping topics) are an error.

    With `cache_dir` (a directory of the adapter's own state), each file's compiled rules
    are kept there and reused while the file and the adapter's code stay the same
    (adapter/mapping/cache.py). Errors are never cached: broken files fail as without it."""
    mappings, write = load_directory_deferred(directory, device_prefix, cache_dir=cache_dir)
    if write is not None:
        write()
    return mappings


def load_directory_deferred(
    directory: Path, device_prefix: str = "", *, cache_dir: Path | None = None
) -> tuple[MappingSet, CacheWrite | None]:
    """`load_directory`, with the cache write left to the caller: the function that
    pickles the newly compiled files and writes the cache, or None when nothing changed.
    Start-up calls it once it is up (10,000 rules: 0.1 s of pickling)."""
    with gc_paused():
        sources = read_files(directory)
        files = [str(path) for path, _ in sources]
        if cache_dir is None or not cache.enabled():
            compiled = [value for value, _ in compile_sources(sources)]
            return _checked(MappingSet(*_joined(compiled), device_prefix, files)), None
        stored = cache.load(cache_dir)
        old = stored.entries if stored is not None else {}
        keys = [cache.file_key(path, data) for path, data in sources]
        checked = cache.set_key(keys, device_prefix)
        entries: dict[bytes, bytes] = {}
        found: dict[int, cache.Compiled] = {}
        for index, key in enumerate(keys):
            blob = old.get(key)
            value = None if blob is None else cache.loads(blob)
            if blob is not None and value is not None:
                entries[key] = blob
                found[index] = value
        todo = [index for index in range(len(sources)) if index not in found]
        # Files compiled now: pickled for the cache later, unless a helper process compiled
        # them and handed them over pickled already.
        compiled_now: list[tuple[bytes, cache.Compiled]] = []
        for index, (value, blob) in zip(
            todo, compile_sources([sources[index] for index in todo]), strict=True
        ):
            found[index] = value
            if blob is not None:
                entries[keys[index]] = blob
            else:
                compiled_now.append((keys[index], value))
        rules, commands = _joined([found[index] for index in range(len(sources))])
        mappings = MappingSet(rules, commands, device_prefix, files)
        if not todo and stored is not None and stored.checked == checked:
            # Exactly these files passed the check below with this code (the cache is
            # written by this code only): not checked again.
            return mappings, None
        try:
            _checked(mappings)
        except MappingError:
            # Each file compiled and stays useful; the set as a whole is not marked checked.
            cache.write(cache_dir, cache.UNCHECKED, _with(entries, compiled_now))
            raise

    def write() -> None:
        cache.write(cache_dir, checked, _with(entries, compiled_now))

    return mappings, write


def _joined(compiled: list[cache.Compiled]) -> tuple[list[Rule], list[CommandRule]]:
    rules: list[Rule] = []
    commands: list[CommandRule] = []
    for file_rules, file_commands in compiled:
        rules += file_rules
        commands += file_commands
    return rules, commands


def _with(
    entries: dict[bytes, bytes], compiled: list[tuple[bytes, cache.Compiled]]
) -> dict[bytes, bytes]:
    """The cache entries plus those of the files compiled by this load (pickling them skips
    whatever MappingSet or `map` derived on the rules since)."""
    for key, value in compiled:
        blob = cache.dumps(value)
        if blob is not None:
            entries[key] = blob
    return entries


def _checked(mappings: MappingSet) -> MappingSet:
    conflicts = mappings.conflicts()
    if conflicts:
        first = conflicts[0]
        raise MappingError(
            f"{first.second.where}: {first.describe()}, with equal priority and specificity; "
            "set 'priority' on one of them or make one topic more specific"
        )
    return mappings


__all__ = [
    "AvailabilityChange",
    "CacheWrite",
    "CommandRule",
    "Mapped",
    "MappingError",
    "MappingSet",
    "Outcome",
    "Overlap",
    "PublishPlan",
    "Rejected",
    "Rule",
    "compile_text",
    "load_directory",
    "load_directory_deferred",
]
