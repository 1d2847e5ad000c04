"""The transport shell: a websocket session to the SEPL connector with reconnect,
keep-alive, gateway sync and request correlation. The protocol rules live in the pure
modules beside this one; this file only moves frames and keeps time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import ssl
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from adapter.sepl import envelope, legacy
from adapter.sepl.backoff import Backoff
from adapter.sepl.device import Device, gateway_hash
from adapter.sepl.envelope import Envelope, ProtocolError
from adapter.sepl.lookup import LookupError_, fetch_endpoint, registration_url
from adapter.sepl.messages import Command, event_payload, parse_command, reply_payload
from adapter.sepl.state import GatewayState
from adapter.sepl.wsframes import FrameSplitter

try:  # websockets' C extension, as its own frames use; its pure-Python twin otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

log = logging.getLogger("adapter.sepl")

HANDSHAKE_TIMEOUT = 20.0  # v3/v4 client requirement (Part 2 §2.6 step 7)
SYNC_MIN_TIMEOUT = 35.0  # the platform may retry internally for 30 s (D6, Part 2 §8.10)
COMMIT_DEBOUNCE = 0.3  # one commit for a burst of new devices (D8)
MAX_FRAME = 16 * 1024 * 1024
_HEAD_16 = struct.Struct("!BBH")  # FIN+text, MASK+126, 16-bit length
_HEAD_64 = struct.Struct("!BBQ")  # FIN+text, MASK+127, 64-bit length
NOT_LISTENING = "not listen to this device"


class ConnectorError(Exception):
    """Base of the errors the connector raises to its caller."""


class LinkDown(ConnectorError):
    """The link dropped (or timed out) before the platform answered; try again later."""


class NotListening(LinkDown):
    """The platform does not listen to the device (the device sets diverged): it is put
    again and the event sent again, once (D8)."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(f"platform does not listen to {uri}")
        self.message = message


