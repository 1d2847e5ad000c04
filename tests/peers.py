"""What the end-to-end tests drive the real processes with: MQTT publishes, the
sandbox's and the local API's HTTP, a device that answers like Tasmota."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.stack import SandboxProcess

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


def events_of(sandbox: SandboxProcess, device: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http_json(f"{sandbox.url}/events?device={device}")
    return result


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

    def command(self, sandbox: SandboxProcess, service: str) -> Any:
        """The platform's command to this plug (`tasmota:<topic>`) and its answer; the
        plug is closed afterwards."""
        try:
            return http_json(
                f"{sandbox.url}/commands", {"device": f"tasmota:{self.topic}", "service": service}
            )
        finally:
            self.close()
