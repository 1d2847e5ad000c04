"""Command line: `sepl-adapter [run]`, `config`, `sandbox`, `simulate`, …

Each subcommand lives in the module that holds its logic; this file only wires them up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from adapter import config, deadletters, sandbox, simulate
    from adapter.mapping import report

    parser = argparse.ArgumentParser(
        prog="sepl-adapter",
        description="Forward MQTT device readings to the SEPL connector and route commands back.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the adapter (the default)")
    config.add_arguments(run)
    cfg = sub.add_parser("config", help="print the effective settings and their source")
    config.add_arguments(cfg)
    sandbox.configure_parser(sub.add_parser("sandbox", help="run the local SEPL sandbox platform"))
    simulate.configure_parser(
        sub.add_parser("simulate", help="simulate Tasmota devices on an MQTT broker")
    )
    deadletters.configure_parser(
        sub.add_parser("deadletters", help="list, replay or purge refused events")
    )
    report.configure_check(sub.add_parser("check", help="validate and list the mappings"))
    report.configure_explain(
        sub.add_parser("explain", help="show what the mappings make of one message")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = {
        "run",
        "config",
        "sandbox",
        "simulate",
        "check",
        "explain",
        "deadletters",
        "-h",
        "--help",
    }
    if not args_list or args_list[0] not in known:
        args_list.insert(0, "run")
    args = parser.parse_args(args_list)
    if args.command == "config":
        from adapter import config

        return config.print_effective(args)
    if args.command == "sandbox":
        from adapter import sandbox

        return sandbox.main(args)
    if args.command == "simulate":
        from adapter import simulate

        return simulate.main(args)
    if args.command == "deadletters":
        from adapter import deadletters

        return deadletters.main(args)
    if args.command in ("check", "explain"):
        from adapter.mapping import report

        return report.check(args) if args.command == "check" else report.explain(args)
    from adapter import app

    return app.main(args)
