"""End to end with real processes: Mosquitto, the sandbox platform and the adapter."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.broker import Broker
from sepl_dev.stack import SandboxProcess
from tests.processes import REPO, AdapterProcess, wait_until

# shared/device-conventions.md §1.4, Sonoff POW (tele/<topic>/SENSOR)
POW_SENSOR = (
    '{"Time":"2018-02-15T17:37:10","ENERGY":{"TotalStartTime":"2018-11-14T18:39:40",'
    '"Total":6.294,"Yesterday":5.340,"Today":0.954,"Period":217,"Power":2635,'
    '"ApparentPower":2650,"ReactivePower":282,"Factor":0.99,"Voltage":227,"Current":11.661}}'
)
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 20) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


def publish(port: int, topic: str, payload: str, qos: int = 1, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


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


def events_of(sandbox: SandboxProcess, device: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http_json(f"{sandbox.url}/events?device={device}")
    return result


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


class FakeTasmota:
    """Answers POWER commands like Tasmota does (device-conventions §1.2)."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.commands: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"DVES_{topic}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"cmnd/{topic}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.commands.append((msg.topic, bytes(msg.payload)))
        if msg.topic.endswith("/POWER"):
            state = msg.payload.decode().upper()
            client.publish(f"stat/{self.topic}/RESULT", json.dumps({"POWER": state}))
            client.publish(f"stat/{self.topic}/POWER", state)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
    try:
        answer = http_json(
            f"{sandbox.url}/commands", {"device": "tasmota:kitchen", "service": "off"}
        )
    finally:
        device.close()

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
