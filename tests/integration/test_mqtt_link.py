"""MqttLink against a real Mosquitto: paho driven from the event loop hands on every
message whole and in order, acknowledges only what the pipeline acknowledged, holds back
reading while the pipeline is busy, and starts clean on a new connection."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anyio
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from adapter import config
from adapter.mqtt import Message, MqttLink
from sepl_dev.broker import Broker

WAIT = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def link_for(
    broker: Broker, tmp_path: Path, protocol: str = "3.1.1", client_id: str = "test-link"
) -> MqttLink:
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
    return MqttLink(settings, client_id, ["bench/#"], state_dir=tmp_path / "state")


class Pipeline:
    """Stands in for the adapter's pipeline: keeps what arrives and acknowledges it, unless
    told to hold (then nothing is acknowledged) or to block (then nothing is taken)."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.got: list[Message] = []
        self.batches = 0
        self.acknowledge = True
        self.open = anyio.Event()
        self.open.set()
        self.arrived = anyio.Event()

    async def deliver(self, batch: list[Message]) -> None:
        await self.open.wait()
        self.batches += 1
        # The link reads its own status topic too (to answer a late will); the adapter's
        # pipeline skips it, and so does this one.
        self.got.extend(m for m in batch if m.topic != self.link.settings.mqtt_status_topic)
        if self.acknowledge:
            self.link.ack(batch)
        self.arrived.set()

    async def wait_for(self, count: int) -> list[Message]:
        with anyio.fail_after(WAIT):
            while len(self.got) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.got


async def wait_connected(link: MqttLink) -> None:
    with anyio.fail_after(WAIT):
        while not link.connected:
            await anyio.sleep(0.01)


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


@pytest.mark.anyio
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_every_message_arrives_whole_and_in_order(
    broker: Broker, tmp_path: Path, qos: int, protocol: str
) -> None:
    link = link_for(broker, tmp_path, protocol)
    pipeline = Pipeline(link)
    sent = payloads()
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        await anyio.to_thread.run_sync(publish_all, broker, sent, qos)
        got = await pipeline.wait_for(len(sent))
        tg.cancel_scope.cancel()
    assert [(m.topic, m.payload) for m in got] == sent
    assert {m.qos for m in got} == {min(qos, 1)}  # the adapter subscribes with QoS 1
    assert pipeline.batches < len(sent)  # read and handed on in batches


