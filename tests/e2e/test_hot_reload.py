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


def start_adapter(
    broker: Broker, sandbox: SandboxProcess, mappings: Path, tmp_path: Path
) -> AdapterProcess:
    return AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"MAPPINGS_DIR": str(mappings)},
    ).start()


def test_mapping_edit_takes_effect_without_reconnect(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(REPO / "mappings" / "tasmota.yaml", mappings / "tasmota.yaml")
    adapter = start_adapter(broker, sandbox, mappings, tmp_path)
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


NEW_TYPE = """\
family: cellar
device_type: "iot#cellar-sensor"
rules:
  - id: cellar-humidity
    topic: "cellar/{room}/humidity"
    device: {uri: "cellar:{room}", name: "Cellar {room}"}
    service: humidity
    payload: number
    readings: {humidity: "@"}
"""


class FollowingSandbox(SandboxProcess):
    """The sandbox on the same mapping directory as the adapter, as `make run` has it."""

    def __init__(self, mappings: Path, tmp_path: Path) -> None:
        from sepl_dev.broker import free_port

        super().__init__(free_port(), tmp_path / "sandbox-state", tmp_path / "sandbox.log")
        self.mappings = mappings

    def argv(self) -> list[str]:
        return [*super().argv(), "--mappings-dir", str(self.mappings)]


def test_a_new_device_type_in_an_edited_mapping_is_accepted_by_a_running_sandbox(
    broker: Broker, tmp_path: Path
) -> None:
    """Issue [13] 4: the sandbox's registry follows the mapping files, so a hot-reloaded
    rule with a device type and service no file named before is put and its events taken
    (500 unknown device type before), without restarting either process."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(REPO / "mappings" / "tasmota.yaml", mappings / "tasmota.yaml")
    sandbox = FollowingSandbox(mappings, tmp_path).start()
    adapter = start_adapter(broker, sandbox, mappings, tmp_path)
    try:
        assert "iot#cellar-sensor" not in http_json(f"{sandbox.url}/device-types")
        (mappings / "cellar.yaml").write_text(NEW_TYPE)
        adapter.wait_for_log("mappings reloaded", 5)
        wait_until(
            lambda: (
                http_json(f"{sandbox.url}/device-types").get("iot#cellar-sensor") == ["humidity"]
            ),
            5,
            "the sandbox to take the new type",
        )
        publish(broker.port, "cellar/wine/humidity", "71.5")
        events = wait_until(lambda: events_of(sandbox, "cellar:wine"), 10, "the new device")
        assert isinstance(events, list) and events[0]["parts"]["data"] == "71.5"
        assert "unknown device type" not in sandbox.log_text()
        assert "device types reloaded" in sandbox.log_text()
        # A removed file leaves the type on the platform, as a real one keeps its types.
        (mappings / "cellar.yaml").unlink()
        adapter.wait_for_log("mappings reloaded", 5, count=2)
        assert "iot#cellar-sensor" in http_json(f"{sandbox.url}/device-types")
    finally:
        adapter.stop()
        sandbox.stop()
