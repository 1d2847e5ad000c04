"""End to end with real processes: Mosquitto, the sandbox platform and the adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.broker import Broker
from sepl_dev.stack import SandboxProcess
from tests.peers import POW_SENSOR, TIME_FORMAT, FakeTasmota, events_of, http_json, publish
from tests.processes import REPO, AdapterProcess, wait_until


@pytest.fixture
def adapter(broker: Broker, sandbox: SandboxProcess, tmp_path: Path) -> Iterator[AdapterProcess]:
    process = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
    )
    try:
        yield process.start()
    finally:
        process.stop()


def test_tasmota_sensor_reading_arrives_as_event(
    broker: Broker, sandbox: SandboxProcess, adapter: AdapterProcess
) -> None:
    publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)

    events = wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "the event")
    assert isinstance(events, list) and len(events) == 1
    event = events[0]
    assert event["service_uri"] == "sepl_get"
    assert event["parts"]["data"] == POW_SENSOR  # the payload exactly as published (D10)
    metadata = json.loads(event["parts"]["metadata"])
    assert metadata["topic"] == "tele/kitchen/SENSOR"
    assert TIME_FORMAT.match(metadata["time"])
    assert metadata["primary"] == "power"
    assert metadata["readings"]["power"] == 2635
    assert metadata["readings"]["voltage"] == 227

    # The device was put (attached) before its event: the sandbox refuses events otherwise.
    devices = http_json(f"{sandbox.url}/devices")
    assert [d["uri"] for d in devices if d["attached"]] == ["tasmota:kitchen"]
    log = sandbox.log_text()
    assert log.index("put tasmota:kitchen") < log.index("event tasmota:kitchen")


def retained_under(port: int, topic_filter: str) -> list[str]:
    """Subscribe afresh and collect what the broker hands out as retained."""
    seen: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-retained-probe")
    client.on_message = lambda c, u, m: seen.append(m.topic) if m.retain else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(topic_filter, qos=1)
        # A PUBLISH/PINGREQ round trip after SUBACK: retained messages come before it.
        client.publish("test/probe-done", "x", qos=1).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()
    return seen


def test_command_round_trip(
    broker: Broker, sandbox: SandboxProcess, adapter: AdapterProcess
) -> None:
    publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
    wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "the device to be attached")
    device = FakeTasmota(broker.port, "kitchen")
    answer = device.command(sandbox, "off")

    assert device.commands == [("cmnd/kitchen/POWER", b"OFF")]
    request, response = answer["request"], answer["response"]
    assert response is not None, answer
    # Every field of the command comes back unchanged except protocol_parts (§3.2).
    assert {k: v for k, v in response.items() if k != "protocol_parts"} == {
        k: v for k, v in request.items() if k != "protocol_parts"
    }
    parts = {p["name"]: p["value"] for p in response["protocol_parts"]}
    assert json.loads(parts["data"]) == {"POWER": "OFF"}
    assert json.loads(parts["metadata"])["topic"] == "cmnd/kitchen/POWER"
    # The command was not retained: a fresh subscriber finds nothing on the command topic.
    assert retained_under(broker.port, "cmnd/#") == []


def test_command_for_unknown_service_is_answered_at_once(
    broker: Broker, sandbox: SandboxProcess, adapter: AdapterProcess
) -> None:
    publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
    wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "the device to be attached")
    answer = http_json(f"{sandbox.url}/commands", {"device": "tasmota:kitchen", "service": "dance"})
    parts = {p["name"]: p["value"] for p in answer["response"]["protocol_parts"]}
    assert "no command rule" in json.loads(parts["data"])["error"]


@pytest.mark.parametrize(
    ("env", "setting", "accepted"),
    [
        ({"MQTT_PORT": "abc"}, "MQTT_PORT", "integer from 1 to 65535"),
        ({"LOGLEVEL": "loud"}, "LOGLEVEL", "debug, info, warning, error, critical"),
        ({"CONNECTOR_PROTOCOL": "soap"}, "CONNECTOR_PROTOCOL", "envelope"),
        ({"RECONNECT_MIN": "soon"}, "RECONNECT_MIN", "duration"),
    ],
)
def test_invalid_setting_stops_start_up_with_one_line(
    tmp_path: Path, env: dict[str, str], setting: str, accepted: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "run"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0] and accepted in lines[0]
    assert "Traceback" not in result.stderr
