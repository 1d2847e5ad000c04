"""The MQTT shell: a paho-mqtt 2.x client on its own network thread, handing messages to
the anyio side through a bounded stream (a full stream holds paho's thread, so a slow
platform pushes back on the broker, not on memory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from adapter.inbox import Inbox
from adapter.sepl.state import write_atomically

_PUBACK = struct.Struct("!BBH")  # type 4 << 4, remaining length 2, packet id

log = logging.getLogger("adapter.mqtt")


class PublishRefused(ValueError):
    """A publish the adapter will not make next to Home Assistant (device-conventions §3.4):
    discovery configs (an empty one deletes the device) and HA's birth topic."""


class Message(NamedTuple):  # one per message: a tuple is the cheapest to make
    topic: str
    payload: bytes
    qos: int
    retain: bool
    received: datetime
    mid: int = 0


def stable_client_id(state_dir: Path) -> str:
    """`sepl-adapter-<random>`, created once and kept in the state directory."""
    path = state_dir / "mqtt-client-id"
    if path.exists():
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text
    client_id = f"sepl-adapter-{secrets.token_hex(4)}"
    write_atomically(path, client_id + "\n")
    return client_id


def check_publish_topic(topic: str) -> None:
    if (
        topic == "homeassistant/status"
        or (topic.startswith("homeassistant/") and topic.endswith("/config"))
        or topic.startswith("tasmota/discovery/")
    ):
        raise PublishRefused(
            f"refusing to publish to {topic!r}: it belongs to Home Assistant discovery or status"
        )


_SUBACK_CODES: dict[int, ReasonCode] = {}


def _suback_code(code: int) -> ReasonCode:
    known = _SUBACK_CODES.get(code)
    if known is None:  # a code paho refuses raises here as it would in paho
        known = _SUBACK_CODES[code] = ReasonCode(PacketTypes.SUBACK, identifier=code)
    return known


class _Client(mqtt.Client):
    """paho reads each packet with three system calls (type, length, body) after a
    select(), one packet per turn of its loop: under a flood that costs as much as mapping
    the message. This client reads the socket 64 KiB at a time and hands paho its pieces,
    and turns the loop until they are used up (so no byte waits in the buffer for a
    select() that would not wake)."""

    _READ_SIZE = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_sock: object = None
        self._read_buf = b""
        self._read_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_sock is not self._sock:  # a new connection: nothing carried over
            self._read_sock, self._read_buf, self._read_pos = self._sock, b"", 0
        pos = self._read_pos
        if pos >= len(self._read_buf):
            data = super()._sock_recv(max(bufsize, self._READ_SIZE))
            if len(data) <= bufsize:
                self._read_buf, self._read_pos = b"", 0
                return data
            self._read_buf, pos = data, 0
        end = pos + bufsize
        self._read_pos = end
        return self._read_buf[pos:end]

    # QoS 0 and 1 PUBLISH packets of MQTT 3.1.1 go straight to this callback (topic
    # bytes, payload, qos, retain, packet id), without paho's message objects (a Condition
    # each), callback lookup and logging; QoS 2 and MQTT 5 (properties, topic aliases)
    # take paho's way to on_message.
    take_publish: Callable[[bytes, bytes, int, bool, int], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        take = self.take_publish
        command = self._in_packet["command"]
        qos = (command >> 1) & 3
        if take is not None and qos < 2 and self._protocol != MQTTProtocolVersion.MQTTv5:
            packet = bytes(self._in_packet["packet"])  # paho collects it in a bytearray
            end = 2 + ((packet[0] << 8) | packet[1]) if len(packet) >= 2 else 0
            if 2 < end <= len(packet) - 2 * qos:  # else paho reports it malformed
                retain = bool(command & 1)
                if qos:
                    mid = (packet[end] << 8) | packet[end + 1]
                    take(packet[2:end], packet[end + 2 :], 1, retain, mid)
                else:
                    take(packet[2:end], packet[end:], 0, retain, 0)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_publish()

    def _handle_suback(self) -> None:
        # paho makes a ReasonCode object per filter: 10,000 filters took 60 ms of the GIL
        # in the middle of start-up. MQTT 3.1.1 has four return codes; they are made once.
        packet = bytes(self._in_packet["packet"])
        if (
            self._protocol == MQTTProtocolVersion.MQTTv5
            or self._callback_api_version != CallbackAPIVersion.VERSION2
            or len(packet) < 2
        ):
            super()._handle_suback()
            return
        mid = (packet[0] << 8) | packet[1]
        codes = [_suback_code(code) for code in packet[2:]]
        on_subscribe = cast(mqtt.CallbackOnSubscribe_v2 | None, self.on_subscribe)
        if on_subscribe is None:
            return
        properties = Properties(PacketTypes.SUBACK)  # type: ignore[no-untyped-call]
        with self._in_callback_mutex:
            try:
                on_subscribe(self, self._userdata, mid, codes, properties)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_subscribe: %s", err)
                if not self.suppress_exceptions:
                    raise

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._read_pos < len(self._read_buf)
            and self._sock is self._read_sock
        ):
            rc = super().loop_read(max_packets)
        return rc