class EventRejected(ConnectorError):
    """The platform answered an event with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"platform answered {status}: {message}")
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status >= 500


class HandshakeFailed(ConnectorError):
    """The platform did not accept the credentials frame."""


class DeviceQuarantined(ConnectorError):
    """The platform refused to `put` this device (D8); no event is sent for it."""


class OutgoingEvent(Protocol):
    """An event for start_events: any object with these attributes (the adapter passes
    its outbox entries as they are)."""

    @property
    def device(self) -> Device: ...
    @property
    def service(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def metadata(self) -> str: ...


E = TypeVar("E", bound=OutgoingEvent)
# What start_events calls once per event: None for a 200, else the error send_event raises.
EventDone = Callable[[Any, "ConnectorError | None"], None]


class _Tokens:
    """Fresh uuid4 strings (Part 2 §2.3) from entropy read in bulk: one system call per
    256 tokens instead of one per request, and formatted from hex without a UUID object
    (which cost more than the event's frame)."""

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(16 * 256).hex(), 0
        self._at = at + 32
        h = self._hex
        # Version 4 in the 13th digit, variant 10xx in the 17th (RFC 9562 §5.4).
        return (
            f"{h[at : at + 8]}-{h[at + 8 : at + 12]}-4{h[at + 13 : at + 16]}-"
            f"{_VARIANT[h[at + 16]]}{h[at + 17 : at + 20]}-{h[at + 20 : at + 32]}"
        )


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class _Connection(ClientConnection):
    """Writes what one send_context queued in one socket write (websockets writes each
    frame separately), so a burst of events costs one system call; and offers each small
    text frame it reads to `take_text` before the general parser (wsframes.py), which
    gets the frames `take_text` declines and all others."""

    take_text: Callable[[str], bool] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._splitter: FrameSplitter | None = FrameSplitter(MAX_FRAME)
        self._outgoing: list[bytes] = []  # frames built by queue_texts, for send_data
        self._masks = b""
        self._mask_at = 0

    def queue_texts(self, texts: Sequence[str]) -> bool:
        """Client text frames (RFC 6455 §5.2-5.3) built here rather than by the protocol,
        which makes a Frame object and reads the kernel's entropy for every frame's mask;
        written by the next send_data. Call inside send_context. False when an extension
        (permessage-deflate) has to encode them: then nothing was queued."""
        if self.protocol.extensions:
            return False
        out = self._outgoing
        masks, at = self._masks, self._mask_at
        for text in texts:
            if at >= len(masks):
                masks, at = os.urandom(4 * 1024), 0  # unpredictable masks, read in bulk
            mask = masks[at : at + 4]
            at += 4
            payload = text.encode()
            size = len(payload)
            if size < 126:
                head = bytes((0x81, 0x80 | size))
            elif size < 65536:
                head = _HEAD_16.pack(0x81, 0xFE, size)
            else:
                head = _HEAD_64.pack(0x81, 0xFF, size)
            out.append(head + mask + apply_mask(payload, mask))
        self._masks, self._mask_at = masks, at
        return True

    def data_received(self, data: bytes) -> None:
        splitter = self._splitter
        if splitter is None:
            super().data_received(data)
            return
        for piece in splitter.feed(data):
            if isinstance(piece, bytes):
                super().data_received(piece)
                if self.protocol.state is not State.OPEN:
                    # Closing or failed: the general parser takes everything from here.
                    self._splitter = None
                    rest = splitter.rest()
                    if rest:
                        super().data_received(rest)
                    return
                continue
            text, raw = piece
            take = self.take_text
            if take is None or not take(text):
                super().data_received(raw)

    def send_data(self) -> None:
        chunks = self.protocol.data_to_send()
        if self._outgoing:
            chunks, self._outgoing = self._outgoing + chunks, []
        if all(chunks):
            if chunks:
                self.transport.write(b"".join(chunks))
            return
        for data in chunks:  # an empty chunk asks for the end of the stream: as websockets
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()


@dataclass(frozen=True)
class ConnectorConfig:
    url: str = "ws://127.0.0.1:8093/"
    lookup_url: str | None = None
    https: bool = False
    registration_path: str = "discovery"
    user: str = ""
    password: str = field(default="", repr=False)
    protocol: str = "envelope"
    ca_file: Path | None = None
    tls_insecure: bool = False
    request_timeout: float = 10.0
    ping_interval: float = 15.0
    ping_timeout: float = 10.0
    inflight: int = 32
    reconnect_min: float = 1.0
    reconnect_max: float = 120.0
    stable_after: float = 60.0
    state_dir: Path | None = None

    @property
    def sync_timeout(self) -> float:
        return max(SYNC_MIN_TIMEOUT, self.request_timeout)

    @classmethod
    def from_settings(cls, settings: Any, state_dir: Path | None = None) -> ConnectorConfig:
        password = settings.connector_password
        return cls(
            url=settings.connector_url,
            lookup_url=settings.connector_lookup_url,
            https=settings.connector_https,
            registration_path=settings.connector_device_registration_path,
            user=settings.connector_user,
            password=password.get() if password else "",
            protocol=settings.connector_protocol,
            ca_file=settings.connector_ca_file,
            tls_insecure=settings.connector_tls_insecure,
            request_timeout=settings.connector_request_timeout,
            ping_interval=settings.connector_ping_interval,
            ping_timeout=settings.connector_ping_timeout,
            inflight=settings.connector_inflight,
            reconnect_min=settings.reconnect_min,
            reconnect_max=settings.reconnect_max,
            state_dir=state_dir,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectorConfig:
        """The origin document's variables (CONNECTOR_LOOKUP_URL, …) for library users."""
        from adapter import config as settings_module

        settings = settings_module.load(None, environ)
        return cls.from_settings(settings, state_dir=settings.adapter_state_dir / "connector")

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass
class _Waiter:
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Envelope | None = None


class _Session:
    """One open websocket: correlation of answers to requests by token."""

    def __init__(
        self,
        ws: ClientConnection,
        url: str,
        answered: Callable[[Any, EventDone, Envelope | None], None],
    ) -> None:
        self.ws = ws
        self.url = url
        self.waiters: dict[str, _Waiter] = {}
        # Answers handed to a callback instead of a waiting task (start_events): per
        # token the deadline, the event and its done; `answered` gets each with the answer,
        # or None when no answer will come.
        self.callbacks: dict[str, tuple[float, Any, EventDone]] = {}
        self.answered = answered
        self.closed = anyio.Event()

    async def request(self, handler: str, payload: Any, timeout: float, **kw: Any) -> Envelope:
        token = str(uuid.uuid4())
        waiter = _Waiter()
        self.waiters[token] = waiter
        try:
            with anyio.move_on_after(timeout) as scope:
                try:
                    await self.ws.send(envelope.encode_request(handler, token, payload, **kw))
                except ConnectionClosed:
                    raise LinkDown(f"link closed while sending {handler}") from None
                await waiter.done.wait()
            if scope.cancelled_caught:
                raise LinkDown(f"no answer to {handler} within {timeout:g} s")
            if waiter.answer is None:
                raise LinkDown(f"link closed before the answer to {handler}")
            return waiter.answer
        finally:
            self.waiters.pop(token, None)

    def resolve(self, answer: Envelope) -> bool:
        pending = self.callbacks.pop(answer.token, None)
        if pending is not None:
            self.answered(pending[1], pending[2], answer)
            return True
        waiter = self.waiters.get(answer.token)
        if waiter is None:
            return False  # late or unknown: dropped, as the v3/v4 client does
        waiter.answer = answer
        waiter.done.set()
        return True

    async def write_many(self, frames: Sequence[str]) -> None:
        """Frames with their answers awaited elsewhere, in one socket write."""
        ws = self.ws
        try:
            async with ws.send_context():
                if not (isinstance(ws, _Connection) and ws.queue_texts(frames)):
                    for frame in frames:
                        ws.protocol.send_text(frame.encode())
        except ConnectionClosed:
            raise LinkDown("link closed while sending") from None

    async def write(self, frame: str) -> None:
        """A frame with no answer to wait for (the legacy dialect)."""
        try:
            await self.ws.send(frame)
        except ConnectionClosed:
            raise LinkDown("link closed while sending") from None

    def fail_all(self) -> None:
        self.closed.set()
        for waiter in self.waiters.values():
            waiter.done.set()
        callbacks, self.callbacks = self.callbacks, {}
        for _, event, done in callbacks.values():
            self.answered(event, done, None)

    def expire(self, now: float) -> None:
        """Requests of start_events not answered in time: their callbacks get None."""
        late = [token for token, pending in self.callbacks.items() if pending[0] < now]
        for token in late:
            _, event, done = self.callbacks.pop(token)
            self.answered(event, done, None)


@dataclass
class ConnectorStats:
    connects: int = 0
    syncs: int = 0
    puts: int = 0
    commits: int = 0
    events_acked: int = 0
    events_rejected: int = 0
    commands: int = 0
    malformed_frames: int = 0
    unmatched_answers: int = 0


ConnectCallback = Callable[[str], Awaitable[None] | None]


class Connector:
    """Async client of the SEPL connector. Use as `async with Connector(config) as c:`."""

    def __init__(
        self,
        config: ConnectorConfig | None = None,
        *,
        on_connect: ConnectCallback | None = None,
        on_disconnect: ConnectCallback | None = None,
        command_buffer: int = 256,
    ) -> None:
        self.config = config or ConnectorConfig()
        self.state = GatewayState(self.config.state_dir)
        self.stats = ConnectorStats()
        self.quarantined: dict[str, str] = {}
        self.attached: set[str] = set()
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._session: _Session | None = None
        self._ready = anyio.Event()
        self._ready_since: float | None = None
        self.down_since: float | None = time.monotonic()  # None while the link is ready
        # Requests in flight and the window allowed: the configured one, or 1 after an
        # error answer until a 200 arrives (D8). A counter and an event rather than a
        # CapacityLimiter, whose per-task bookkeeping cost more than the request.
        self._in_flight = 0
        self._window = self.config.inflight
        self._slot_waiters: deque[anyio.Event] = deque()  # first come, first served
        self._commit_pending = False
        self._save_pending = False
        self._commit_lock = anyio.Lock()
        self._put_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._commands_in: MemoryObjectSendStream[Command]
        self._commands_out: MemoryObjectReceiveStream[Command]
        self._commands_in, self._commands_out = anyio.create_memory_object_stream[Command](
            command_buffer
        )
        self.backoff = Backoff(
            self.config.reconnect_min, self.config.reconnect_max, self.config.stable_after
        )
        self.last_error = ""
        self._tokens = _Tokens()

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Connector:
        if self.config.protocol not in ("envelope", "legacy"):
            raise ConnectorError(f"unknown dialect {self.config.protocol!r}")
        if self.legacy:
            log.warning(
                "legacy dialect: the platform acknowledges nothing, so an event counts as "
                "delivered once written (at-most-once; use the envelope dialect for "
                "at-least-once)"
            )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run, name="sepl-connector")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        self._flush_save()
        self._commands_in.close()
        result = await self._tg.__aexit__(exc_type, exc, tb)
        self._tg = None
        return result

    @property
    def ready_since(self) -> float | None:
        """monotonic() when the current session became ready, None while not ready."""
        return self._ready_since if self.ready else None

    @property
    def legacy(self) -> bool:
        return self.config.protocol == "legacy"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def gid(self) -> str:
        return self.state.gid

    @property
    def devices(self) -> dict[str, Device]:
        return dict(self.state.devices)

    async def wait_ready(self, timeout: float | None = None) -> None:
        with anyio.fail_after(timeout):
            while not self._ready.is_set():
                await self._ready.wait()

    # --- public API ----------------------------------------------------------------------

    async def register(self, devices: Iterable[Device]) -> None:
        """Manage these devices: persisted, `put` now when connected (else at the next sync)."""
        changed = []
        managed = self.state.devices
        for device in devices:
            device.validate()
            if managed.get(device.uri) != device:
                managed[device.uri] = device
                changed.append(device)
        if not changed:
            return
        self._schedule_save()
        if self.ready:
            for device in changed:
                self.attached.discard(device.uri)
                try:
                    await self._attach(device)
                except (LinkDown, DeviceQuarantined) as exc:
                    log.info("device %s will be synced later: %s", device.uri, exc)

    async def unregister(self, devices: Iterable[Device | str], *, delete: bool = False) -> None:
        """Stop managing devices: `disconnect` (or `delete`) each, then commit."""
        uris = [d if isinstance(d, str) else d.uri for d in devices]
        for uri in uris:
            self.state.devices.pop(uri, None)
            self.quarantined.pop(uri, None)
        self._schedule_save()
        session = self._session
        if session is None or not self.ready:
            return
        if self.legacy:  # Era A never had un-registration (Part 2 §1.4)
            self.attached.difference_update(uris)
            return
        for uri in uris:
            if uri in self.attached:
                self.attached.discard(uri)
                answer = await session.request(
                    "delete" if delete else "disconnect", uri, self.config.sync_timeout
                )
                if answer.status != 200:
                    log.warning(
                        "%s of %s answered %s",
                        "delete" if delete else "disconnect",
                        uri,
                        answer.status,
                    )
        self._schedule_commit()

    async def send_event(
        self, device: Device | str, service: str, data: str, metadata: str | None = None
    ) -> None:
        """Send one event; returns once the platform answered 200.

        Raises LinkDown (retry later), EventRejected or DeviceQuarantined.
        """
        uri = device if isinstance(device, str) else device.uri
        if isinstance(device, Device) and self.state.devices.get(uri) != device:
            await self.register([device])
        if uri not in self.state.devices:
            raise ConnectorError(f"event for device {uri!r} that was never registered")
        metadata = metadata if metadata is not None else ""
        payload = event_payload(uri, service, data, metadata)
        resent = False
        while True:
            session = await self._ready_session()
            if uri in self.quarantined:
                raise DeviceQuarantined(f"device {uri!r} is quarantined: {self.quarantined[uri]}")
            if uri not in self.attached:
                await self._attach(self.state.devices[uri])
            if self.legacy:
                await session.write(legacy.encode_change(uri, service, data, metadata))
                self.stats.events_acked += 1
                return
            answer = await self._limited_request(session, "event", payload)
            failure = self._event_outcome(uri, answer)
            if failure is None:
                return
            if isinstance(failure, NotListening):
                if not resent:  # put it again (done above, it is detached now) and resend
                    resent = True
                    continue
                self.stats.events_rejected += 1
                raise EventRejected(400, failure.message)
            raise failure

    async def start_events(self, events: Sequence[E], done: EventDone) -> list[E]:
        """The fast path of send_event, for attached devices on a ready link with free
        slots: sends the events in one socket write and returns without waiting for the
        answers; `done(event, outcome)` is called exactly once per event sent, with None
        for a 200 or with the error send_event would have raised (LinkDown: not answered,
        send it again). Returns the events it did not send (device not attached or
        changed, window full, link down): those go through send_event.

        A task per event waiting for its answer, and a system call per frame, cost more
        than the rest of the delivery.
        """
        session = self._session
        if (
            session is None
            or self.legacy
            or not self._ready.is_set()
            or session.closed.is_set()
            or self._slot_waiters  # those waiting for a slot go first (arrival order)
        ):
            return list(events)
        rest: list[E] = []
        frames: list[str] = []
        tokens: list[str] = []
        deadline = time.monotonic() + self.config.request_timeout
        managed = self.state.devices
        for event in events:
            device = event.device
            uri = device.uri
            if (
                self._in_flight >= self._window
                or uri not in self.attached
                or uri in self.quarantined
            ):
                rest.append(event)
                continue
            known = managed.get(uri)
            if known is not device:
                if known != device:
                    rest.append(event)
                    continue
                managed[uri] = device  # the same device: the next events compare by identity
            self._in_flight += 1
            token = self._tokens.next()
            session.callbacks[token] = (deadline, event, done)
            frames.append(
                envelope.encode_event_request(token, uri, event.service, event.data, event.metadata)
            )
            tokens.append(token)
        if frames:
            try:
                await session.write_many(frames)
            except LinkDown:
                # Closing fails every callback (fail_all); those it has not reached yet
                # are failed here.
                for token in tokens:
                    pending = session.callbacks.pop(token, None)
                    if pending is not None:
                        self._answered(pending[1], pending[2], None)
        return rest

    def _answered(self, event: OutgoingEvent, done: EventDone, answer: Envelope | None) -> None:
        self._release_slot()
        if answer is None:
            done(event, LinkDown("the event was not answered"))
            return
        # After an error answer only one request may be in flight until a 200 (D8).
        self._set_window(self.config.inflight if answer.status == 200 else 1)
        done(event, self._event_outcome(event.device.uri, answer))

    def _event_outcome(self, uri: str, answer: Envelope) -> ConnectorError | None:
        """An event's answer, for both ways of sending: None for a 200, else the error."""
        if answer.status == 200:
            self.stats.events_acked += 1
            return None
        message = answer.payload if isinstance(answer.payload, str) else repr(answer.payload)
        if answer.status == 400 and NOT_LISTENING in message:
            # The two sides' device sets diverged: send_event puts it again and resends (D8).
            log.warning("platform does not listen to %s; putting it again", uri)
            self.attached.discard(uri)
            return NotListening(uri, message)
        self.stats.events_rejected += 1
        return EventRejected(answer.status, message)

    async def commands(self) -> AsyncIterator[Command]:
        async for command in self._commands_out:
            yield command

    async def respond(
        self, command: Command, data: str | None, metadata: str | None = None
    ) -> None:
        """Answer a command; returns once the platform acknowledged the response."""
        session = await self._ready_session()
        if self.legacy:
            await session.write(legacy.encode_reply(command, data, metadata))
            return
        answer = await self._limited_request(
            session, "response", reply_payload(command, data, metadata), content_type="map"
        )
        if answer.status != 200:
            raise EventRejected(answer.status, str(answer.payload))

    # --- internals -----------------------------------------------------------------------

    async def _ready_session(self) -> _Session:
        while True:
            await self.wait_ready()
            session = self._session
            if session is not None and not session.closed.is_set():
                return session
            await anyio.sleep(0.01)  # the dead session is being torn down

    async def _limited_request(
        self, session: _Session, handler: str, payload: Any, **kw: Any
    ) -> Envelope:
        await self._acquire_slot()
        try:
            answer = await session.request(handler, payload, self.config.request_timeout, **kw)
        finally:
            self._release_slot()
        # After an error answer only one request may be in flight until a 200 arrives, so
        # a burst of failures cannot spend the session's error budget (D8).
        self._set_window(self.config.inflight if answer.status == 200 else 1)
        return answer

    async def _acquire_slot(self) -> None:
        # Slots are handed over in arrival order: waking every waiter to race for a slot
        # let a later event of a device overtake an earlier one after an outage.
        if self._in_flight < self._window and not self._slot_waiters:
            self._in_flight += 1
            return
        granted = anyio.Event()
        self._slot_waiters.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():
                self._release_slot()  # handed over, but we are leaving: pass it on
            else:
                self._slot_waiters.remove(granted)
            raise

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._hand_over()

    def _set_window(self, window: int) -> None:
        self._window = window
        self._hand_over()

    def _hand_over(self) -> None:
        while self._slot_waiters and self._in_flight < self._window:
            self._in_flight += 1
            self._slot_waiters.popleft().set()

    async def _attach(self, device: Device) -> None:
        session = self._session
        if session is None:
            raise LinkDown("not connected")
        async with self._put_lock:
            if device.uri in self.attached:
                return
            if self.legacy:
                await self._register_legacy(session, [device])
                self.attached.add(device.uri)
                return
            answer = await session.request("put", device.put_payload(), self.config.sync_timeout)
            self.stats.puts += 1
            if answer.status == 200:
                self.attached.add(device.uri)
                self.quarantined.pop(device.uri, None)
                self._schedule_commit()
                return
            reason = f"put answered {answer.status}: {answer.payload}"
            if answer.status in (400, 500):
                # 400: a duplicate URI on the platform; 500: e.g. a device type the platform
                # does not know. Either way this device, not the session, is the problem:
                # hold it back until the next sync instead of spending the error budget (D8).
                self.quarantined[device.uri] = reason
                log.warning("device %s quarantined: %s", device.uri, reason)
                raise DeviceQuarantined(reason)
            raise LinkDown(reason)

    async def _register_legacy(self, session: _Session, devices: list[Device]) -> None:
        """POST the Era A registration, then the bare `update` frame (D4)."""
        url = registration_url(session.url, self.config.registration_path, https=self.config.https)
        body = legacy.registration_body(self.config.user, self.config.password, devices)
        import aiohttp  # only the legacy dialect needs an HTTP client: 13 MB when imported

        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(
                    url, json=body, ssl=self._ssl_for(url.startswith("https:")) or True
                ) as answer,
            ):
                status, text = answer.status, await answer.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LinkDown(f"registration at {url} failed: {exc!r}") from None
        self.stats.puts += len(devices)
        if status == 401:
            raise HandshakeFailed(f"registration at {url} refused the credentials")
        if status != 200:
            raise LinkDown(f"registration at {url} answered {status}: {text[:200]}")
        await session.write(legacy.UPDATE_FRAME)

    def _schedule_save(self) -> None:
        # The device set file is written once for a burst of new devices, not once per
        # device (10,000 devices one by one would rewrite it 10,000 times). A crash before
        # the write costs one full sync at the next start, never a wrong hash match: the
        # commit below always follows the save.
        if self._tg is None:
            self.state.set_devices(self.state.devices)
        elif not self._save_pending:
            self._save_pending = True
            self._tg.start_soon(self._debounced_save)

    async def _debounced_save(self) -> None:
        await anyio.sleep(COMMIT_DEBOUNCE / 2)
        self._flush_save()

    def _flush_save(self) -> None:
        if self._save_pending:
            self._save_pending = False
            self.state.set_devices(self.state.devices)

    def _schedule_commit(self) -> None:
        if self._commit_pending or self._tg is None:
            return
        self._commit_pending = True
        self._tg.start_soon(self._debounced_commit)

    async def _debounced_commit(self) -> None:
        await anyio.sleep(COMMIT_DEBOUNCE)
        self._commit_pending = False
        session = self._session
        if session is None:
            return
        async with self._commit_lock:
            try:
                await self._commit(session)
            except LinkDown as exc:
                log.info("commit not done (%s); the next sync will do it", exc)

    def _committable_hash(self) -> str:
        # Commit only what is really attached: a quarantined device then leaves the hashes
        # different, and the next session syncs again instead of trusting a false match.
        return gateway_hash(d for u, d in self.state.devices.items() if u in self.attached)

    async def _commit(self, session: _Session) -> None:
        self._flush_save()  # the device set on disk is never older than a committed hash
        answer = await session.request("commit", self._committable_hash(), self.config.sync_timeout)
        self.stats.commits += 1
        if answer.status != 200:
            raise LinkDown(f"commit answered {answer.status}: {answer.payload}")

    async def _endpoint(self) -> str:
        if self.config.lookup_url:
            return await fetch_endpoint(
                self.config.lookup_url, https=self.config.https, ssl=self._ssl_for(True)
            )
        return self.config.url

    def _ssl_for(self, secure: bool) -> ssl.SSLContext | None:
        return self.config.ssl_context() if secure else None

    async def _run(self) -> None:
        while True:
            try:
                reason = await self._one_session()
            except Exception as exc:
                # A bug must cost one session, never the connector: log it and go on.
                log.exception("connector session failed unexpectedly")
                reason = f"unexpected error: {exc!r}"
            ready_for = None if self._ready_since is None else time.monotonic() - self._ready_since
            self._ready_since = None
            self.backoff.session_ended(ready_for)
            delay = self.backoff.next_delay()
            self.last_error = reason
            log.info("connector: %s; reconnecting in %.1f s", reason, delay)
            await anyio.sleep(delay)

    async def _one_session(self) -> str:
        try:
            url = await self._endpoint()
        except (LookupError_, OSError, TimeoutError) as exc:
            return f"lookup {self.config.lookup_url} failed: {exc}"
        except Exception as exc:  # aiohttp's own errors
            return f"lookup {self.config.lookup_url} failed: {exc!r}"
        try:
            async with connect(
                url,
                ssl=self._ssl_for(url.startswith("wss:")),
                ping_interval=self.config.ping_interval,
                ping_timeout=self.config.ping_timeout,
                open_timeout=HANDSHAKE_TIMEOUT,
                close_timeout=2,
                max_size=MAX_FRAME,
                logger=_redacting_logger(),
                create_connection=_Connection,
            ) as ws:
                return await self._serve(ws, url)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            return f"cannot connect to {url}: {exc}"
        except ConnectionClosed as exc:
            return f"link to {url} closed: {exc}"
        except HandshakeFailed as exc:
            return f"handshake with {url} failed: {exc}"

    async def _serve(self, ws: ClientConnection, url: str) -> str:
        if self.legacy:
            # Era A: credentials without an answer, no gateway id and no hash (§1.3).
            await ws.send(legacy.encode_credentials(self.config.user, self.config.password))
            gid, server_hash = "", ""
        else:
            gid, server_hash = await self._handshake(ws)
        self.stats.connects += 1
        session = _Session(ws, url, self._answered)
        self._session = session
        self.attached = set()
        if isinstance(ws, _Connection) and not self.legacy:
            ws.take_text = functools.partial(self._take_answer, session)
        result = "link closed"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader, session)
                tg.start_soon(self._expire_requests, session)
                result = await self._sync_and_wait(session, server_hash, url, gid)
                tg.cancel_scope.cancel()
        finally:
            self._session = None
            session.fail_all()
            if self._ready.is_set():
                self.down_since = time.monotonic()
                self._ready = anyio.Event()
                await _maybe_await(self._on_disconnect, result)
            self._set_window(self.config.inflight)
        return result

    async def _sync_and_wait(self, session: _Session, server_hash: str, url: str, gid: str) -> str:
        try:
            await self._sync(session, server_hash)
        except (LinkDown, HandshakeFailed) as exc:
            return f"sync failed: {exc}"
        self._ready_since = time.monotonic()
        self.down_since = None
        self._ready.set()
        log.info("connector ready at %s (gateway %s, %d devices)", url, gid, len(self.attached))
        await _maybe_await(self._on_connect, gid)
        await session.closed.wait()
        return f"link to {url} closed"

    async def _handshake(self, ws: ClientConnection) -> tuple[str, str]:
        await ws.send(
            envelope.encode_credentials(self.config.user, self.config.password, self.state.gid)
        )
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            answer = await ws.recv()
        try:
            gid, server_hash = envelope.decode_handshake_answer(answer)
        except ProtocolError as exc:
            raise HandshakeFailed(str(exc)) from None
        if gid != self.state.gid:
            if self.state.gid:
                log.warning("platform handed out a new gateway id %s (was %s)", gid, self.state.gid)
            self.state.set_gid(gid)
        return gid, server_hash

    async def _sync(self, session: _Session, server_hash: str) -> None:
        """Part 2 §2.8 with D5/D8: nothing to do when the hashes match."""
        managed = self.state.devices
        if self.legacy:
            if managed:
                await self._register_legacy(session, list(managed.values()))
            self.attached = set(managed)
            return
        if gateway_hash(managed.values()) == server_hash:
            self.attached = set(managed)
            log.info("gateway hash matches: %d devices restored without sync", len(managed))
            return
        self.stats.syncs += 1
        self._commit_pending = True  # the sync's own commit replaces any debounced one
        try:
            answer = await session.request("clear", None, self.config.sync_timeout)
            if answer.status != 200:
                raise LinkDown(f"clear answered {answer.status}: {answer.payload}")
            for device in list(managed.values()):
                try:
                    await self._attach(device)
                except DeviceQuarantined:
                    continue
            async with self._commit_lock:
                await self._commit(session)
        finally:
            self._commit_pending = False

    async def _expire_requests(self, session: _Session) -> None:
        while True:
            await anyio.sleep(min(1.0, self.config.request_timeout / 4))
            session.expire(time.monotonic())

    async def _reader(self, session: _Session) -> None:
        try:
            async for message in session.ws:
                self._dispatch(session, message)
        except ConnectionClosed:
            pass
        finally:
            session.fail_all()

    def _take_answer(self, session: _Session, text: str) -> bool:
        """Straight from the socket (_Connection): an answer to a request goes to its
        callback or waiter (True); any other frame is left to the reader and _dispatch,
        which counts and logs what is unknown or malformed (False)."""
        try:
            frame = envelope.decode_server_frame(text)
        except ProtocolError:
            return False
        return frame.handler == "response" and session.resolve(frame)

    def _dispatch(self, session: _Session, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.stats.malformed_frames += 1
            log.warning("ignoring a binary frame from the platform (%d bytes)", len(message))
            return
        try:
            if self.legacy:
                self._accept_command(legacy.decode_command(message))
                return
            frame = envelope.decode_server_frame(message)
            if frame.handler == "command":
                command = parse_command(frame.payload)
            elif not session.resolve(frame):
                self.stats.unmatched_answers += 1
                log.debug("dropping an answer with unknown token %r", frame.token)
                return
            else:
                return
        except ProtocolError as exc:
            self.stats.malformed_frames += 1
            log.warning(
                "ignoring a malformed frame from the platform: %s (%d chars)", exc, len(message)
            )
            return
        self._accept_command(command)

    def _accept_command(self, command: Command) -> None:
        self.stats.commands += 1
        try:
            self._commands_in.send_nowait(command)
        except anyio.WouldBlock:
            log.warning(
                "command for %s dropped: %d commands are waiting already",
                command.device_uri,
                self._commands_out.statistics().current_buffer_used,
            )
        except anyio.ClosedResourceError:
            pass


async def _maybe_await(callback: ConnectCallback | None, arg: str) -> None:
    if callback is None:
        return
    result = callback(arg)
    if result is not None:
        await result


class _RedactCredentials(logging.Filter):
    """The websockets debug log prints frames; the first one holds the password (D3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        # websockets shortens long frames to their start and end, so a long user name can
        # push '"pw"' out of the line: the start of a credentials frame is enough.
        if '"pw"' in text or '{"user"' in text:
            record.msg, record.args = "> TEXT [credentials frame redacted]", None
        return True


def _redacting_logger() -> logging.Logger:
    logger = logging.getLogger("adapter.sepl.websocket")
    if not any(isinstance(f, _RedactCredentials) for f in logger.filters):
        logger.addFilter(_RedactCredentials())
    return logger


__all__ = [
    "Connector",
    "ConnectorConfig",
    "ConnectorError",
    "DeviceQuarantined",
    "EventRejected",
    "HandshakeFailed",
    "LinkDown",
]
