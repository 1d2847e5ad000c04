"""The device corpus (device_corpus.py: 32 physical devices of the bundled families, from
documented payloads) end to end: published to a real Mosquitto, mapped by the adapter
with the bundled mappings, delivered to the sandbox platform. Each physical device must
appear once in the adapter's `GET /devices`, with every documented reading at its value
and unit, and the on/off state of each channel it has."""

from __future__ import annotations

import math
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.e2e.device_corpus import DEVICES, CorpusDevice
from tests.peers import http_json
from tests.processes import AdapterProcess, wait_until


@pytest.fixture
def api(broker: Broker, sandbox: SandboxProcess, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"ADAPTER_HTTP": f"127.0.0.1:{port}"},
    ).start()
    try:
        adapter.wait_for_log("local API on", 10)
        yield f"http://127.0.0.1:{port}"
    finally:
        adapter.stop()


def publish_corpus(port: int) -> None:
    """Every device's messages in its order, one client, QoS 1, confirmed by the broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="corpus-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for device in DEVICES:
            for message in device.messages:
                info = client.publish(message.topic, message.payload, qos=1, retain=message.retain)
                info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def problems_of(device: CorpusDevice, found: dict[str, Any] | None) -> list[str]:
    """What the adapter's view of the device gets wrong, in words (empty: all right)."""
    if found is None:
        return [f"{device.uri}: not in GET /devices"]
    wrong = []
    readings = found["readings"]
    for name, (value, unit) in device.readings.items():
        got = readings.get(name)
        if got is None:
            wrong.append(f"{device.uri}: reading {name!r} missing")
            continue
        if not math.isclose(got["value"], value, rel_tol=1e-9, abs_tol=1e-9):
            wrong.append(f"{device.uri}: {name} = {got['value']!r}, documented {value!r}")
        if got.get("unit") != unit:
            wrong.append(f"{device.uri}: {name} in {got.get('unit')!r}, documented {unit!r}")
    for channel, on in device.channels.items():
        if found["channels"].get(channel) is not on:
            wrong.append(f"{device.uri}: channel {channel} {found['channels'].get(channel)!r}")
    return wrong


def test_every_corpus_device_once_with_its_readings_units_and_channels(
    broker: Broker, api: str
) -> None:
    assert len(DEVICES) >= 25
    assert len({d.uri for d in DEVICES}) == len(DEVICES)
    publish_corpus(broker.port)

    def complete() -> list[dict[str, Any]] | None:
        devices: list[dict[str, Any]] = http_json(f"{api}/devices")
        by_uri = {d["uri"]: d for d in devices}
        everything_there = all(
            set(c.readings) <= set(by_uri.get(c.uri, {}).get("readings", {})) for c in DEVICES
        )
        return devices if everything_there else None

    try:
        devices = wait_until(complete, 30, "every corpus device with its readings", 0.5)
    except AssertionError:
        devices = http_json(f"{api}/devices")
    assert isinstance(devices, list)
    counts = Counter(d["uri"] for d in devices)
    assert [uri for uri, n in counts.items() if n > 1] == []  # each physical device once
    by_uri = {d["uri"]: d for d in devices}
    corpus_uris = {c.uri for c in DEVICES}
    # No device of a corpus family outside the corpus: nothing split off a physical device.
    assert sorted(set(by_uri) - corpus_uris) == []

    table: dict[str, list[int]] = {}  # family -> devices, readings, right values, right units
    problems = []
    for device in DEVICES:
        found = by_uri.get(device.uri)
        wrong = problems_of(device, found)
        problems += wrong
        row = table.setdefault(device.family, [0, 0, 0, 0])
        row[0] += 1
        row[1] += len(device.readings)
        for name, (value, unit) in device.readings.items():
            got = (found or {}).get("readings", {}).get(name)
            if got is not None and math.isclose(got["value"], value, rel_tol=1e-9, abs_tol=1e-9):
                row[2] += 1
            if got is not None and got.get("unit") == unit:
                row[3] += 1
        single = http_json(f"{api}/devices/{urllib.parse.quote(device.uri, safe='')}")
        assert single["uri"] == device.uri
    print("family    devices  readings  values right  units right")
    for family, (n, readings, values, units) in sorted(table.items()):
        print(f"{family:9} {n:7}  {readings:8}  {values:12}  {units:11}")
    assert problems == [], "\n".join(problems)
