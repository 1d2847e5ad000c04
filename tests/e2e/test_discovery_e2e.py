"""Zero-configuration devices with real processes (issue [8]): retained Tasmota and Home
Assistant discovery configs make the adapter put devices and forward their telemetry with
an empty mappings directory; removal disconnects; a hand-written rule wins; the adapter
never publishes to a discovery topic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.peers import http_json, publish
from tests.processes import REPO, AdapterProcess, wait_until
from tests.unit.test_discovery import (
    ESPHOME_SENSOR,
    ESPHOME_SENSOR_TOPIC,
    PLUG_CONFIG,
    PLUG_SENSORS,
    POW_TELEMETRY,
    Z2M_HUMIDITY,
    Z2M_HUMIDITY_TOPIC,
    Z2M_SENSOR,
    Z2M_SENSOR_TOPIC,
    Z2M_TELEMETRY,
)

PLUG_MAC = "A4CF12B3C4D5"


class AnyTypeSandbox(SandboxProcess):
    """Generated device types are placeholders the repo's mappings do not declare."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--any-device-type"]


@pytest.fixture
def open_sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    sandbox = AnyTypeSandbox(free_port(), tmp_path / "sandbox-state", tmp_path / "sandbox.log")
    try:
        yield sandbox.start()
    finally:
        sandbox.stop()


def announce(port: int) -> None:
    retained = [
        (f"tasmota/discovery/{PLUG_MAC}/config", PLUG_CONFIG),
        (f"tasmota/discovery/{PLUG_MAC}/sensors", PLUG_SENSORS),
        (ESPHOME_SENSOR_TOPIC, ESPHOME_SENSOR),
        (Z2M_SENSOR_TOPIC, Z2M_SENSOR),
        (Z2M_HUMIDITY_TOPIC, Z2M_HUMIDITY),
    ]
    for topic, payload in retained:
        publish(port, topic, json.dumps(payload), retain=True)


def events(sandbox: SandboxProcess) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in http_json(f"{sandbox.url}/events"):
        found.setdefault(event["device_uri"], []).append(event)
    return found


def attached(sandbox: SandboxProcess) -> dict[str, bool]:
    return {d["uri"]: d["attached"] for d in http_json(f"{sandbox.url}/devices")}


def test_discovered_devices_flow_with_no_mappings(
    broker: Broker, open_sandbox: SandboxProcess, tmp_path: Path
) -> None:
    announce(broker.port)
    empty = tmp_path / "mappings"
    empty.mkdir()
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=open_sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"MAPPINGS_DIR": str(empty)},
    ).start()
    try:
        adapter.wait_for_log("discovered device tasmota:pow1", 10)

        def telemetry_arrived() -> dict[str, list[dict[str, Any]]] | None:
            # Published again until it arrives: the generated rules' subscriptions are
            # confirmed by the broker a moment after the discovery messages were read.
            publish(broker.port, "tele/pow1/SENSOR", POW_TELEMETRY.decode())
            publish(broker.port, "livingroom/sensor/living_room_temperature/state", "23.5")
            publish(broker.port, "zigbee2mqtt/living_room", Z2M_TELEMETRY.decode())
            found = events(open_sandbox)
            return found if len(found) >= 3 else None

        found = wait_until(telemetry_arrived, 15, "events of three discovered devices", 0.5)
        assert isinstance(found, dict)
        print("devices with events:", sorted(found))
        assert "tasmota:pow1" in found
        plug = json.loads(found["tasmota:pow1"][0]["parts"]["metadata"])
        assert (plug["readings"]["power"], plug["units"]["power"]) == (2635, "W")
        z2m = next(uri for uri in found if uri.startswith("z2m:"))
        readings = json.loads(found[z2m][0]["parts"]["metadata"])["readings"]
        assert readings["temperature"] == 29.1 and readings["humidity"] == 34.6
        esp = json.loads(found["esphome:livingroom"][0]["parts"]["metadata"])
        assert esp["units"] == {"living_room_temperature": "°C"}
        assert all(attached(open_sandbox)[uri] for uri in found)

        # Removing a discovery config (an empty retained message) disconnects the device.
        publish(broker.port, f"tasmota/discovery/{PLUG_MAC}/config", "", retain=True)
        wait_until(
            lambda: attached(open_sandbox).get("tasmota:pow1") is False,
            10,
            "tasmota:pow1 to be disconnected",
        )
    finally:
        adapter.stop()

    # The adapter never published to a discovery topic (nor retained anything but status).
    client_id = (tmp_path / "adapter-state" / "mqtt-client-id").read_text().strip()
    published = re.findall(
        rf"Received PUBLISH from {re.escape(client_id)} \(d\d, q\d, r\d, m\d+, '([^']*)'",
        broker.log_text(),
    )
    print("topics the adapter published to:", sorted(set(published)))
    assert not [t for t in published if t.startswith(("homeassistant/", "tasmota/discovery/"))]


def test_hand_written_rule_overrides_generated_one(
    broker: Broker, open_sandbox: SandboxProcess, tmp_path: Path
) -> None:
    announce(broker.port)
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=open_sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"MAPPINGS_DIR": str(REPO / "mappings")},
    ).start()
    try:
        adapter.wait_for_log("overrides discovered rule", 10)
        publish(broker.port, "tele/pow1/SENSOR", POW_TELEMETRY.decode())
        found = wait_until(lambda: events(open_sandbox).get("tasmota:pow1"), 15, "the event")
        assert isinstance(found, list)
        readings = json.loads(found[0]["parts"]["metadata"])["readings"]
        assert readings["power"] == 2635  # the hand-written rule's reading name
        assert "energy_power" not in readings
    finally:
        adapter.stop()

    # check and explain show the generated rules and where they came from.
    state = str(tmp_path / "adapter-state")
    check = subprocess.run(
        [sys.executable, "-m", "adapter", "check", str(REPO / "mappings"), "--state-dir", state],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stderr
    assert "rules generated from discovery" in check.stdout
    assert "from homeassistant/sensor/0x00158d00022cb428/" in check.stdout
    assert "overrides discovered rule" in check.stdout
    (tmp_path / "none").mkdir()
    explain = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapter",
            "explain",
            "zigbee2mqtt/living_room",
            Z2M_TELEMETRY.decode(),
            "--mappings-dir",
            str(tmp_path / "none"),
            "--state-dir",
            state,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    print(explain.stdout)
    assert "discovered:" in explain.stdout and "z2m:living_room" in explain.stdout