@pytest.mark.anyio
async def test_a_new_connection_reads_from_a_clean_buffer(broker: Broker, tmp_path: Path) -> None:
    """A broker restart mid-stream: what the persistent session kept arrives after it, with
    nothing of the old connection's bytes mixed in."""
    link = link_for(broker, tmp_path)
    pipeline = Pipeline(link)
    first = [(f"bench/a/{n}", f"first {n}".encode()) for n in range(500)]
    second = [(f"bench/b/{n}", f"second {n}".encode() * 50) for n in range(500)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        await anyio.to_thread.run_sync(publish_all, broker, first, 1)
        got = list(await pipeline.wait_for(len(first)))
        await anyio.to_thread.run_sync(broker.restart)
        await wait_connected(link)
        await anyio.to_thread.run_sync(publish_all, broker, second, 1)
        with anyio.fail_after(WAIT):
            while sum(m.topic.startswith("bench/b/") for m in pipeline.got) < len(second):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    after = pipeline.got[len(first) :]
    assert [(m.topic, m.payload) for m in got] == first
    # PUBACKs the broker had not seen before it stopped: those messages come again
    # (at least once), each whole; the new ones all arrive, in order.
    again = [(m.topic, m.payload) for m in after if m.topic.startswith("bench/a/")]
    assert set(again) <= set(first)
    assert [(m.topic, m.payload) for m in after if m.topic.startswith("bench/b/")] == second


@pytest.mark.anyio
async def test_only_what_the_pipeline_acknowledged_is_gone_from_the_broker(
    broker: Broker, tmp_path: Path
) -> None:
    """Acknowledged messages are not sent again after a reconnect; the others are."""
    sent = [(f"bench/x/{n}", f"{n}".encode()) for n in range(200)]
    link = link_for(broker, tmp_path)
    pipeline = Pipeline(link)
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        await anyio.to_thread.run_sync(publish_all, broker, sent[:100], 1)
        await pipeline.wait_for(100)
        pipeline.acknowledge = False
        await anyio.to_thread.run_sync(publish_all, broker, sent[100:], 1)
        await pipeline.wait_for(200)
        tg.cancel_scope.cancel()
    again = link_for(broker, tmp_path)
    later = Pipeline(again)
    async with anyio.create_task_group() as tg:
        tg.start_soon(again.run, later.deliver)
        # The broker has at most its in-flight window (100) of them out unacknowledged
        # and queued the rest: all come again, none of the acknowledged ones.
        got = await later.wait_for(100)
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    assert [(m.topic, m.payload) for m in got] == sent[100:]


@pytest.mark.anyio
async def test_a_busy_pipeline_holds_back_reading(broker: Broker, tmp_path: Path) -> None:
    """While the pipeline takes nothing, the link reads one batch at most: the broker keeps
    the rest (a slow platform pushes back on the broker, not on memory)."""
    link = link_for(broker, tmp_path)
    pipeline = Pipeline(link)
    pipeline.open = anyio.Event()  # closed
    sent = [(f"bench/y/{n}", b"x" * 100) for n in range(3000)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        await anyio.to_thread.run_sync(publish_all, broker, sent, 1)
        await anyio.sleep(0.5)
        held = link.received
        pipeline.open.set()
        got = await pipeline.wait_for(len(sent))
        tg.cancel_scope.cancel()
    assert held <= 256 + 100  # one batch, and the broker's in-flight window
    assert [(m.topic, m.payload) for m in got] == sent


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_thousands_of_subscriptions_are_confirmed_and_deliver(
    broker: Broker, tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One SUBSCRIBE of 5,000 filters; the SUBACK confirms them all, and a message on the
    last filter arrives."""
    link = link_for(broker, tmp_path, protocol)
    link.filters = [f"site{n}/tele/+/SENSOR" for n in range(5000)]
    pipeline = Pipeline(link)
    caplog.set_level("INFO", logger="adapter.mqtt")
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        with anyio.fail_after(WAIT):
            while "broker confirmed" not in caplog.text:
                await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(publish_all, broker, [("site4999/tele/x/SENSOR", b"1")], 1)
        got = await pipeline.wait_for(1)
        tg.cancel_scope.cancel()
    assert "broker confirmed 5000 subscriptions" in caplog.text
    assert "refused" not in caplog.text
    assert [(m.topic, m.payload) for m in got] == [("site4999/tele/x/SENSOR", b"1")]


def retained_status(broker: Broker) -> list[bytes]:
    seen: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-status")
    client.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe("sepl-adapter/status")
    client.loop_start()
    try:
        for _ in range(100):
            if seen:
                break
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return seen


@pytest.mark.anyio
async def test_a_stop_leaves_a_retained_offline_and_disconnects(
    broker: Broker, tmp_path: Path
) -> None:
    link = link_for(broker, tmp_path)
    pipeline = Pipeline(link)
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        tg.cancel_scope.cancel()
    assert not link.connected
    seen = await anyio.to_thread.run_sync(retained_status, broker)
    assert seen == [b"offline"]


@pytest.mark.anyio
async def test_a_late_offline_on_the_status_topic_is_answered(
    broker: Broker, tmp_path: Path
) -> None:
    """NATS can publish the will of the connection a restart replaced after the new
    connection's `online`: the running link then says `online` again (issue [15])."""
    link = link_for(broker, tmp_path)
    pipeline = Pipeline(link)
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        await anyio.sleep(0.2)  # the SUBACK
        await anyio.to_thread.run_sync(
            lambda: publish_retained(broker, "sepl-adapter/status", b"offline")
        )
        with anyio.fail_after(WAIT):
            while await anyio.to_thread.run_sync(retained_status, broker) != [b"online"]:
                await anyio.sleep(0.2)
        tg.cancel_scope.cancel()


def publish_retained(broker: Broker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-late-will")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(timeout=WAIT)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.anyio
async def test_commands_are_published_and_never_retained(broker: Broker, tmp_path: Path) -> None:
    link = link_for(broker, tmp_path)
    link.filters = ["cmnd/#"]
    pipeline = Pipeline(link)
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run, pipeline.deliver)
        await wait_connected(link)
        with anyio.fail_after(WAIT):
            while not link.status().connected:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # the SUBACK
        await link.publish("cmnd/plug/POWER", "ON", 1)
        got = await pipeline.wait_for(1)
        tg.cancel_scope.cancel()
    assert [(m.topic, m.payload, m.retain) for m in got] == [("cmnd/plug/POWER", b"ON", False)]
