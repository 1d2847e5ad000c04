"""`sepl-adapter query DEVICE`: the average query (D9) as a table, from the local history."""

from __future__ import annotations

import argparse
import sys

from adapter import config
from adapter.history import HistoryStore, QueryError, UnknownDevice, parse_query


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="device uri, e.g. tasmota:kitchen")
    parser.add_argument("--granularity", default=None, help="all (default), hour, day, …")
    parser.add_argument("--window", default=None, help="time window, e.g. 12h, 30m, 90s")
    parser.add_argument("--measurement", default=None, help="a reading other than the primary")
    config.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = config.load_for_command(args)
    if settings is None:
        return 2
    params = {
        key: value
        for key, value in (
            ("granularity", args.granularity),
            ("time_window", args.window),
            ("measurement", args.measurement),
        )
        if value is not None
    }
    path = settings.adapter_state_dir / "history.sqlite3"
    if not path.exists():
        print(f"error: no history at {path}", file=sys.stderr)
        return 1
    history = HistoryStore(path)
    try:
        rows = history.average(args.device, parse_query(params))
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UnknownDevice:
        print(f"error: unknown device {args.device!r}", file=sys.stderr)
        return 1
    finally:
        history.close()
    print(f"{'time_stamp':26} {'result':>18} {'data_points':>12}")
    for row in rows:
        print(f"{row['time_stamp']:26} {row['result']:>18.6g} {row['data_points']:>12}")
    print(f"{len(rows)} rows")
    return 0
