"""Gateway id and managed devices, persisted atomically in the state directory (D5)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from adapter.sepl.device import Device
from adapter.statefile import write_atomically

log = logging.getLogger(__name__)

DEVICES_VERSION = 1  # format of devices.json


class GatewayState:
    """`gid` and the device set; `directory=None` keeps everything in memory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.gid = ""
        self.gid_saved = True  # False after a write of the gid failed (a full disk)
        self.devices: dict[str, Device] = {}
        if directory is not None:
            self._load(directory)

    def _load(self, directory: Path) -> None:
        gid_file = directory / "gid"
        if gid_file.exists():
            try:
                self.gid = gid_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                # Costs a new gateway id and one full sync, never the start-up (D5).
                log.warning("ignoring unreadable %s: %s", gid_file, exc)
        devices_file = directory / "devices.json"
        if devices_file.exists():
            try:
                stored = json.loads(devices_file.read_text(encoding="utf-8"))
                # Version 0 was a bare list; version 1 wraps it with its version.
                if isinstance(stored, dict) and stored.get("version") == DEVICES_VERSION:
                    rows = stored["devices"]
                elif isinstance(stored, list):
                    rows = stored
                else:
                    raise ValueError("not a device list of a known format version")
                for row in rows:
                    # Types and tags repeat across thousands of devices: one string each.
                    device = Device(
                        row["uri"],
                        row["name"],
                        sys.intern(row["type"]),
                        tuple(
                            (sys.intern(str(k)), sys.intern(str(v))) for k, v in row.get("tags", [])
                        ),
                    )
                    self.devices[device.uri] = device
            except (ValueError, KeyError, TypeError) as exc:
                # A damaged file costs one full sync, never the start-up.
                log.warning("ignoring unreadable %s: %s", devices_file, exc)
                self.devices = {}

    def set_gid(self, gid: str) -> None:
        """Keep the gateway id, and save it (OSError when it cannot be written: it is kept
        in memory, and the next call saves it)."""
        if gid == self.gid and self.gid_saved:
            return
        self.gid = gid
        if self.directory is not None:
            self.gid_saved = False
            write_atomically(self.directory / "gid", gid + "\n")
            self.gid_saved = True

    def set_devices(self, devices: dict[str, Device]) -> None:
        """Replace the device set (in place: a session reads this very dict) and save it."""
        if devices is not self.devices:
            self.devices.clear()
            self.devices.update(devices)
        self.save_devices()

    def save_devices(self) -> None:
        if self.directory is not None:
            rows = [
                {"uri": d.uri, "name": d.name, "type": d.device_type, "tags": list(d.tags)}
                for d in sorted(self.devices.values(), key=lambda d: d.uri)
            ]
            document = {"version": DEVICES_VERSION, "devices": rows}
            write_atomically(self.directory / "devices.json", json.dumps(document, indent=1) + "\n")
