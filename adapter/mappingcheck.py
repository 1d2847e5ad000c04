"""`sepl-adapter check` and `sepl-adapter explain`: what the mappings do, in words."""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapter import statedir
from adapter.config import parse_size
from adapter.discovery import STATE_FILE, DiscoverySource
from adapter.history import HistoryStore, format_stamp
from adapter.mapping import (
    AvailabilityChange,
    Mapped,
    MappingError,
    MappingSet,
    Rejected,
    load_directory,
)
from adapter.mapping.renames import device_of
from adapter.mapping.rules import DecodeError, Rule, decode_payload
from adapter.migrations import SchemaError
from adapter.sepl.state import GatewayState

# Real SEPL ids carry a UUID (`iot#40c41048-…`, `urn:infai:ses:device-type:…`).
_REAL_TYPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=None,
        help="mapping directory (MAPPINGS_DIR, default ./mappings)",
    )
    _common(parser)


def configure_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="an MQTT topic, e.g. tele/kitchen/SENSOR")
    parser.add_argument(
        "payload", nargs="?", default="", help="the payload text, or @FILE to read it from a file"
    )
    parser.add_argument("--mappings-dir", dest="directory", type=Path, default=None)
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device-prefix", default=os.environ.get("DEVICE_PREFIX", ""))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="list the devices remembered there (ADAPTER_STATE_DIR)",
    )


def _directory(args: argparse.Namespace) -> Path:
    return args.directory or Path(os.environ.get("MAPPINGS_DIR", "mappings"))


def _load(args: argparse.Namespace) -> MappingSet | None:
    """The hand-written mappings, merged with the rules generated from the discovery
    configs the adapter keeps in its state directory (when one is given)."""
    try:
        max_bytes = parse_size(os.environ.get("MAPPINGS_MAX_BYTES", "") or "8MiB")
    except ValueError as exc:
        print(f"error: MAPPINGS_MAX_BYTES: {exc}", file=sys.stderr)
        return None
    try:
        mappings = load_directory(_directory(args), args.device_prefix, max_bytes)
    except MappingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if args.state_dir is not None and (args.state_dir / STATE_FILE).exists():
        source = DiscoverySource(
            os.environ.get("DISCOVERY_TASMOTA", "tasmota/discovery"),
            os.environ.get("DISCOVERY_HOMEASSISTANT", "homeassistant"),
            args.state_dir,
            z2m_base=os.environ.get("DISCOVERY_ZIGBEE2MQTT", "zigbee2mqtt"),
        )
        mappings = source.merged(mappings)
        args.discovery_notes = source.notes
    return mappings


def placeholder_warnings(mappings: MappingSet) -> list[str]:
    warnings = []
    seen: set[str] = set()
    for rule in mappings.rules:
        device_type = rule.device.device_type
        if rule.forwards and device_type not in seen and not _REAL_TYPE.search(device_type):
            seen.add(device_type)
            warnings.append(
                f"{rule.where}: device type {device_type!r} is a placeholder: the sandbox "
                "accepts it, a real platform needs the id of a device type that exists there "
                "(D11)"
            )
    return warnings


