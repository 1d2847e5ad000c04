"""The MQTT shell: a paho-mqtt 2.x client driven from the anyio event loop through paho's
documented external-loop calls (`loop_read`, `loop_write`, `loop_misc`, `socket`,
`want_write`, `on_socket_register_write`). No network thread: messages are read in
batches and handed to `deliver`, which the reader awaits, so a slow pipeline stops the
reads and the broker holds the messages. QoS 1 messages are acknowledged (paho's manual
`ack`) only when the pipeline says so, in the order they arrived.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, LogLevel, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from adapter.config import Settings
from adapter.sepl.client import (
    ClientCertificateError,
    client_certificate_refusal,
    load_client_certificate,
    tls_alert,
)
from adapter.statefile import write_atomically
from adapter.status import MqttStatus
from adapter.topic import strip_prefix

log = logging.getLogger("adapter.mqtt")

BATCH = 256  # messages read before they are handed on
MISC_INTERVAL = 1.0  # s between paho's keep-alive checks (loop_misc)
KEEPALIVE = 30
RECONNECT_MIN, RECONNECT_MAX = 1.0, 30.0
STOP_GRACE = 2.0  # s for the retained `offline` and DISCONNECT on the way out


class PublishRefused(ValueError):
    """A publish the adapter will not make next to Home Assistant (device-conventions §3.4):
    discovery configs (an empty one deletes the device) and HA's birth topic."""


class Message(NamedTuple):  # one per message: a tuple is the cheapest to make
    topic: str  # "" when the broker sent a topic that is not UTF-8 (never mapped)
    payload: bytes
    qos: int
    retain: bool
    received: datetime
    mid: int = 0


Deliver = Callable[[list[Message]], Awaitable[None]]


class MqttTlsError(ValueError):
    """A TLS setting of the broker link that cannot work; `str(e)` is one line naming the
    setting and its file, fit to show as is."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the broker link, None without MQTT_TLS. MqttTlsError when a
    client certificate is set without MQTT_TLS (it would never be sent, and the user meant
    TLS) or its files cannot be used (not PEM, an encrypted key, a key of another
    certificate)."""
    s = settings
    if not s.mqtt_tls:
        if s.mqtt_cert_file is not None:
            raise MqttTlsError(
                f"MQTT_CERT_FILE={s.mqtt_cert_file} needs MQTT_TLS=true: a client certificate"
                " is sent only over TLS (the broker's TLS port, 8883 by default)"
            )
        return None
    context = ssl.create_default_context(cafile=str(s.mqtt_ca_file) if s.mqtt_ca_file else None)
    if s.mqtt_tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _load_certificate(context, s)
    return context


def _load_certificate(context: ssl.SSLContext, settings: Settings) -> None:
    if settings.mqtt_cert_file is None:
        return
    try:
        load_client_certificate(context, settings.mqtt_cert_file, settings.mqtt_key_file)
    except ClientCertificateError as exc:
        setting = "MQTT_KEY_FILE" if exc.key else "MQTT_CERT_FILE"
        raise MqttTlsError(f"{setting}={exc.path}: {exc.problem}") from None


# How paho words an error of the TLS layer in its log: "... [SSL: <OpenSSL's reason>] ...".
_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


