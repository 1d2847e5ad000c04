"""`sepl-adapter devices list|forget`: the devices the gateway attaches again at each
connect (`<state dir>/connector/devices.json`).

Forgetting is for a fleet whose partitions change (docs/fleet.md): a device that moved to
another instance must not be attached by this one at its next connect. A forgotten device
is put again by whichever instance gets its next message. `forget` takes the state
directory's lock, so it refuses to run beside an adapter using it; `list` only reads.
"""

from __future__ import annotations

import argparse
import sys

from adapter import config, statedir
from adapter.sepl.state import GatewayState


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "forget"))
    parser.add_argument("uris", nargs="*", help="device URIs to forget")
    parser.add_argument("--all", action="store_true", help="forget every device")
    config.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = config.load_for_command(args)
    if settings is None:
        return 2
    state_dir = settings.adapter_state_dir
    directory = state_dir / "connector"
    if args.action == "list":
        devices = GatewayState(directory if directory.is_dir() else None).devices
        for uri, device in sorted(devices.items()):
            print(f"{uri}  {device.device_type}  {device.name}")
        print(f"{len(devices)} devices")
        return 0
    if args.all == bool(args.uris):
        print("error: name the device URIs to forget, or --all (not both)", file=sys.stderr)
        return 2
    if not directory.is_dir():
        print(f"no known devices in {state_dir}: nothing to forget")
        return 0
    with statedir.locked(state_dir):  # StateDirError while an adapter runs: one line, exit 2
        state = GatewayState(directory)
        wanted = set(args.uris)
        unknown = sorted(wanted - set(state.devices))
        kept = {} if args.all else {u: d for u, d in state.devices.items() if u not in wanted}
        forgotten = len(state.devices) - len(kept)
        state.set_devices(kept)
    for uri in unknown:
        print(f"{uri}: not a known device", file=sys.stderr)
    print(
        f"{forgotten} devices forgotten, {len(kept)} kept; a forgotten device is put again"
        " when its next message arrives"
    )
    return 1 if unknown else 0