def check(args: argparse.Namespace) -> int:
    directory = _directory(args)
    mappings = _load(args)
    if mappings is None:
        return 2  # as start-up does for the same files
    print(
        f"{directory}: {len(mappings.files)} files, {len(mappings.rules)} rules, "
        f"{len(mappings.commands)} commands"
    )
    print("\nrules (most specific first within a topic):")
    for rule in sorted(mappings.rules, key=lambda r: (r.pattern.mqtt_filter, r.id)):
        kind = "availability" if rule.availability else f"service {rule.service}"
        parts = [", ".join(r.name + (f" [{r.unit}]" if r.unit else "") for r in rule.readings)]
        if rule.channel is not None:
            parts[0] += f" (channel {rule.channel.template})"
        if rule.convention is not None:
            parts.append(f"the {rule.convention} convention's")
        if rule.all_readings is not None:
            parts.append("every other number of the message")
        readings = " and ".join(p for p in parts if p) or "-"
        print(
            f"  {rule.id}: {rule.pattern.text} -> {rule.device.uri} "
            f"({rule.device.device_type}), {kind}, readings {readings}"
            + (f", primary {' or '.join(rule.primaries)}" if rule.primaries else "")
        )
    print("\ncommands:")
    for command in mappings.commands:
        reply = f", reply on {command.reply.topic}" if command.reply else ""
        channel = (
            f" (channel {command.channel.pattern.pattern} from the data)" if command.channel else ""
        )
        print(f"  {command.service} for {command.device}: publish {command.topic}{channel}{reply}")
    device_types = mappings.device_types()
    print("\ndevice types and services:")
    for name, services in sorted(device_types.items()):
        print(f"  {name}: {', '.join(sorted(services))}")
    generated = [r for r in mappings.rules if r.id.startswith("discovered:")]
    if generated:
        print(f"\nrules generated from discovery ({len(generated)}):")
        for rule in generated:
            print(f"  {rule.id}: {rule.pattern.text} -> {rule.device.uri}, from {rule.where}")
        for note in getattr(args, "discovery_notes", []):
            print(f"  note: {note}")
    if args.state_dir is not None:
        print("\nstate directory:")
        for line in statedir.health(args.state_dir):
            print(f"  {line}")
        known = GatewayState(args.state_dir / "connector").devices
        print(f"\ndevices remembered in {args.state_dir}: {len(known)}")
        for device in sorted(known.values(), key=lambda d: d.uri):
            print(f"  {device.uri}: {device.name} ({device.device_type})")
            merged_into = device_of(device.uri)
            if merged_into is not None:
                print(
                    f"  note: {device.uri} is a part of {merged_into[0]} now; the next start"
                    " drops it from the device set (no disconnect) and moves its history"
                )
                continue
            now = mappings.device_type_of(device.uri)
            if now is not None and now != device.device_type:
                print(
                    f"  warning: {device.uri} is registered as {device.device_type} but the"
                    f" mappings make it {now}; a put does not change a device's type on the"
                    f" platform: delete it there or keep device_type {device.device_type}"
                )
    warnings = placeholder_warnings(mappings)
    overlaps = mappings.overlaps()
    if overlaps:
        print(
            f"\n{len(overlaps)} overlapping rule pairs, settled by precedence "
            "(priority, then fewer wildcards, then more literal levels):"
        )
        for overlap in overlaps:
            first, second = overlap.first, overlap.second
            winner = first if first.specificity >= second.specificity else second
            print(f"  warning: {overlap.describe()}; {winner.id!r} wins where both apply")
    if warnings:
        print(f"\n{len(warnings)} warnings:")
        for warning in warnings:
            print(f"  {warning}")
    print("\nok")
    return 0


def explain_result(mappings: MappingSet, topic: str, payload: bytes) -> dict[str, Any]:
    """What the mappings make of one message, as data (the CLI prints it, the API sends it)."""
    outcome = mappings.map(topic, payload, datetime.now(UTC))
    candidates = mappings.candidates(topic)
    if outcome is None and candidates and candidates[0][0].ignore:
        rule = candidates[0][0]
        return {"outcome": "ignored", "rule": rule.id, "where": rule.where}
    if isinstance(outcome, Mapped):
        rule = outcome.rule
        return {
            "outcome": "event",
            "rule": rule.id,
            "where": rule.where,
            "pattern": rule.pattern.text,
            "placeholders": outcome.values,
            "device": {
                "uri": outcome.device.uri,
                "name": outcome.device.name,
                "type": outcome.device.device_type,
                "tags": dict(outcome.device.tags),
            },
            "service": outcome.service,
            "readings": outcome.readings,
            "units": outcome.units,
            "missing": list(outcome.missing),
            "primary": outcome.primary,
            "parts": {"data": outcome.data, "metadata": outcome.metadata},
        }
    if isinstance(outcome, AvailabilityChange):
        return {
            "outcome": "availability",
            "rule": outcome.rule.id,
            "where": outcome.rule.where,
            "device": {"uri": outcome.device.uri, "name": outcome.device.name},
            "online": outcome.online,
        }
    if isinstance(outcome, Rejected):
        return {
            "outcome": "rejected",
            "rule": outcome.rule.id,
            "where": outcome.rule.where,
            "reason": outcome.reason,
        }
    return {"outcome": "unmapped", "why": _why_not(mappings, topic, payload, candidates)}


