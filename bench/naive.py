"""The naive forwarder of issue [6]: the baseline the adapter is measured against.

A paho subscriber straight to a websocket, as a first script would be written: handshake,
then per message `put` the device the first time it is seen and send one event. No
mapping (the device is `tasmota:<second topic level>`), no outbox, no acknowledgement
tracking: sends are fire-and-forget (a reader thread only drains the answers so the
platform is never blocked), and paho acknowledges a QoS 1 message once the callback
returned, whether or not the platform ever got it.

`python -m bench.naive --mqtt-port P --url ws://127.0.0.1:N/ [--topic tele/+/SENSOR]`
prints `naive ready` once subscribed; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


def request(handler: str, payload: Any) -> str:
    return json.dumps(
        {
            "status": 0,
            "handler": handler,
            "token": str(uuid.uuid4()),
            "content_type": "",
            "payload": payload,
        }
    )


class Naive:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.known: set[str] = set()
        self.answers = 0
        self.subscribed = threading.Event()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        uri = "tasmota:" + msg.topic.split("/")[1]
        if uri not in self.known:
            self.known.add(uri)
            put = {"uri": uri, "name": uri, "iot_type": "iot#tasmota-plug", "tags": []}
            self.ws.send(request("put", put))
        event = {
            "device_uri": uri,
            "service_uri": "sepl_get",
            "value": [
                {"name": "metadata", "value": ""},
                {"name": "data", "value": msg.payload.decode("utf-8", "replace")},
            ],
        }
        self.ws.send(request("event", event))

    def on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.subscribed.set()

    def drain_answers(self) -> None:
        try:
            for _ in self.ws:
                self.answers += 1
        except ConnectionClosed:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive")
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", default="tele/+/SENSOR")
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with connect(args.url, compression=None, max_size=None, proxy=None) as ws:
        ws.send(json.dumps({"user": "", "pw": "", "gid": "", "token": "credentials"}))
        ws.recv(timeout=20)
        naive = Naive(ws)
        threading.Thread(target=naive.drain_answers, daemon=True).start()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}")
        client.on_message = naive.on_message
        client.on_subscribe = naive.on_subscribe
        client.connect("127.0.0.1", args.mqtt_port, keepalive=30)
        client.subscribe(args.topic, qos=args.qos)
        client.loop_start()
        if not naive.subscribed.wait(10):
            print("naive: no SUBACK within 10 s", file=sys.stderr)
            return 1
        print("naive ready", flush=True)
        stop.wait()
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
