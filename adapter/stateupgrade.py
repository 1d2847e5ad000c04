"""The state directory of an adapter before issue [12] made one device per physical
device: the split devices (`shelly:<id>/relay/<n>`, `esphome:<node>/<c>/<o>`) leave the
device set the gateway remembers. They are not disconnected: a device that is not
attached in the current session answers `disconnect` with a 500, which spends the
session's error budget (D8); on the platform they stay, unattached, with their history.
The outbox and the history are migrated by their own schema versions."""

from __future__ import annotations

import logging
from pathlib import Path

from adapter.mapping.renames import DEVICE_LAYOUT, device_of
from adapter.sepl.state import GatewayState
from adapter.statefile import write_atomically

log = logging.getLogger("adapter")

LAYOUT_FILE = "device-layout"


def upgrade_state_dir(state_dir: Path) -> list[str]:
    """Run once per state directory; returns the uris that left the device set."""
    marker = state_dir / LAYOUT_FILE
    try:
        if int(marker.read_text(encoding="utf-8").strip() or 0) >= DEVICE_LAYOUT:
            return []
    except (OSError, ValueError):
        pass  # no marker (a directory of an earlier version, or a new one): look
    gone: list[str] = []
    connector_dir = state_dir / "connector"
    if (connector_dir / "devices.json").exists():
        state = GatewayState(connector_dir)
        gone = sorted(uri for uri in state.devices if device_of(uri) is not None)
        if gone:
            for uri in gone:
                del state.devices[uri]
            state.save_devices()
            merged = sorted({target[0] for uri in gone if (target := device_of(uri))})
            log.warning(
                "upgrade: %d devices of the earlier one-device-per-topic layout are readings of"
                " their physical device now (%s); they leave the gateway without a disconnect"
                " and stay on the platform unattached: delete them there once their history"
                " is not needed (%s)",
                len(gone),
                ", ".join(merged),
                ", ".join(gone),
            )
    write_atomically(marker, f"{DEVICE_LAYOUT}\n")
    return gone