def explain(args: argparse.Namespace) -> int:
    mappings = _load(args)
    if mappings is None:
        return 2  # as start-up does for the same files
    result = explain_result(mappings, args.topic, _payload(args.payload))
    kind = result["outcome"]
    rule = f"rule {result.get('rule')} ({result.get('where')})"
    if kind == "ignored":
        print(f"{rule} ignores {args.topic!r} on purpose: no event")
    elif kind == "event":
        device = result["device"]
        print(f"{rule} matched {result['pattern']}")
        print(f"  placeholders: {json.dumps(result['placeholders'])}")
        print(
            f"  device: {device['uri']} name {device['name']!r} type {device['type']}"
            f" tags {device['tags']}"
        )
        print(f"  service: {result['service']}")
        missing = result["missing"]
        units = result["units"]
        readings = ", ".join(
            f"{name} {value:g}" + (f" {units[name]}" if name in units else "")
            for name, value in result["readings"].items()
        )
        print(
            f"  readings: {readings or '-'}"
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
        print(f"  primary: {result['primary']}")
        merged = _merged_state(args.state_dir, device["uri"], result)
        if merged is not None:
            print(f"  the device's state with this message ({len(merged)} readings):")
            for name, (value, unit, when) in sorted(merged.items()):
                print(f"    {name} {value:g}{f' {unit}' if unit else ''} ({when})")
        print(f"  event part data: {result['parts']['data'][:400]}")
        print(f"  event part metadata: {result['parts']['metadata']}")
    elif kind == "availability":
        state = {True: "online", False: "offline", None: "unknown payload"}[result["online"]]
        print(f"{rule}: availability of {result['device']['uri']}: {state} (no event is sent)")
    elif kind == "rejected":
        print(f"{rule} takes the topic but rejects the payload: {result['reason']}")
        return 1
    else:
        print(f"no rule takes {args.topic!r}")
        for line in result["why"]:
            print(f"  {line}")
        return 1
    return 0


def _merged_state(
    state_dir: Path | None, uri: str, result: dict[str, Any]
) -> dict[str, tuple[float, str | None, str]] | None:
    """The device's readings as the adapter's history keeps them, with this message's
    merged in (None without a state directory or history)."""
    if state_dir is None or not (state_dir / "history.sqlite3").exists():
        return None
    try:
        store = HistoryStore(state_dir / "history.sqlite3")
    except (SchemaError, sqlite3.Error) as exc:
        print(f"  (the history in {state_dir} cannot be read: {exc})")
        return None
    try:
        stored = store.device(uri)
    finally:
        store.close()
    state: dict[str, tuple[float, str | None, str]] = {}
    for name, entry in (stored or {}).get("readings", {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("value"), int | float):
            when = format_stamp(entry["ts"]) if isinstance(entry.get("ts"), int | float) else "?"
            state[name] = (float(entry["value"]), entry.get("unit"), when)
    for name, value in result["readings"].items():
        state[name] = (value, result["units"].get(name), "this message")
    return state


def _payload(text: str) -> bytes:
    if text.startswith("@"):
        return Path(text[1:]).read_bytes()
    return text.encode("utf-8")


def _why_not(
    mappings: MappingSet, topic: str, payload: bytes, candidates: list[tuple[Rule, dict[str, str]]]
) -> list[str]:
    """The closest rules and why each did not take the message."""
    reasons = []
    for rule, _ in candidates:  # the topic matched, something else did not
        try:
            document = decode_payload(rule.payload, payload)
        except DecodeError as exc:
            reasons.append(f"{rule.id} ({rule.where}): {exc}")
            continue
        failed = [c.describe() for c in rule.when if not c.holds(document)]
        reasons.append(f"{rule.id} ({rule.where}): condition not met: {'; '.join(failed)}")
    scored = sorted(
        (r for r in mappings.rules if r not in {c[0] for c in candidates}),
        key=lambda r: _closeness(r, topic),
        reverse=True,
    )
    for rule in scored[:3]:
        reasons.append(f"{rule.id} ({rule.where}): {_topic_mismatch(rule, topic)}")
    return reasons or ["there are no rules"]


def _closeness(rule: Rule, topic: str) -> tuple[int, int]:
    levels = topic.split("/")
    pattern = rule.pattern.text.split("/")
    same = 0
    for want, got in zip(pattern, levels, strict=False):
        if want == got:
            same += 2
        elif want.startswith("{") or want in ("+", "#"):
            same += 1
        else:
            break
    return same, -abs(len(pattern) - len(levels))


def _topic_mismatch(rule: Rule, topic: str) -> str:
    levels = topic.split("/")
    pattern = rule.pattern.text.split("/")
    for index, (want, got) in enumerate(zip(pattern, levels, strict=False)):
        if want.startswith("{") or want in ("+", "#"):
            if want.endswith("...}") or want == "#":
                return f"pattern {rule.pattern.text!r} does not match (after level {index + 1})"
            continue
        if want != got:
            return f"level {index + 1} is {got!r}, the pattern {rule.pattern.text!r} wants {want!r}"
    return (
        f"the topic has {len(levels)} levels, the pattern {rule.pattern.text!r} has {len(pattern)}"
    )


__all__ = ["check", "configure_check", "configure_explain", "explain"]