class MqttLink:
    def __init__(
        self,
        settings: Any,
        client_id: str,
        filters: list[str],
        buffer: int = 1000,
        state_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.filters = sorted(set(filters))
        # What the broker's persistent session holds, so that filters a mapping edit (or
        # the last run) dropped are unsubscribed instead of flowing in forever.
        self._subscriptions_file = None if state_dir is None else state_dir / "mqtt-filters.json"
        self._subscribed = self._load_subscribed()
        self._lock = threading.Lock()
        self._pending: dict[int, list[str]] = {}
        self.connected = threading.Event()
        self.changed_at = time.monotonic()  # when `connected` last changed
        self.received = 0
        self.undecodable = 0
        self.inbox: Inbox[Message] = Inbox(buffer)
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.mqtt_protocol == "5"
        # The buffered reader relies on paho's _sock_recv; a paho without it reads as is.
        make = _Client if hasattr(mqtt.Client, "_sock_recv") else mqtt.Client
        client = make(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            # A persistent session: QoS 1 messages published while we are away are kept.
            clean_session=None if v5 else False,
            # PUBACK only once the message is in the outbox (or deliberately dropped).
            manual_ack=True,
        )
        if s.mqtt_username:
            password = s.mqtt_password.get() if s.mqtt_password else None
            client.username_pw_set(s.mqtt_username, password)
        if s.mqtt_tls:
            context = ssl.create_default_context(
                cafile=str(s.mqtt_ca_file) if s.mqtt_ca_file else None
            )
            if s.mqtt_tls_insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client.tls_set_context(context)
        client.will_set(s.mqtt_status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        if isinstance(client, _Client):
            client.take_publish = self._take_publish
        client.on_subscribe = self._on_subscribe
        return client

    # --- paho thread ---------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("%s refused the connection: %s; retrying", self.url, reason)
            return
        log.info("connected to %s as %s", self.url, self.client_id)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Command publishes are small and single: Nagle's algorithm held them ~40 ms.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._subscribe(client, self.filters, set(self._subscribed) - set(self.filters))
        client.publish(self.settings.mqtt_status_topic, "online", qos=1, retain=True)
        self.changed_at = time.monotonic()
        self.connected.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            filters = self._pending.pop(mid, [])
        refused = [f for f, rc in zip(filters, reason_codes, strict=False) if rc.is_failure]
        for topic_filter in refused:
            log.error("broker refused the subscription to %s", topic_filter)
        log.info("broker confirmed %d subscriptions", len(reason_codes) - len(refused))

    def _subscribe(self, client: mqtt.Client, add: list[str], remove: set[str]) -> None:
        """Called with the lock held."""
        if remove:
            client.unsubscribe(sorted(remove))
            log.info("unsubscribed from %s", ", ".join(sorted(remove)))
        if add:
            result, mid = client.subscribe([(f, self.settings.mqtt_qos) for f in add])
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._pending[mid] = list(add)
        self._subscribed = set(self.filters)
        self._save_subscribed()

    def set_filters(self, filters: list[str]) -> None:
        """Change the subscriptions without dropping the connection (mapping reload)."""
        with self._lock:
            new = sorted(set(filters))
            added = [f for f in new if f not in self._subscribed]
            removed = self._subscribed - set(new)
            self.filters = new
            if self.connected.is_set():
                self._subscribe(self._client, added, removed)

    def _load_subscribed(self) -> set[str]:
        path = self._subscriptions_file
        if path is None or not path.exists():
            return set()
        try:
            return {str(f) for f in json.loads(path.read_text(encoding="utf-8"))}
        except (OSError, ValueError, TypeError):
            return set()

    def _save_subscribed(self) -> None:
        if self._subscriptions_file is not None:
            write_atomically(self._subscriptions_file, json.dumps(sorted(self._subscribed)))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self.connected.is_set()
        if was_connected:
            self.changed_at = time.monotonic()
        self.connected.clear()
        # After a refused CONNACK there was no connection to lose: that was said already.
        if was_connected and reason.value != 0:
            log.warning("lost the connection to %s (%s); reconnecting", self.url, reason)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError` of the connect attempt, so the error
        # is still at hand; without it a TLS failure would leave the log silent.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLCertVerificationError):
            reason = f"certificate not accepted: {error.verify_message}"
        elif isinstance(error, ssl.SSLError):
            reason = f"TLS failed: {error.reason or error}"
        elif error is not None:
            reason = str(error) or type(error).__name__
        else:
            reason = "unknown error"
        log.warning("cannot connect to %s: %s; retrying", self.url, reason)

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.settings.mqtt_tls else "mqtt"
        return f"{scheme}://{self.settings.mqtt_host}:{self.settings.mqtt_port}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic: str | None = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._accept(topic, bytes(msg.payload), msg.qos, msg.retain, msg.mid)

    def _take_publish(self, topic: bytes, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        """_Client's way for QoS 0/1 PUBLISH packets of MQTT 3.1.1."""
        try:
            text: str | None = topic.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        self._accept(text, payload, qos, retain, mid)

    def _accept(self, topic: str | None, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        self.received += 1
        if topic is None:
            self.undecodable += 1
            log.warning("dropping a message whose topic is not valid UTF-8")
            if qos:
                self._client.ack(mid, qos)
            return
        # put() is False when shutting down: the message then stays unacknowledged.
        self.inbox.put(Message(topic, payload, qos, retain, datetime.now(UTC), mid))

    # --- anyio side ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep the network thread running until cancelled."""
        self.inbox.bind()
        s = self.settings
        properties = None
        if s.mqtt_protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 7 * 24 * 3600
        self._client.connect_async(
            s.mqtt_host, s.mqtt_port, keepalive=30, clean_start=False, properties=properties
        )
        self._client.loop_start()
        try:
            await anyio.sleep_forever()
        finally:
            # Stop taking messages before stopping paho's thread: with the forwarder gone,
            # that thread can be blocked handing a message into the full stream, and
            # loop_stop() would wait for it forever (SIGTERM hung until SIGKILL). Closing
            # the receiving end releases it; what was not taken stays unacknowledged, so
            # the broker delivers it again after the restart.
            self.inbox.close()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stop)

    def _stop(self) -> None:
        if self.connected.is_set():
            info = self._client.publish(
                self.settings.mqtt_status_topic, "offline", qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge to the broker (paho's ack is thread-safe)."""
        mids = [m.mid for m in messages if m.qos == 1]
        queue = getattr(self._client, "_packet_queue", None)
        if len(mids) > 1 and queue is not None:
            # One queued packet holding every PUBACK: paho's ack() wakes its thread and
            # writes to the socket once per message, which cost as much as mapping one.
            # A QoS 1 PUBACK is the same four bytes in MQTT 3.1.1 and 5 (no reason code
            # means success), and paho keeps no state for acknowledgements it sends.
            queue(mqtt.PUBACK, b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids), mids[-1], 1)
        else:
            for mid in mids:
                self._client.ack(mid, 1)
        for message in messages:
            if message.qos == 2:
                self._client.ack(message.mid, 2)

    async def publish(self, topic: str, payload: str | bytes, qos: int = 1) -> None:
        """Publish a command. Never retained (device-conventions §3.4 item 2)."""
        check_publish_topic(topic)
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise ConnectionError(f"not connected to the broker; {topic} not published")
