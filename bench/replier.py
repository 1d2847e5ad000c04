"""Minimal Tasmota stand-ins that answer commands, for the command round-trip benchmark.

`python -m bench.replier --port P --devices cmd00,cmd01 [--nodelay]` connects one paho
client for all the devices, publishes each device's retained `tele/<t>/LWT Online` and one
`tele/<t>/SENSOR` (so the adapter knows and puts the device), then answers every
`cmnd/<t>/POWER <x>` with `stat/<t>/RESULT {"POWER":"ON"|"OFF"}` as Tasmota does. With
`--nodelay` its socket sets TCP_NODELAY (paho does not), so a reply never waits on Nagle's
algorithm; comparing it with `adapter simulate` (paho defaults) shows what Nagle costs.
Prints `replier ready` once subscribed; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

SENSOR = (
    '{"Time":"2026-11-23T21:00:00","ENERGY":{"TotalStartTime":"2024-05-01T10:00:00",'
    '"Total":1.000,"Yesterday":0.100,"Today":0.010,"Period":0,"Power":42,"ApparentPower":45,'
    '"ReactivePower":16,"Factor":0.94,"Voltage":230,"Current":0.195}}'
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replier")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", required=True, help="comma-separated Tasmota topics")
    parser.add_argument("--nodelay", action="store_true", help="TCP_NODELAY on the socket")
    args = parser.parse_args(argv)
    topics = [t for t in args.devices.split(",") if t]
    stop = threading.Event()
    subscribed = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if args.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        client.subscribe("cmnd/+/POWER", qos=1)

    def on_subscribe(
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for topic in topics:
            client.publish(f"tele/{topic}/LWT", "Online", qos=1, retain=True)
            client.publish(f"tele/{topic}/SENSOR", SENSOR, qos=0)
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic.split("/")[1]
        state = "OFF" if msg.payload.strip().upper() in (b"OFF", b"0") else "ON"
        client.publish(f"stat/{topic}/RESULT", f'{{"POWER":"{state}"}}', qos=0)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-replier-{topics[0]}")
    client.on_socket_open = on_socket_open
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(10):
        print("replier: no SUBACK within 10 s", file=sys.stderr)
        return 1
    print("replier ready", flush=True)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
