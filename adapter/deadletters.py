"""`sepl-adapter deadletters list|replay|purge`: events the platform refused for good."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from adapter import config
from adapter.outbox import Outbox


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "replay", "purge"))
    parser.add_argument("ids", nargs="*", type=int, help="dead-letter ids (default: all)")
    parser.add_argument("--json", action="store_true", help="list as JSON lines")
    config.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = config.load_for_command(args)
    if settings is None:
        return 2
    path = settings.adapter_state_dir / "outbox.sqlite3"
    if not path.exists():
        print(f"no outbox at {path}: nothing was dead-lettered", file=sys.stderr)
        return 0 if args.action == "list" else 1
    outbox = Outbox(path)
    try:
        ids = args.ids or None
        if args.action == "replay":
            count = outbox.replay(ids)
            print(
                f"{count} dead letters moved back into the outbox; a running adapter "
                "sends them within a second"
            )
        elif args.action == "purge":
            print(f"{outbox.purge(ids)} dead letters removed")
        else:
            rows = outbox.dead_letters(limit=100_000)
            if ids:
                rows = [r for r in rows if r["id"] in set(ids)]
            for row in rows:
                if args.json:
                    print(json.dumps(row, ensure_ascii=False))
                    continue
                failed = datetime.fromtimestamp(row["failed"], UTC).strftime("%Y-%m-%d %H:%M:%S")
                print(
                    f"{row['id']:>6} {failed} {row['device_uri']} {row['service']} "
                    f"{row['reason']} | {row['data'][:60]}"
                )
            if not args.json:
                print(f"{len(rows)} dead letters")
    finally:
        outbox.close()
    return 0
