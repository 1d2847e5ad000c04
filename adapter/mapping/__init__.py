"""Mapping files: YAML rules that turn MQTT messages into SEPL devices and events, and SEPL
commands into MQTT publishes. Compiling and matching are pure; `load_directory` here is
the only part that reads files."""

from __future__ import annotations

from pathlib import Path

from adapter.mapping.compile import compile_files, compile_text
from adapter.mapping.mappingset import (
    AvailabilityChange,
    Mapped,
    MappingSet,
    Outcome,
    Overlap,
    PublishPlan,
    Rejected,
)
from adapter.mapping.rules import CommandRule, Rule
from adapter.mapping.yamlsource import MappingError

# MAPPINGS_MAX_BYTES' default: the bundled files are 20-60 KB; a file of tens of MB took
# `check` minutes and gigabytes of memory (issue [14]).
MAX_BYTES = 8 * 2**20


def read_files(directory: Path, max_bytes: int = MAX_BYTES) -> list[tuple[Path, bytes]]:
    """The mapping files of a directory in name order, with their bytes; a file larger
    than `max_bytes` is an error before it is read."""
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not directory.is_dir():
        raise MappingError(f"{directory}: not a directory")
    sources = []
    for path in files:
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise MappingError(
                    f"{path}: {size:,} bytes, more than MAPPINGS_MAX_BYTES ({max_bytes:,}):"
                    " split it, or raise the limit"
                )
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)  # it may have grown since
        except OSError as exc:
            raise MappingError(f"{path}: cannot read: {exc}") from None
        if len(data) > max_bytes:
            raise MappingError(f"{path}: more than MAPPINGS_MAX_BYTES ({max_bytes:,}) bytes")
        sources.append((path, data))
    return sources


def directory_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, modification times and sizes of the mapping files: what a watcher compares
    to see an edit (the adapter's hot reload, the sandbox's device-type registry)."""
    entries = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def load_directory(
    directory: Path, device_prefix: str = "", max_bytes: int = MAX_BYTES
) -> MappingSet:
    """Every *.yaml/*.yml file of a directory; two rules that precedence cannot order
    (equal priority and specificity, overlapping topics) are an error."""
    sources = read_files(directory, max_bytes)
    rules, commands = compile_files(sources)
    return _checked(MappingSet(rules, commands, device_prefix, [str(p) for p, _ in sources]))


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
    "MAX_BYTES",
    "AvailabilityChange",
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
    "directory_signature",
    "load_directory",
]
