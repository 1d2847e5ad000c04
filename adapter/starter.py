"""`sepl-adapter init [DIR]`: a commented starter configuration and an editable copy of
the bundled mappings, for an installed adapter (pipx, a service) that has no source tree.

The configuration file is generated from the settings table of adapter/config.py, so it
lists every setting the running code knows, with its default and meaning, never a stale
one. Also here: where the bundled files are (`bundled`) and the installed version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import yaml

from adapter import config

__all__ = ["CONFIG_NAME", "DISTRIBUTION", "bundled", "installed_version", "starter_config"]

DISTRIBUTION = "sepl-mqtt-adapter"
CONFIG_NAME = "config.yaml"
HERE = Path(__file__).resolve().parent


def installed_version() -> str:
    """The version of the installed distribution (pyproject.toml's, for an editable one)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def bundled(name: str) -> Path:
    """The bundled `mappings` or `mosquitto` directory.

    An installed wheel has them as package data in `adapter/bundled/<name>`
    (pyproject.toml maps the top-level directories there); a source tree, and an editable
    install of it, has the top-level directories themselves.
    """
    for candidate in (HERE / "bundled" / name, HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the bundled {name}/ directory is missing from {HERE}")


# --- the starter configuration


def _accepted(spec: config._Spec) -> str:
    """What a setting accepts, in words, from its own parser's error message."""
    if spec.parse is config.parse_boolean:
        return "true or false"
    for probe in ("", "\x00?"):
        try:
            spec.parse(probe)
        except ValueError as exc:
            text = str(exc).removeprefix("expected ")
            if "duration" in text:
                return "a duration"
            return text
    return ""


def _scalar(text: str) -> str:
    """`text` as a YAML scalar that reads back as the same setting text."""
    try:
        loaded = yaml.safe_load(f"k: {text}")
    except yaml.YAMLError:
        loaded = None
    if (
        text
        and isinstance(loaded, dict)
        and loaded.get("k") is not None
        and config.yaml_text(loaded["k"]) == text
    ):
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _key_and_group(spec: config._Spec) -> tuple[str, str | None]:
    group, _, key = spec.env.lower().partition("_")
    return (key, group) if key else (group, None)


def _entry(spec: config._Spec, indent: str, value: str | None) -> list[str]:
    """A comment line with the meaning, then `#key: default` (or `key: value` when set)."""
    key, _ = _key_and_group(spec)
    notes = [spec.meaning]
    if spec.default is None:
        notes.append(f"default {spec.none_text.strip('()')}")
    accepted = _accepted(spec)
    if accepted and accepted not in spec.meaning:
        notes.append(accepted)
    if spec.secret and spec.file_env is not None:
        notes.append(f"better not here: use {_key_and_group(config.BY_ENV[spec.file_env])[0]}")
    if value is not None:
        setting = f"{indent}{key}: {_scalar(value)}"
    elif spec.default is None:
        setting = f"{indent}#{key}:"
    else:
        setting = f"{indent}#{key}: {_scalar(spec.default)}"
    return [f"{indent}# {'; '.join(notes)} [{spec.env}]", setting]


def starter_config(mappings_dir: Path, version: str | None = None) -> str:
    """The commented configuration file: every setting with its default, commented out
    (`#key: value`), except MAPPINGS_DIR, which points at `mappings_dir`."""
    version = installed_version() if version is None else version
    set_values = {"MAPPINGS_DIR": str(mappings_dir)}
    lines = [
        f"# sepl-adapter settings, written by `sepl-adapter init` (version {version}).",
        "#",
        "# Every setting is listed with its meaning and default, commented out: remove the '#'",
        "# in front of a key to set it. Later wins: defaults, this file, environment variables",
        "# (the names in brackets), command-line flags. `sepl-adapter config --config FILE`",
        "# prints the effective settings and where each came from.",
        "#",
        "# Durations: 500ms, 15s, 2m, 1h, 30d, or a number of seconds.",
        "# Passwords and tokens do not belong here: point the *_file settings at a file only",
        "# the adapter can read, or set them in the environment (the systemd unit's",
        "# EnvironmentFile). See docs/operations.md of the project.",
        "",
    ]
    groups: dict[str, list[config._Spec]] = {}
    for spec in config.SPECS:
        groups.setdefault(_key_and_group(spec)[1] or spec.env.lower(), []).append(spec)
    for group, specs in groups.items():
        flat = len(specs) == 1 and _key_and_group(specs[0])[1] is None
        if not flat:
            lines.append(f"{group}:")
        for spec in specs:
            lines += _entry(spec, "" if flat else "  ", set_values.get(spec.env))
        lines.append("")
    return "\n".join(lines)


# --- the command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help=f"where to write {CONFIG_NAME} and mappings/ (default: the current directory)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")


def main(args: argparse.Namespace) -> int:
    directory: Path = args.directory.absolute()
    try:
        source = bundled("mappings")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mappings_dir = directory / "mappings"
    config_file = directory / CONFIG_NAME
    copies = {mappings_dir / path.name: path for path in sorted(source.glob("*.yaml"))}
    targets = [config_file, *copies]
    existing = [path for path in targets if path.exists()]
    if existing and not args.force:
        shown = ", ".join(str(path) for path in existing[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        count = "1 file exists" if len(existing) == 1 else f"{len(existing)} files exist"
        print(
            f"error: {count} already ({shown}{more}); nothing written. Use --force to overwrite.",
            file=sys.stderr,
        )
        return 1
    try:
        mappings_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(starter_config(mappings_dir), encoding="utf-8")
        for target, origin in copies.items():
            shutil.copyfile(origin, target)
    except OSError as exc:
        print(f"error: cannot write to {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {config_file}\n"
        f"copied {len(copies)} mapping files to {mappings_dir}\n"
        "\n"
        "next:\n"
        f"  1. edit {config_file}: the broker (mqtt:) and the platform (connector:)\n"
        f"     and, if you like, the mappings (docs/mappings.md of the project)\n"
        f"  2. sepl-adapter check {mappings_dir}\n"
        f"  3. sepl-adapter config --config {config_file}\n"
        f"  4. sepl-adapter --config {config_file}\n"
        "as a service: contrib/sepl-adapter.service and docs/operations.md of the project"
    )
    return 0
