"""Command line: `sepl-adapter [run]`, `config`, `check`, `explain`, `query`, … Each
subcommand lives in the module that holds its logic; this file only wires them up."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from adapter.migrations import SchemaError
from adapter.statedir import StateDirError

# name: (help, module, parser set-up function, entry function)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "run": ("run the adapter (the default)", "adapter.app", "configure_parser", "main"),
    "config": (
        "print the effective settings and their source",
        "adapter.config",
        "add_arguments",
        "print_effective",
    ),
    "check": (
        "validate and list the mappings",
        "adapter.mappingcheck",
        "configure_check",
        "check",
    ),
    "explain": (
        "show what the mappings make of one message",
        "adapter.mappingcheck",
        "configure_explain",
        "explain",
    ),
    "query": (
        "the average query over the local history",
        "adapter.query",
        "configure_parser",
        "main",
    ),
    "deadletters": (
        "list, replay or purge refused events",
        "adapter.deadletters",
        "configure_parser",
        "main",
    ),
    "devices": (
        "list the known devices, or forget some (a fleet's partitions changed)",
        "adapter.gatewaydevices",
        "configure_parser",
        "main",
    ),
    "sandbox": (
        "run the local SEPL sandbox platform",
        "adapter.sandbox",
        "configure_parser",
        "main",
    ),
    "simulate": (
        "simulate Tasmota devices on an MQTT broker",
        "sepl_dev.simulate",
        "configure_parser",
        "main",
    ),
    "init": (
        "write a commented starter config and a copy of the bundled mappings",
        "adapter.starter",
        "configure_parser",
        "main",
    ),
}


def _function(module: str, name: str) -> Callable[..., Any]:
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sepl-adapter",
        description="Forward MQTT device readings to the SEPL connector and route commands back.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {_function('adapter.starter', 'installed_version')()}",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (text, module, configure, _) in SUBCOMMANDS.items():
        _function(module, configure)(sub.add_parser(name, help=text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in {*SUBCOMMANDS, "-h", "--help", "--version"}:
        args_list.insert(0, "run")
    args = build_parser().parse_args(args_list)
    _, module, _, entry = SUBCOMMANDS[args.command]
    try:
        result: int = _function(module, entry)(args)
    except BrokenPipeError:
        # `sepl-adapter check | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SchemaError, StateDirError) as exc:
        # A database from a newer release, a state directory in use or with a broken
        # identity: one line, exit 2 (the unit does not restart).
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result
