"""The adapter's local API end to end: readings published over MQTT show up in /devices
and in the average query of both the adapter and the sandbox with the same numbers, and
/metrics parses as Prometheus text with counters that move."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter.api import latency_family
from adapter.status import LATENCY_BUCKETS, DeliveryStatus, Latency
from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.peers import events_of, http_json, publish
from tests.processes import AdapterProcess, wait_until

POWERS = [100.0, 250.5, 80.25, 1200.0]


def sensor(power: float) -> str:
    return json.dumps({"Time": "2024-05-01T12:00:00", "ENERGY": {"Power": power, "Voltage": 230}})


@pytest.fixture
def api_adapter(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> Iterator[tuple[AdapterProcess, str]]:
    port = free_port()
    process = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"ADAPTER_HTTP": f"127.0.0.1:{port}"},
    )
    try:
        process.start()
        process.wait_for_log("local API on", 10)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                values[sample.name] = sample.value
    return values


def status_of(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readings_reach_devices_average_and_metrics(
    broker: Broker, sandbox: SandboxProcess, api_adapter: tuple[AdapterProcess, str]
) -> None:
    _, api = api_adapter
    before = metrics(api)
    for power in POWERS:
        publish(broker.port, "tele/plug1/SENSOR", sensor(power))
    wait_until(lambda: len(events_of(sandbox, "tasmota:plug1")) == len(POWERS), 15, "4 events")

    def stored() -> dict[str, Any] | None:
        # The history is written a few milliseconds after the outbox (HistoryWriter).
        devices = http_json(f"{api}/devices")
        plug = next((d for d in devices if d["uri"] == "tasmota:plug1"), None)
        readings = (plug or {}).get("last_readings") or {}
        return plug if readings.get("power") == POWERS[-1] else None

    plug = wait_until(stored, 5, "the last reading in the history")
    assert isinstance(plug, dict)
    assert plug["name"] == "Tasmota plug1" and plug["type"] == "iot#tasmota-plug"
    assert plug["last_readings"]["power"] == POWERS[-1]
    assert plug["attached"] is True and plug["quarantined"] is False
    assert plug["last_seen"].endswith("Z")
    assert http_json(f"{api}/devices/tasmota:plug1")["uri"] == "tasmota:plug1"

    expected = sum(POWERS) / len(POWERS)
    for query in ("", "?granularity=hour&time_window=12h", "?granularity=day"):
        ours = http_json(f"{api}/devices/tasmota:plug1/average{query}")
        theirs = http_json(f"{sandbox.url}/devices/tasmota:plug1/average{query}")
        print(f"average{query or ' (all)'}: adapter {ours} sandbox {theirs}")
        assert ours == theirs
        assert len(ours) == 1 and ours[0]["data_points"] == len(POWERS)
        assert ours[0]["result"] == pytest.approx(expected)
    voltage = http_json(f"{api}/devices/tasmota:plug1/average?measurement=voltage")
    assert voltage[0]["result"] == 230

    assert status_of(f"{api}/devices/tasmota:nope/average")[0] == 404
    code, body = status_of(f"{api}/devices/tasmota:plug1/average?granularity=hourly")
    assert code == 400 and body["parameter"] == "granularity" and "hour" in body["accepted"]

    after = metrics(api)
    moved = {
        name: after[name] - before.get(name, 0.0)
        for name in (
            "sepl_adapter_messages_received_total",
            "sepl_adapter_messages_mapped_total",
            "sepl_adapter_events_acknowledged_total",
        )
    }
    print(f"counters moved by: {moved}")
    assert all(delta >= len(POWERS) for delta in moved.values())
    assert after["sepl_adapter_platform_up"] == 1.0
    assert after["sepl_adapter_event_latency_seconds_count"] >= len(POWERS)

    code, health = status_of(f"{api}/healthz")
    assert code == 200 and health["platform"] == "up" and health["mqtt"] == "up"


def test_overview_and_explain(
    broker: Broker, sandbox: SandboxProcess, api_adapter: tuple[AdapterProcess, str]
) -> None:
    _, api = api_adapter
    for _ in range(3):
        publish(broker.port, "stat/plug3/RESULT", '{"Time": "2024-05-01T12:00:00"}')
    publish(broker.port, "tele/plug2/SENSOR", sensor(5.0))
    wait_until(lambda: events_of(sandbox, "tasmota:plug2"), 15, "the event")

    def unmapped() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = http_json(f"{api}/api/overview")["unmapped_topics"]
        return result

    assert wait_until(
        lambda: unmapped() == [{"topic": "stat/plug3/RESULT", "count": 3}],
        10,
        "the unmapped topic to be counted",
    )
    # Answered events leave the outbox in batches every 10 ms (delivery.ACK_FLUSH).
    overview = wait_until(
        lambda: (o := http_json(f"{api}/api/overview"))["outbox_depth"] == 0 and o,
        5,
        "the answered event to leave the outbox",
    )
    assert isinstance(overview, dict)
    assert overview["platform"]["up"] is True and overview["mqtt"]["up"] is True

    result = http_json(f"{api}/api/explain", {"topic": "tele/x/SENSOR", "payload": sensor(7.0)})
    assert result["outcome"] == "event" and result["device"]["uri"] == "tasmota:x"
    assert result["readings"]["power"] == 7.0
    code, body = status_of_post(f"{api}/api/explain", b"not json")
    assert code == 400 and "topic" in body["error"]


def status_of_post(url: str, data: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_reports_the_platform_down(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    port = free_port()
    process = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=f"ws://127.0.0.1:{free_port()}/",  # nobody listens there
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"ADAPTER_HTTP": f"127.0.0.1:{port}", "ADAPTER_HTTP_TOKEN": "t0ken"},
    )
    try:
        process.start()
        process.wait_for_log("local API on", 10)
        url = f"http://127.0.0.1:{port}/healthz"
        assert status_of(url)[0] == 401  # the token is required
        request = urllib.request.Request(url, headers={"Authorization": "Bearer t0ken"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = json.load(answer)
        assert body["platform"] == "down" and body["mqtt"] == "up"
        assert "t0ken" not in process.log_text()
    finally:
        process.stop()


@pytest.mark.parametrize(
    "observed",
    [
        [],
        [0.0, 0.001, 0.0010001, 0.0025, 0.3, 1.0, 1, 59.99, 60.0, 60.5, 3600.0],
        [0.004] * 7 + [12.0] * 3,
    ],
)
def test_latency_histogram_exposes_what_prometheus_client_would(observed: list[float]) -> None:
    """The adapter counts latencies itself and imports prometheus_client at the first
    scrape only; its family must carry the samples a prometheus_client Histogram would."""
    from prometheus_client import CollectorRegistry, Histogram

    reference = Histogram(
        "sepl_adapter_event_latency_seconds",
        "x",
        buckets=LATENCY_BUCKETS,
        registry=CollectorRegistry(),
    )
    ours = Latency()
    for seconds in observed:
        reference.observe(seconds)
        ours.observe(seconds)

    def samples(family: Any) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value) for s in family.samples if not s.name.endswith("_created")
        ]

    (expected,) = reference.collect()
    status = DeliveryStatus(0, 0, 0, 0, tuple(ours.counts), ours.sum)
    assert samples(latency_family(status)) == samples(expected)
