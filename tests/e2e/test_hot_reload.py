"""Hot reload of mapping files with real processes: no reconnect, new devices flow, an
invalid edit keeps the previous mappings, a device no rule makes is disconnected."""

from __future__ import annotations

import shutil
from pathlib import Path

from sepl_dev.broker import Broker
from sepl_dev.stack import SandboxProcess
from tests.peers import POW_SENSOR, events_of, http_json, publish
from tests.processes import REPO, AdapterProcess, wait_until

EXTRA = """\
family: attic
device_type: "iot#tasmota-plug"
rules:
  - id: attic-temperature
    topic: "sensors/{room}/temperature"
    device: {uri: "attic:{room}", name: "Room {room}"}
    service: sepl_get
    payload: number
    readings: {temperature: "@"}
"""


def test_mapping_edit_takes_effect_without_reconnect(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(REPO / "mappings" / "tasmota.yaml", mappings / "tasmota.yaml")
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"MAPPINGS_DIR": str(mappings)},
    ).start()
    try:
        publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
        wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "the first event")

        (mappings / "attic.yaml").write_text(EXTRA)
        adapter.wait_for_log("mappings reloaded", 5)
        publish(broker.port, "sensors/attic/temperature", "21.5")
        events = wait_until(lambda: events_of(sandbox, "attic:attic"), 10, "the new device")
        assert isinstance(events, list) and events[0]["parts"]["data"] == "21.5"

        # An invalid edit: logged with its location, the previous mappings stay active.
        (mappings / "attic.yaml").write_text(EXTRA + "  - id: [broken\n")
        adapter.wait_for_log("mapping change not applied", 5)
        assert "attic.yaml:11:" in adapter.log_text()
        publish(broker.port, "sensors/attic/temperature", "22.5")
        wait_until(lambda: len(events_of(sandbox, "attic:attic")) == 2, 10, "a second event")

        # The rule goes away: its device is disconnected on the platform.
        (mappings / "attic.yaml").unlink()
        adapter.wait_for_log("mappings reloaded", 5, count=2)

        def attic_detached() -> bool:
            devices = http_json(f"{sandbox.url}/devices")
            return any(d["uri"] == "attic:attic" and not d["attached"] for d in devices)

        wait_until(attic_detached, 10, "attic:attic to be disconnected")
        sessions = http_json(f"{sandbox.url}/sessions")
        print(f"sessions opened during the test: {sessions['opened']}")
        assert sessions["opened"] == 1  # one session throughout: no reconnect
    finally:
        adapter.stop()
