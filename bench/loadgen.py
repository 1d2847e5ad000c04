"""Load generator: Tasmota SENSOR messages from N devices, at a target rate or flat out.

`python -m bench.loadgen --port P --devices 2000 --count 100000 [--rate 1000] [--qos 1]
[--workers 2]` publishes `count` messages round-robin over the devices'
`tele/<topic>/SENSOR` topics, each the payload shape of a Sonoff POW (Tasmota 13) with two
fields added at the end: `"Seq"` (unique over the run, from `--seq-start`) and `"PubT"` (the
Unix time of the publish call), which the sink uses for duplicates and latency.

Several worker processes (each one paho client, driven by hand without paho's thread) share
the work: worker w publishes the sequence numbers congruent to w, so with a device count
divisible by the workers each device's messages come from one client, in order. It stops
after `--max-seconds` whatever was published, waits for the broker's PUBACKs (QoS 1) or
for the socket writes (QoS 0), and prints one JSON line: published, acknowledged,
seconds, rate, first and last publish time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

TOPIC = "tele/bench{n:05d}/SENSOR"
# A Sonoff POW R2's tele/<topic>/SENSOR (Tasmota 13), plus the benchmark's Seq and PubT.
TEMPLATE = (
    '{"Time":"%s","ENERGY":{"TotalStartTime":"2024-05-01T10:00:00","Total":%.3f,'
    '"Yesterday":%.3f,"Today":%.3f,"Period":%d,"Power":%d,"ApparentPower":%d,'
    '"ReactivePower":%d,"Factor":%.2f,"Voltage":%d,"Current":%.3f},"Seq":%d,"PubT":%.6f}'
)


def sensor_payload(seq: int, device: int, time_text: str) -> bytes:
    power = 40 + (device * 37 + seq) % 2200
    apparent = int(power / 0.94)
    return (
        TEMPLATE
        % (
            time_text,
            100 + device * 0.5 + seq * 1e-4,
            1.234,
            0.5 + seq % 100 * 0.01,
            seq % 5,
            power,
            apparent,
            int((apparent**2 - power**2) ** 0.5),
            0.94,
            228 + seq % 4,
            apparent / 230.0,
            seq,
            time.time(),
        )
    ).encode()


@dataclass(frozen=True)
class Job:
    host: str
    port: int
    topic: str
    devices: int
    count: int
    seq_start: int
    rate: float  # messages/s over all workers; 0 = as fast as possible
    qos: int
    workers: int
    index: int
    max_seconds: float


@dataclass
class Outcome:
    published: int = 0
    acked: int = 0
    first: float = 0.0
    last: float = 0.0
    seconds: float = 0.0
    error: str = ""


def work(job: Job) -> dict[str, Any]:
    outcome = Outcome()
    state = {"connected": False, "acked": 0}

    def on_connect(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        state["connected"] = not reason.is_failure

    def on_publish(
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        state["acked"] += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"loadgen-{os.getpid()}-{job.index}",
        clean_session=True,
    )
    client.max_inflight_messages_set(0)  # unlimited: the broker is the one to push back
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    user = os.environ.get("MQTT_USERNAME")  # a broker with accounts (the NATS fleet)
    if user:
        client.username_pw_set(user, os.environ.get("MQTT_PASSWORD"))
    client.connect(job.host, job.port, keepalive=60)
    deadline = time.monotonic() + 10
    while not state["connected"]:
        client.loop(0.05)
        if time.monotonic() > deadline:
            outcome.error = "no CONNACK within 10 s"
            return asdict(outcome)

    topics = [job.topic.format(n=n) for n in range(job.devices)]
    seqs = range(job.seq_start + job.index, job.seq_start + job.count, job.workers)
    interval = job.workers / job.rate if job.rate > 0 else 0.0
    began = time.monotonic()
    stop_at = began + job.max_seconds
    outcome.first = time.time()
    second = -1
    time_text = ""
    for i, seq in enumerate(seqs):
        now = time.monotonic()
        if interval:
            due = began + i * interval
            while now < due:
                client.loop(min(due - now, 0.05))  # reads PUBACKs while waiting
                now = time.monotonic()
        elif i % 64 == 0:
            client.loop(0)
        if now > stop_at:
            outcome.error = f"stopped after {job.max_seconds:g} s"
            break
        if int(now) != second:
            second = int(now)
            time_text = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
        device = seq % job.devices
        client.publish(topics[device], sensor_payload(seq, device, time_text), qos=job.qos)
        outcome.published += 1
    outcome.last = time.time()
    outcome.seconds = time.monotonic() - began
    # Until the broker acknowledged everything (QoS 1) or paho wrote everything (QoS 0).
    drain_until = time.monotonic() + max(10.0, job.max_seconds / 4)
    while state["acked"] < outcome.published and time.monotonic() < drain_until:
        client.loop(0.05)
    outcome.acked = state["acked"]
    client.disconnect()
    client.loop(0.1)
    return asdict(outcome)


def run(
    *,
    port: int,
    devices: int,
    count: int,
    rate: float = 0.0,
    qos: int = 1,
    workers: int = 2,
    seq_start: int = 0,
    topic: str = TOPIC,
    host: str = "127.0.0.1",
    max_seconds: float = 300.0,
) -> dict[str, Any]:
    workers = max(1, min(workers, count))
    jobs = [
        Job(host, port, topic, devices, count, seq_start, rate, qos, workers, i, max_seconds)
        for i in range(workers)
    ]
    if workers == 1:
        results = [work(jobs[0])]
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(work, jobs))
    published = sum(r["published"] for r in results)
    first = min(r["first"] for r in results)
    last = max(r["last"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return {
        "published": published,
        "acked": sum(r["acked"] for r in results),
        "seconds": round(seconds, 3),
        "rate": round(published / seconds) if seconds > 0 else 0,
        "first": first,
        "last": last,
        "errors": [r["error"] for r in results if r["error"]],
        "workers": workers,
        "qos": qos,
        "target_rate": rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 = flat out")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq-start", type=int, default=0)
    parser.add_argument("--topic", default=TOPIC, help="format string with {n}, the device")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    summary = run(
        host=args.host,
        port=args.port,
        devices=args.devices,
        count=args.count,
        rate=args.rate,
        qos=args.qos,
        workers=args.workers,
        seq_start=args.seq_start,
        topic=args.topic,
        max_seconds=args.max_seconds,
    )
    print(json.dumps(summary), flush=True)
    return 0 if summary["acked"] == summary["published"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
