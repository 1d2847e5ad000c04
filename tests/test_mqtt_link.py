"""MqttLink against a real Mosquitto: the buffered reader and the PUBLISH fast path
(mqtt._Client) hand on every message whole and in order, whatever the sizes and however
the reads cut the packets, and start clean on a new connection."""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from adapter import config
from adapter.mqtt import Message, MqttLink, _Client
from sepl_dev.broker import Broker

WAIT = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def link_for(broker: Broker, tmp_path: Path, protocol: str = "3.1.1") -> MqttLink:
    settings = config.load(
        None,
        {
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(broker.port),
            "MQTT_PROTOCOL": protocol,
            "ADAPTER_STATE_DIR": str(tmp_path / "state"),
        },
    )
    (tmp_path / "state").mkdir(exist_ok=True)
    return MqttLink(settings, "test-link", ["bench/#"], state_dir=tmp_path / "state", buffer=64)


def publish_all(broker: Broker, messages: list[tuple[str, bytes]], qos: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=WAIT)
    finally:
        client.disconnect()
        client.loop_stop()


def payloads() -> list[tuple[str, bytes]]:
    """Small SENSOR-like messages around a few large ones (two- to four-byte lengths)."""
    sizes = itertools.cycle([40, 300, 1, 127, 128, 16_383, 16_384, 300])
    out = []
    for n in range(3000):
        size = 300_000 if n in (10, 2500) else 70_000 if n == 1500 else next(sizes)
        body = (f"{n:06d}:".encode() * (size // 7 + 1))[:size]
        out.append((f"bench/dev{n % 37}/SENSOR", body))
    return out


async def collect(link: MqttLink, count: int) -> list[Message]:
    got: list[Message] = []
    with anyio.fail_after(WAIT):
        while len(got) < count:
            batch = await link.inbox.get_batch(500)
            link.ack(batch)
            got.extend(batch)
    return got


@pytest.mark.anyio
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])  # 5 goes paho's own way
async def test_every_message_arrives_whole_and_in_order(
    broker: Broker, tmp_path: Path, qos: int, protocol: str
) -> None:
    link = link_for(broker, tmp_path, protocol)
    assert isinstance(link._client, _Client)  # the buffered reader is the one under test
    sent = payloads()
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run)
        with anyio.fail_after(WAIT):
            while not link.connected.is_set():
                await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(publish_all, broker, sent, qos)
        got = await collect(link, len(sent))
        tg.cancel_scope.cancel()
    assert [(m.topic, m.payload) for m in got] == sent
    assert {m.qos for m in got} == {min(qos, 1)}  # the adapter subscribes with QoS 1


@pytest.mark.anyio
async def test_a_new_connection_reads_from_a_clean_buffer(broker: Broker, tmp_path: Path) -> None:
    """A broker restart mid-stream: what the persistent session kept arrives after it, with
    nothing of the old connection's bytes mixed in."""
    link = link_for(broker, tmp_path)
    first = [(f"bench/a/{n}", f"first {n}".encode()) for n in range(500)]
    second = [(f"bench/b/{n}", f"second {n}".encode() * 50) for n in range(500)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run)
        with anyio.fail_after(WAIT):
            while not link.connected.is_set():
                await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(publish_all, broker, first, 1)
        got = await collect(link, len(first))
        await anyio.to_thread.run_sync(broker.restart)
        with anyio.fail_after(WAIT):
            while not link.connected.is_set():
                await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(publish_all, broker, second, 1)
        after: list[Message] = []
        with anyio.fail_after(WAIT):
            while sum(m.topic.startswith("bench/b/") for m in after) < len(second):
                after += await collect(link, 1)
        tg.cancel_scope.cancel()
    assert [(m.topic, m.payload) for m in got] == first
    # PUBACKs the broker had not seen before it stopped: those messages come again
    # (at least once), each whole; the new ones all arrive, in order.
    again = [(m.topic, m.payload) for m in after if m.topic.startswith("bench/a/")]
    assert set(again) <= set(first)
    assert [(m.topic, m.payload) for m in after if m.topic.startswith("bench/b/")] == second


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])  # 5 goes paho's own way
async def test_thousands_of_subscriptions_are_confirmed_and_deliver(
    broker: Broker, tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One SUBSCRIBE of 5,000 filters; the SUBACK (read with shared reason codes for
    3.1.1) confirms them all, and a message on the last filter arrives."""
    link = link_for(broker, tmp_path, protocol)
    link.filters = [f"site{n}/tele/+/SENSOR" for n in range(5000)]
    caplog.set_level("INFO", logger="adapter.mqtt")
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run)
        with anyio.fail_after(WAIT):
            while "broker confirmed" not in caplog.text:
                await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(publish_all, broker, [("site4999/tele/x/SENSOR", b"1")], 1)
        got = await collect(link, 1)
        tg.cancel_scope.cancel()
    assert "broker confirmed 5000 subscriptions" in caplog.text
    assert "refused" not in caplog.text
    assert [(m.topic, m.payload) for m in got] == [("site4999/tele/x/SENSOR", b"1")]


def test_suback_codes_are_paho_s_and_shared() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from adapter.mqtt import _suback_code

    for code in (0, 1, 2, 0x80):
        assert _suback_code(code) == ReasonCode(PacketTypes.SUBACK, identifier=code)
        assert _suback_code(code) is _suback_code(code)
    assert _suback_code(0x80).is_failure and not _suback_code(1).is_failure
