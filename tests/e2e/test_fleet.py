"""Several adapter instances on one broker, each owning the devices of its partition
(issue [15]), with real processes: Mosquitto, the sandbox platform and two adapters.

Mosquitto cannot partition topics itself: the tests publish to `part/<k>/…` as a broker's
partition mapping would (the NATS cluster of docs/fleet.md does it for real, see
tests/e2e/test_nats_fleet.py)."""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from adapter.config import Partition
from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.e2e.test_discovery_e2e import PLUG_MAC, AnyTypeSandbox
from tests.peers import POW_SENSOR, FakeTasmota, events_of, http_json, publish
from tests.processes import AdapterProcess, adapter_cli, wait_until
from tests.unit.test_discovery import PLUG_CONFIG, PLUG_SENSORS, POW_TELEMETRY


def instance(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path, name: str, env: dict[str, str]
) -> AdapterProcess:
    return AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / f"state-{name}",
        log_path=tmp_path / f"{name}.log",
        env={"ADAPTER_INSTANCE": name, **env},
    )


@pytest.fixture
def fleet(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> Iterator[tuple[AdapterProcess, AdapterProcess]]:
    first = instance(broker, sandbox, tmp_path, "p0", {"MQTT_TOPIC_PREFIX": "part/0/"})
    second = instance(broker, sandbox, tmp_path, "p1", {"MQTT_TOPIC_PREFIX": "part/1"})
    try:
        yield first.start(), second.start()
    finally:
        first.stop()
        second.stop()


class Retained:
    """What the broker holds retained under a filter, read by a fresh subscriber."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.seen: dict[str, str] = {}
        self._done = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet-retained")
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.subscribe(topic_filter, qos=1)
        client.publish("test/fleet-probe", "x", qos=1).wait_for_publish(timeout=5)
        client.disconnect()
        client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            self.seen[msg.topic] = msg.payload.decode()


def attached_by_gateway(sandbox: SandboxProcess) -> dict[str, list[str]]:
    sessions = http_json(f"{sandbox.url}/sessions")["open"]
    return {s["gateway"]: s["attached"] for s in sessions}


def test_each_instance_forwards_its_partition_and_owns_its_devices(
    broker: Broker, sandbox: SandboxProcess, fleet: tuple[AdapterProcess, AdapterProcess]
) -> None:
    first, second = fleet
    devices = {0: [f"even{n}" for n in range(5)], 1: [f"odd{n}" for n in range(5)]}
    for partition, names in devices.items():
        for name in names:
            publish(broker.port, f"part/{partition}/tele/{name}/SENSOR", POW_SENSOR)
    for name in devices[0] + devices[1]:
        wait_until(functools.partial(events_of, sandbox, f"tasmota:{name}"), 15, name)

    # The URI and the topic in the metadata are the device's own, without the partition.
    (event,) = events_of(sandbox, "tasmota:even0")
    assert json.loads(event["parts"]["metadata"])["topic"] == "tele/even0/SENSOR"
    # Each device attached by exactly one gateway: the one of its partition.
    attached = sorted(attached_by_gateway(sandbox).values())
    assert attached == sorted(sorted(f"tasmota:{n}" for n in names) for names in devices.values())

    # Each instance has its status topic, client id and log lines of its own.
    status = Retained(broker.port, "sepl-adapter/#").seen
    assert status == {"sepl-adapter/p0/status": "online", "sepl-adapter/p1/status": "online"}
    for process, name in ((first, "p0"), (second, "p1")):
        log = process.log_text()
        assert re.search(rf"connected to \S+ as sepl-adapter-{name}-[0-9a-f]{{8}}\n", log)
        assert f"INFO [{name}] adapter" in log
        assert f"device topics under part/{name[1]}/, subscribed to" in log

    # A command goes to the owner, is published unprefixed, and its reply comes back through
    # the owner's partition.
    plug = FakeTasmota(broker.port, "odd3")
    replies = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet-partitioner")

    def partitioned(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # What a partitioning broker does: the device's reply also under part/1/.
        client.publish(f"part/1/{msg.topic}", msg.payload, qos=1)

    replies.on_message = partitioned
    replies.connect("127.0.0.1", broker.port)
    replies.subscribe("stat/odd3/#", qos=1)
    replies.loop_start()
    try:
        answer = http_json(f"{sandbox.url}/commands", {"device": "tasmota:odd3", "service": "off"})
    finally:
        plug.close()
        replies.disconnect()
        replies.loop_stop()
    assert plug.commands == [("cmnd/odd3/POWER", b"OFF")]
    parts = {p["name"]: p["value"] for p in answer["response"]["protocol_parts"]}
    assert json.loads(parts["data"]) == {"POWER": "OFF"}
    assert "tasmota:odd3" not in first.log_text()


def test_a_shared_group_splits_the_messages_between_the_instances(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Mosquitto deals `$share` messages round-robin: every message reaches one instance,
    never both (which is why the README keeps it to brokers that hash by client id)."""
    group = {"MQTT_SHARED_GROUP": "sepl"}
    first = instance(broker, sandbox, tmp_path, "s0", group).start()
    second = instance(broker, sandbox, tmp_path, "s1", group).start()
    try:
        for n in range(20):
            publish(broker.port, f"tele/shared{n}/SENSOR", POW_SENSOR)
        for n in range(20):
            wait_until(functools.partial(events_of, sandbox, f"tasmota:shared{n}"), 15, f"{n}")
        attached = attached_by_gateway(sandbox)
    finally:
        first.stop()
        second.stop()
    assert all(len(events_of(sandbox, f"tasmota:shared{n}")) == 1 for n in range(20))
    owned = [set(uris) for uris in attached.values()]
    assert len(owned) == 2 and all(owned) and not owned[0] & owned[1]
    assert "in shared group sepl, subscribed to" in first.log_text()


def test_a_partition_by_device_needs_no_partitioning_broker(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """ADAPTER_PARTITION k/N: every instance reads every message and forwards the devices
    whose URI hashes to its k, in order, each attached by one gateway; a command goes to
    the owner and its reply (read by both) is the owner's."""
    first = instance(broker, sandbox, tmp_path, "h0", {"ADAPTER_PARTITION": "0/2"}).start()
    second = instance(broker, sandbox, tmp_path, "h1", {"ADAPTER_PARTITION": "1/2"}).start()
    names = [f"meter{n}" for n in range(20)]
    try:
        for seq in range(3):
            for name in names:
                payload = json.loads(POW_SENSOR)
                payload["ENERGY"]["Power"] = seq
                publish(broker.port, f"tele/{name}/SENSOR", json.dumps(payload))

        def forwarded(uri: str) -> bool:
            return len(events_of(sandbox, uri)) == 3

        for name in names:
            wait_until(functools.partial(forwarded, f"tasmota:{name}"), 15, name)
        owner = {
            uri: gateway for gateway, uris in attached_by_gateway(sandbox).items() for uri in uris
        }
        by_gateway = {gateway_of(tmp_path / "state-h0"): 0, gateway_of(tmp_path / "state-h1"): 1}
        answer = FakeTasmota(broker.port, "meter7").command(sandbox, "off")
    finally:
        first.stop()
        second.stop()
    owned = {0: 0, 1: 0}
    for name in names:
        uri = f"tasmota:{name}"
        index = by_gateway[owner[uri]]
        assert Partition(index, 2).owns(uri)  # the owner is the partition's instance
        owned[index] += 1
        sent = [json.loads(e["parts"]["metadata"]) for e in events_of(sandbox, uri)]
        powers = [m["readings"]["power"] for m in sent if m["topic"].endswith("/SENSOR")]
        assert powers == [0.0, 1.0, 2.0]  # once each, in order
    assert all(owned.values()), owned  # 20 devices: both instances own some
    parts = {p["name"]: p["value"] for p in answer["response"]["protocol_parts"]}
    assert json.loads(parts["data"]) == {"POWER": "OFF"}
    assert "forwarding the devices of partition 0/2" in first.log_text()


def test_a_discovered_device_is_put_by_the_instance_of_its_partition_only(
    broker: Broker, tmp_path: Path
) -> None:
    """Both instances read the (unprefixed) discovery config; only the one whose
    partition carries the device's messages puts it on the platform."""
    sandbox = AnyTypeSandbox(free_port(), tmp_path / "sandbox-state", tmp_path / "sandbox.log")
    sandbox.start()
    empty = tmp_path / "no-mappings"
    empty.mkdir()
    env = {"MAPPINGS_DIR": str(empty)}
    first = instance(broker, sandbox, tmp_path, "d0", {**env, "MQTT_TOPIC_PREFIX": "part/0/"})
    second = instance(broker, sandbox, tmp_path, "d1", {**env, "MQTT_TOPIC_PREFIX": "part/1/"})
    try:
        publish(
            broker.port,
            f"tasmota/discovery/{PLUG_MAC}/config",
            json.dumps(PLUG_CONFIG),
            retain=True,
        )
        publish(
            broker.port,
            f"tasmota/discovery/{PLUG_MAC}/sensors",
            json.dumps(PLUG_SENSORS),
            retain=True,
        )
        first.start()
        second.start()
        for process in (first, second):
            process.wait_for_log("discovered device tasmota:pow1", 10)

        def arrived() -> list[dict[str, Any]]:
            # Again until it arrives: the generated rule's subscription is confirmed a
            # moment after the discovery config was read.
            publish(broker.port, "part/1/tele/pow1/SENSOR", POW_TELEMETRY.decode())
            return events_of(sandbox, "tasmota:pow1")

        wait_until(arrived, 15, "the discovered device's reading", 0.5)
        by_gateway = attached_by_gateway(sandbox)
    finally:
        first.stop()
        second.stop()
        sandbox.stop()
    assert sorted(by_gateway.values()) == [[], ["tasmota:pow1"]]
    assert sandbox.log_text().count("put tasmota:pow1") == 1  # by the owner, once


def test_known_devices_can_be_listed_and_forgotten_when_no_adapter_runs(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Adding a partition (docs/fleet.md): an instance forgets the devices that moved, so
    it does not attach them again at its next connect; not while it runs."""
    adapter = instance(broker, sandbox, tmp_path, "f0", {}).start()
    state = tmp_path / "state-f0"
    try:
        for name in ("keep", "moved"):
            publish(broker.port, f"tele/{name}/SENSOR", POW_SENSOR)
            wait_until(functools.partial(events_of, sandbox, f"tasmota:{name}"), 15, name)
        listed = adapter_cli(state, "devices", "list")
        assert "tasmota:keep" in listed.stdout and "2 devices" in listed.stdout
        refused = adapter_cli(state, "devices", "forget", "tasmota:moved")
        assert refused.returncode == 2 and "in use by another sepl-adapter" in refused.stderr
    finally:
        assert adapter.stop() == 0
    forgot = adapter_cli(state, "devices", "forget", "tasmota:moved", "tasmota:never")
    assert forgot.returncode == 1 and "tasmota:never: not a known device" in forgot.stderr
    assert "1 devices forgotten, 1 kept" in forgot.stdout
    assert adapter_cli(state, "devices", "forget").returncode == 2  # neither URIs nor --all

    adapter.start()
    try:
        wait_until(lambda: attached_by_gateway(sandbox).get(gateway_of(state)), 15, "the restore")
        assert attached_by_gateway(sandbox)[gateway_of(state)] == ["tasmota:keep"]
    finally:
        adapter.stop()
    assert adapter_cli(state, "devices", "forget", "--all").stdout.startswith(
        "1 devices forgotten, 0 kept"
    )


def gateway_of(state: Path) -> str:
    return (state / "connector" / "gid").read_text(encoding="utf-8").strip()
