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


def read_files(directory: Path) -> list[tuple[Path, bytes]]:
    """The mapping files of a directory in name order, with their bytes."""
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not directory.is_dir():
        raise MappingError(f"{directory}: not a directory")
    sources = []
    for path in files:
        try:
            sources.append((path, path.read_bytes()))
        except OSError as exc:
            raise MappingError(f"{path}: cannot read: {exc}") from None
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


def load_directory(directory: Path, device_prefix: str = "") -> MappingSet:
    """Every *.yaml/*.yml file of a directory; two rules that precedence cannot order
    (equal priority and specificity, overlapping topics) are an error."""
    sources = read_files(directory)
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
