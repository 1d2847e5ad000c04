"""`sepl-adapter simulate`: Tasmota-like energy plugs (Sonoff POW) on an MQTT broker.

Each device behaves like Tasmota with its default FullTopic `%prefix%/%topic%/`
(see /work/shared/device-conventions.md §1): its own `DVES_xxxxxx` client id, a retained
`tele/<t>/LWT` Will `Offline` (QoS 1), `Online` on connect, `STATE` and `SENSOR` telemetry
every interval, and answers to `cmnd/<t>/POWER`, `Dimmer` and `State` on `stat/<t>/…`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import re
import secrets
import signal
import socket
import threading
import time
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("sepl_dev.simulate")

DEFAULT_DEVICES = "kitchen,livingroom,garage"
ONLINE, OFFLINE = "Online", "Offline"
_VALID_TOPIC = re.compile(r"^[^/+#\s]+$")
# Typical load of each default device, so the three plugs do not all read the same.
_BASE_POWER = {"kitchen": 2200.0, "livingroom": 140.0, "garage": 600.0}


def _json(value: Any) -> str:
    # Tasmota writes compact JSON without spaces.
    return json.dumps(value, separators=(",", ":"))


def _local_time() -> str:
    # Tasmota's default `Time 1` format: local time without offset (device-conventions §1.3).
    return datetime.now().strftime("%Y-%m-%dT%H:%M:%S")


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}T{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_power(param: str, current: bool) -> bool:
    """New relay state for a `Power` parameter; anything unrecognised is a query (Tasmota)."""
    p = param.strip().lower()
    if p in ("1", "on", "true"):
        return True
    if p in ("0", "off", "false"):
        return False
    if p in ("2", "toggle"):
        return not current
    return current


class Device:
    """One simulated plug: its MQTT client, relay and dimmer state, and energy counters."""

    def __init__(
        self, topic: str, host: str, port: int, *, qos: int, interval: float, rng: random.Random
    ) -> None:
        self.topic = topic
        self.qos = qos
        self.interval = interval
        self.client_id = f"DVES_{secrets.token_hex(3).upper()}"
        self.rng = rng
        self.lock = threading.Lock()
        self.power_on = True
        self.dimmer = 100
        self.base_power = _BASE_POWER.get(topic, rng.uniform(40.0, 1500.0))
        self.started = time.monotonic()
        self.total_start = (datetime.now() - timedelta(days=rng.randint(20, 400))).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
        self.total_kwh = rng.uniform(1.0, 900.0)
        self.yesterday_kwh = rng.uniform(0.2, 8.0)
        self.today_kwh = 0.0
        self.last_energy_at = time.monotonic()
        self.connected = threading.Event()
        self.connect_count = 0
        self.next_telemetry = math.inf
        # Guards `stopping` against `connected`: a connect that races with stop() must not
        # leave a retained Online behind a clean disconnect (which suppresses the Will).
        self.conn_lock = threading.Lock()
        self.stopping = False

        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.will_set(f"tele/{topic}/LWT", OFFLINE, qos=1, retain=True)
        # Short back-off: a restarted development broker should see its devices again quickly.
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.message_callback_add(f"cmnd/{topic}/#", self._on_command)
        self.host, self.port = host, port

    def start(self) -> None:
        # connect_async + loop_start: the network thread keeps retrying until the broker is up.
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish the Offline LWT ourselves (a clean disconnect suppresses the Will)."""
        with self.conn_lock:
            self.stopping = True
            online = self.connected.is_set()
        if online:
            info = self.client.publish(f"tele/{self.topic}/LWT", OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("%s: Offline LWT not confirmed: %s", self.topic, exc)
        self.client.disconnect()
        self.client.loop_stop()

    # --- MQTT callbacks (paho network thread) ---

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("%s: connection refused: %s", self.topic, reason_code)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # A reply is one small packet: Nagle's algorithm held it up to 40 ms, waiting
            # for the PUBACK of the previous one (real ESP firmware sends at once).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = self.topic
        with self.conn_lock:
            if self.stopping:
                return
            # The same order as Tasmota's MqttConnected: LWT Online, the empty POWER "query"
            # (before subscribing, so the device does not hear it), then the subscription.
            client.publish(f"tele/{t}/LWT", ONLINE, qos=1, retain=True)
            self.connected.set()
        log.info("%s: connected to %s:%d as %s", t, self.host, self.port, self.client_id)
        client.publish(f"cmnd/{t}/POWER", b"", qos=0)
        client.subscribe(f"cmnd/{t}/#", qos=1)
        with self.lock:
            self.connect_count += 1
            first = self.connect_count == 1
        if first:
            info = {
                "Info1": {
                    "Module": "Sonoff Pow R2",
                    "Version": "13.1.0(tasmota)",
                    "FallbackTopic": f"cmnd/{self.client_id}_fb/",
                    "GroupTopic": "cmnd/tasmotas/",
                }
            }
            client.publish(f"tele/{t}/INFO1", _json(info), qos=0)
            self._publish_power(client)
        self.publish_telemetry()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        with self.lock:
            self.next_telemetry = math.inf
        if not self.stopping:
            log.warning("%s: disconnected (%s), reconnecting", self.topic, reason_code)

    def _on_command(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        command = msg.topic.rsplit("/", 1)[-1]
        param = bytes(msg.payload).decode("utf-8", errors="replace")
        name = command.upper()
        with self.lock:
            if name in ("POWER", "POWER1"):
                self.power_on = parse_power(param, self.power_on)
                result: dict[str, Any] = {"POWER": self._power_text()}
                also_power = True
            elif name == "DIMMER":
                self._set_dimmer(param)
                result = {"POWER": self._power_text(), "Dimmer": self.dimmer}
                also_power = False
            elif name == "STATE":
                result = self._state_payload()
                also_power = False
            else:
                result = {"Command": "Unknown"}
                also_power = False
        client.publish(f"stat/{self.topic}/RESULT", _json(result))
        if also_power:
            client.publish(f"stat/{self.topic}/POWER", result["POWER"])
        log.info("%s: %s %r -> %s", self.topic, command, param, _json(result))

    # --- state (call with self.lock held) ---

    def _power_text(self) -> str:
        return "ON" if self.power_on else "OFF"

    def _set_dimmer(self, param: str) -> None:
        p = param.strip()
        if p in ("", "?"):
            return
        if p in ("+", "-"):
            value = self.dimmer + (10 if p == "+" else -10)
        else:
            try:
                value = int(float(p))
            except ValueError:
                return  # Tasmota answers with the current state for a bad parameter
        self.dimmer = max(0, min(100, value))
        # As on a Tasmota light: Dimmer 0 switches off, any other value switches on.
        self.power_on = self.dimmer > 0

    def _state_payload(self) -> dict[str, Any]:
        up = time.monotonic() - self.started
        rssi = self.rng.randint(60, 90)
        return {
            "Time": _local_time(),
            "Uptime": _uptime(up),
            "UptimeSec": int(up),
            "Heap": self.rng.randint(22, 28),
            "SleepMode": "Dynamic",
            "Sleep": 50,
            "LoadAvg": self.rng.randint(15, 25),
            "MqttCount": self.connect_count,
            "POWER": self._power_text(),
            "Dimmer": self.dimmer,
            "Wifi": {
                "AP": 1,
                "SSId": "simulated",
                "Channel": 6,
                "Mode": "11n",
                "RSSI": rssi,
                "Signal": rssi // 2 - 100,
                "LinkCount": 1,
                "Downtime": "0T00:00:03",
            },
        }

    def _sensor_payload(self) -> dict[str, Any]:
        now = time.monotonic()
        voltage = round(self.rng.gauss(229.0, 2.0))
        if self.power_on:
            wander = 1.0 + 0.08 * math.sin(now / 60.0) + self.rng.uniform(-0.03, 0.03)
            power = max(1, round(self.base_power * self.dimmer / 100.0 * wander))
            factor = round(self.rng.uniform(0.92, 0.99), 2)
            apparent = round(power / factor)
            reactive = round(math.sqrt(max(apparent**2 - power**2, 0)))
            current = round(apparent / voltage, 3)
        else:
            power, factor, apparent, reactive, current = 0, 0.0, 0, 0, 0.0
        # Energy since the previous report, from the power now (Tasmota's "Period" is in Wh).
        period_wh = power * (now - self.last_energy_at) / 3600.0
        self.last_energy_at = now
        self.total_kwh += period_wh / 1000.0
        self.today_kwh += period_wh / 1000.0
        return {
            "Time": _local_time(),
            "ENERGY": {
                "TotalStartTime": self.total_start,
                "Total": round(self.total_kwh, 3),
                "Yesterday": round(self.yesterday_kwh, 3),
                "Today": round(self.today_kwh, 3),
                "Period": round(period_wh),
                "Power": power,
                "ApparentPower": apparent,
                "ReactivePower": reactive,
                "Factor": factor,
                "Voltage": voltage,
                "Current": current,
            },
        }

    def _publish_power(self, client: mqtt.Client) -> None:
        with self.lock:
            state = self._power_text()
        client.publish(f"stat/{self.topic}/RESULT", _json({"POWER": state}))
        client.publish(f"stat/{self.topic}/POWER", state)

    def publish_telemetry(self) -> None:
        with self.lock:
            state = _json(self._state_payload())
            sensor = _json(self._sensor_payload())
            self.next_telemetry = time.monotonic() + self.interval
        self.client.publish(f"tele/{self.topic}/STATE", state, qos=self.qos)
        self.client.publish(f"tele/{self.topic}/SENSOR", sensor, qos=self.qos)


def _device_topics(spec: str) -> list[str]:
    topics = [t.strip() for t in spec.split(",") if t.strip()]
    if not topics:
        raise ValueError("--devices: give at least one device topic, e.g. kitchen,garage")
    for t in topics:
        if not _VALID_TOPIC.match(t):
            raise ValueError(f"--devices: {t!r} is not a valid topic (no '/', '+', '#', spaces)")
    if len(set(topics)) != len(topics):
        raise ValueError(f"--devices: duplicate topic in {spec!r}")
    return topics


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt-host", default="127.0.0.1", help="broker host (default %(default)s)")
    p.add_argument("--mqtt-port", type=int, default=11883, help="broker port (default %(default)s)")
    p.add_argument(
        "--devices",
        default=DEFAULT_DEVICES,
        help="comma-separated Tasmota topics to simulate (default %(default)s)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="seconds between STATE/SENSOR telemetry, the first at once (default %(default)s)",
    )
    p.add_argument(
        "--qos",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="QoS of telemetry; Tasmota publishes QoS 0 (default %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        topics = _device_topics(args.devices)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.interval <= 0:
        log.error("--interval must be positive, got %s", args.interval)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    rng = random.Random()
    devices = [
        Device(t, args.mqtt_host, args.mqtt_port, qos=args.qos, interval=args.interval, rng=rng)
        for t in topics
    ]
    log.info(
        "simulating %d Tasmota device(s) on %s:%d: %s (telemetry every %g s, QoS %d)",
        len(devices),
        args.mqtt_host,
        args.mqtt_port,
        ", ".join(topics),
        args.interval,
        args.qos,
    )
    for d in devices:
        d.start()
    # Telemetry clock; the first report is sent from on_connect.
    while not stop.is_set():
        now = time.monotonic()
        for d in devices:
            if d.connected.is_set() and now >= d.next_telemetry:
                d.publish_telemetry()
        due = min((d.next_telemetry for d in devices), default=math.inf)
        stop.wait(min(max(due - time.monotonic(), 0.01), 0.5))
    log.info("stopping: publishing Offline LWT")
    for d in devices:
        d.stop()
    return 0


if __name__ == "__main__":
    # Standalone use (`python -m sepl_dev.simulate`) without the rest of the CLI.
    _parser = argparse.ArgumentParser(prog="sepl-adapter simulate")
    configure_parser(_parser)
    raise SystemExit(main(_parser.parse_args()))