def check_publish_topic(topic: str) -> None:
    if (
        topic == "homeassistant/status"
        or (topic.startswith("homeassistant/") and topic.endswith("/config"))
        or topic.startswith("tasmota/discovery/")
    ):
        raise PublishRefused(
            f"refusing to publish to {topic!r}: it belongs to Home Assistant discovery or status"
        )


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        client_id: str,
        filters: list[str],
        state_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._status_topic = settings.mqtt_status_topic
        # Its own status topic too: a late `offline` (the will of the connection a restart
        # replaced, which NATS may publish after the new `online`) is answered (issue [15]).
        self.filters = sorted({*filters, self._status_topic})
        self._stopping = False
        self._reaffirm = False
        # What the broker's persistent session holds, so that filters a mapping edit (or
        # the last run) dropped are unsubscribed instead of flowing in forever.
        self._subscriptions_file = None if state_dir is None else state_dir / "mqtt-filters.json"
        self._subscribed = self._load_subscribed()
        self._pending: dict[int, list[str]] = {}
        self.connected = False
        self.changed_at = time.monotonic()  # when `connected` last changed
        self.received = 0
        self.undecodable = 0
        self._batch: list[Message] = []
        self._write_wanted = anyio.Event()
        self._loop_thread = threading.get_ident()
        self._tls: ssl.SSLContext | None = None
        self._held = False  # keep-alive held (see `hold`)
        self._awaiting_connack = False  # connected, CONNECT written, no CONNACK yet
        self._read_error = ""  # what paho logged as an error meanwhile
        self._prefix = settings.mqtt_topic_prefix  # a fleet's partition (issue [15])
        self._refused: dict[str, float] = {}  # subscriptions the broker refused: retry delay
        self._retry_at = 0.0
        self._client = self._make_client()

    def status(self) -> MqttStatus:
        return MqttStatus(
            self.connected,
            round(time.monotonic() - self.changed_at, 1),
            self.client_id,
            self.received,
        )

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.mqtt_protocol == "5"
        client = mqtt.Client(
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
        self._tls = tls_context(s)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.will_set(s.mqtt_status_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_register_write = self._on_register_write
        client.on_socket_close = self._on_socket_close
        return client

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.settings.mqtt_tls else "mqtt"
        return f"{scheme}://{self.settings.mqtt_host}:{self.settings.mqtt_port}"

    # --- paho's callbacks (all on the event loop's thread, inside loop_read) -------------

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho queued a packet. The blocking connect runs in a worker thread and queues
        # CONNECT there: that one is written once connect returns.
        if threading.get_ident() == self._loop_thread:
            self._write_wanted.set()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho closes its socket itself (keep-alive timeout, a read error): a reader
        # waiting on it is woken first (ClosedResourceError) instead of waiting forever.
        if threading.get_ident() == self._loop_thread:
            anyio.notify_closing(sock)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        # Set only while a CONNACK is awaited: how a broker that ends the connection right
        # after the TLS handshake (a refused client certificate) gets explained.
        if level == LogLevel.MQTT_LOG_ERR:
            self._read_error = text

    def _connack_wait_over(self, client: mqtt.Client) -> None:
        self._awaiting_connack = False
        client.on_log = None  # paho formats every log line for a callback: none on the hot path

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack_wait_over(client)
        if reason.is_failure:
            log.warning("%s refused the connection: %s; retrying", self.url, reason)
            return
        log.info("connected to %s as %s", self.url, self.client_id)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Command publishes are small and single: Nagle's algorithm held them ~40 ms.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wanted = set(self.filters)
        if flags.session_present:
            # The broker kept the session with its subscriptions: only what changed is
            # subscribed. A SUBSCRIBE makes the broker send the filter's retained messages
            # again, and those the session queued while the adapter was away would then
            # arrive twice (issue [14]).
            added = [f for f in self.filters if f not in self._subscribed]
            self._subscribe(added, self._subscribed - wanted)
            if not added:
                log.info("broker confirmed %d subscriptions (kept with the session)", len(wanted))
        else:
            self._subscribe(self.filters, self._subscribed - wanted)
        client.publish(self.settings.mqtt_status_topic, "online", qos=1, retain=True)
        self._set_connected(True)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        filters = self._pending.pop(mid, [])
        refused = [f for f, rc in zip(filters, reason_codes, strict=False) if rc.is_failure]
        for topic_filter in filters:
            if topic_filter not in refused and self._refused.pop(topic_filter, 0.0):
                log.warning("broker accepted the subscription to %s on a retry", topic_filter)
        # A refusal can be passing (a NATS cluster that just lost a node answers 0x80 until
        # its streams have a leader again): the filter is asked for again, ever later, and
        # is not counted as held by the session meanwhile.
        for topic_filter in refused:
            delay = min(RECONNECT_MAX, 2 * self._refused.get(topic_filter, RECONNECT_MIN / 2))
            self._refused[topic_filter] = delay
            log.error(
                "broker refused the subscription to %s; asking again in %g s", topic_filter, delay
            )
        if refused:
            self._retry_at = time.monotonic() + min(self._refused[f] for f in refused)
            self._subscribed -= set(refused)
            self._save_subscribed()
        log.info("broker confirmed %d subscriptions", len(reason_codes) - len(refused))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self.connected
        self._set_connected(False)
        if self._awaiting_connack:
            self._connack_wait_over(client)
            if reason.is_failure:
                log.warning(
                    "%s closed the connection before answering CONNECT: %s; retrying",
                    self.url,
                    self._early_close(),
                )
            return
        # After a refused CONNACK there was no connection to lose: that was said already.
        if was_connected and reason.value != 0:
            log.warning("lost the connection to %s (%s); reconnecting", self.url, reason)

    def _early_close(self) -> str:
        if not self.settings.mqtt_tls:
            return self._read_error or "connection lost"
        found = _SSL_REASON.search(self._read_error)
        alert = found.group(1) if found and "_ALERT_" in found.group(1) else None
        return client_certificate_refusal(
            alert, self.settings.mqtt_cert_file, peer="the broker", setting="MQTT_CERT_FILE"
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            # Kept in the batch (and acknowledged in its turn), never mapped.
            self.undecodable += 1
            log.warning("dropping a message whose topic is not valid UTF-8")
            topic = ""
        if self._prefix:
            topic = strip_prefix(topic, self._prefix)
        if topic == self._status_topic and msg.payload != b"online" and not self._stopping:
            self._reaffirm = True  # published by the keep-alive task, outside paho's read
        self._batch.append(
            Message(topic, bytes(msg.payload), msg.qos, msg.retain, datetime.now(UTC), msg.mid)
        )

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.changed_at = time.monotonic()

    # --- subscriptions -------------------------------------------------------------------

    def _subscribe(self, add: list[str], remove: set[str]) -> None:
        if remove:
            self._client.unsubscribe(sorted(remove))
            log.info("unsubscribed from %s", ", ".join(sorted(remove)))
        if add:
            result, mid = self._client.subscribe([(f, self.settings.mqtt_qos) for f in add])
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._pending[mid] = list(add)
        self._subscribed = set(self.filters)
        self._save_subscribed()

    def set_filters(self, filters: list[str]) -> None:
        """Change the subscriptions without dropping the connection (mapping reload)."""
        new = sorted({*filters, self._status_topic})
        added = [f for f in new if f not in self._subscribed]
        removed = self._subscribed - set(new)
        self.filters = new
        self._refused = {f: delay for f, delay in self._refused.items() if f in new}
        if self.connected:
            self._subscribe(added, removed)

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

    # --- the loop ------------------------------------------------------------------------

    async def run(self, deliver: Deliver) -> None:
        """Connect, read and hand on messages, reconnect; until cancelled."""
        self._loop_thread = threading.get_ident()
        delay = RECONNECT_MIN
        try:
            while True:
                if await self._connect():
                    started = time.monotonic()
                    await self._serve(deliver)
                    if time.monotonic() - started > RECONNECT_MAX:
                        delay = RECONNECT_MIN
                await anyio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(RECONNECT_MAX, delay * 2)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _connect(self) -> bool:
        s = self.settings
        options: dict[str, Any] = {}
        if s.mqtt_protocol == "5":  # 3.1.1 keeps its session through clean_session=False
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 7 * 24 * 3600
            options = {"clean_start": False, "properties": properties}
        if self._tls is not None:
            try:
                # Read again at each attempt: a renewed certificate is taken at a reconnect.
                _load_certificate(self._tls, s)
            except MqttTlsError as exc:
                log.warning("cannot connect to %s: %s; retrying", self.url, exc)
                return False
        self._read_error = ""
        self._client.on_log = self._on_log
        try:
            # paho's connect resolves, connects and does the TLS handshake, blocking.
            await anyio.to_thread.run_sync(
                lambda: self._client.connect(
                    s.mqtt_host, s.mqtt_port, keepalive=KEEPALIVE, **options
                )
            )
        except (OSError, ValueError) as exc:
            self._connack_wait_over(self._client)
            log.warning("cannot connect to %s: %s; retrying", self.url, self._connect_error(exc))
            return False
        self._awaiting_connack = True
        return True

    def _connect_error(self, error: BaseException) -> str:
        alert = tls_alert(error)
        if alert is None:
            return _connect_error(error)
        return client_certificate_refusal(
            alert, self.settings.mqtt_cert_file, peer="the broker", setting="MQTT_CERT_FILE"
        )

    async def _serve(self, deliver: Deliver) -> None:
        """One connection: reads, writes and keep-alive until the socket goes."""
        self._write_wanted.set()  # CONNECT, queued in the connect thread
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            tg.start_soon(self._keepalive)
            await self._reader(deliver)
            tg.cancel_scope.cancel()
        self._set_connected(False)

    async def _reader(self, deliver: Deliver) -> None:
        client = self._client
        while True:
            sock = client.socket()
            if sock is None:
                return
            if not _buffered(sock):
                try:
                    await anyio.wait_readable(sock)
                except (OSError, anyio.ClosedResourceError):
                    client.loop_read()  # paho notices the closed socket and reports it
                    return
            while len(self._batch) < BATCH:
                before = len(self._batch)
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if len(self._batch) == before and not _buffered(client.socket()):
                    break  # no PUBLISH in that packet (or nothing left): wait again
            if self._batch:
                batch, self._batch = self._batch, []
                await deliver(batch)
            if client.socket() is None:
                return

    async def _writer(self) -> None:
        client = self._client
        while True:
            await self._write_wanted.wait()
            self._write_wanted = anyio.Event()
            while client.want_write():
                sock = client.socket()
                if sock is None:
                    return
                if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
                if client.want_write():  # the socket's buffer is full
                    await anyio.wait_writable(sock)

    def hold(self, held: bool) -> None:
        """While the disk is full the reader waits and nothing is read: paho's keep-alive
        would then time out (its ping's answer unread) and close the socket, and the QoS 0
        messages the broker already sent, waiting in it, would be lost. So it is held;
        a broker that gives up on the silent client closes the connection, and what it
        sent before is still read once the disk has room."""
        self._held = held

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(MISC_INTERVAL)
            if not self._held:
                self._client.loop_misc()
            if self._reaffirm and self.connected and not self._stopping:
                self._reaffirm = False
                log.info("the status topic said offline while connected: publishing online")
                self._client.publish(self._status_topic, "online", qos=1, retain=True)
            if self._refused and self.connected and time.monotonic() >= self._retry_at:
                self._retry_at = time.monotonic() + RECONNECT_MAX  # until the SUBACK says
                self._subscribe([f for f in self.filters if f in self._refused], set())

    async def _stop(self) -> None:
        """The retained `offline` and a DISCONNECT, written within STOP_GRACE."""
        client = self._client
        self._stopping = True
        if self.connected:
            client.publish(self.settings.mqtt_status_topic, "offline", qos=1, retain=True)
        client.disconnect()
        with anyio.move_on_after(STOP_GRACE):
            while client.want_write() and (sock := client.socket()) is not None:
                if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if client.want_write():
                    await anyio.wait_writable(sock)
        with contextlib.suppress(OSError):
            client.loop_read()  # takes the broker's close and lets paho release the socket
        self._set_connected(False)

    # --- for the pipeline and the command handler ----------------------------------------

    def ack(self, messages: Sequence[Message]) -> None:
        """Acknowledge QoS 1 and 2 messages to the broker, in the order given."""
        client = self._client
        for message in messages:
            if message.qos:
                client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: str | bytes, qos: int = 1) -> None:
        """Publish a command. Never retained (device-conventions §3.4 item 2)."""
        check_publish_topic(topic)
        if not self.connected:
            raise ConnectionError(f"not connected to the broker; {topic} not published")
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise ConnectionError(f"not connected to the broker; {topic} not published")
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")


def _buffered(sock: Any) -> bool:
    """An SSL socket may hold decrypted bytes that the kernel no longer reports readable."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _connect_error(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    return str(error) or type(error).__name__
