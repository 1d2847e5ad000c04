"""The gateway's side of one SEPL connector session, without I/O (protocol Part 2 §1-§3,
decisions D1, D5, D6, D8).

A `GatewaySession` is fed what the websocket received (`receive`) and the time (`tick`),
and told what the caller wants (`attach`, `detach`, `send_event`, `respond`). It answers
with frames to write (`data_to_send`) and events (`events_received`): the handshake is
done, the session is ready, an event or a response was answered, a command arrived, a
device was attached or quarantined, the session failed. Both dialects are covered: the
envelope dialect with tokens, answers and the gateway hash, and the 2017 legacy dialect
without answers, whose device registration is an HTTP request the shell makes when the
session asks for it (`RegistrationNeeded`, then `registered`).

The shell (adapter/sepl/client.py) moves the frames over a websocket, keeps time and
persists the gateway id and the device set; the sandbox platform's side of the same
protocol is adapter/sepl/platform.py.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adapter.sepl import envelope, legacy
from adapter.sepl.device import Device, gateway_hash
from adapter.sepl.envelope import Envelope, ProtocolError
from adapter.sepl.errors import (
    NOT_LISTENING,
    ConnectorError,
    EventRejected,
    LinkDown,
    NotListening,
)
from adapter.sepl.messages import Command, parse_command, reply_payload

HANDSHAKE_TIMEOUT = 20.0  # v3/v4 client requirement (Part 2 §2.6 step 7)
SYNC_MIN_TIMEOUT = 35.0  # the platform may retry internally for 30 s (D6, Part 2 §8.10)
COMMIT_DEBOUNCE = 0.3  # one commit for a burst of new devices (D8)
# The platform closes a session at the 6th error answer in a row (§2.11). Requests that
# may fail (below: risky) are held back once this many errors in a row, counting the risky
# requests still unanswered, could be reached; a commit (always 200, §8.9) then resets the
# platform's count when nothing else is on its way to do it.
BUDGET_GUARD = 3


class Phase(enum.Enum):
    HANDSHAKE = "handshake"  # credentials sent, waiting for the gateway id
    SYNC = "sync"  # clear / put / commit (or the legacy registration) under way
    READY = "ready"  # events and responses may be sent
    CLOSED = "closed"


class Refusal(enum.Enum):
    """Why `send_event` or `respond` queued nothing (the caller takes the slow way)."""

    NOT_READY = "the session is not ready"
    NOT_ATTACHED = "the device is not attached in this session"
    QUARANTINED = "the device is quarantined"
    CHANGED = "the device differs from the one the gateway manages"
    WINDOW_FULL = "the window of requests in flight is full"
    # Wait as for WINDOW_FULL: a 200 (another device's, or the session's reset) frees it.
    BUDGET = "held back: the platform's error budget would run low"


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    gid: str
    hash_matched: bool  # the platform restored the committed devices: no sync


@dataclass(frozen=True, slots=True)
class Ready:
    attached: int


@dataclass(frozen=True, slots=True)
class EventDone:
    """An event's outcome: `error` None for a 200 (or, legacy, once written)."""

    ref: object
    error: ConnectorError | None


@dataclass(frozen=True, slots=True)
class ResponseDone:
    ref: object
    error: ConnectorError | None


@dataclass(frozen=True, slots=True)
class Attached:
    uri: str


@dataclass(frozen=True, slots=True)
class Quarantined:
    """The platform refused to put the device (400: a duplicate URI, 500: e.g. an unknown
    device type): this device, not the session, is the problem (D8)."""

    uri: str
    reason: str


@dataclass(frozen=True, slots=True)
class PutFailed:
    """A put outside the sync that got no usable answer; the device stays unattached."""

    uri: str
    reason: str


@dataclass(frozen=True, slots=True)
class RegistrationNeeded:
    """Legacy dialect: POST these devices to the registration endpoint, then call
    `registered` (D4)."""

    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class Committing:
    """A commit of `hash` is being sent: the device set it covers must be on disk first."""

    hash: str


@dataclass(frozen=True, slots=True)
class CommandReceived:
    command: Command


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame from the platform that breaks the protocol; the session goes on."""

    reason: str
    size: int


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a log line that changes nothing for the caller."""

    text: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The session cannot go on (handshake refused or unanswered, sync failed): close the
    link and reconnect with back-off."""

    reason: str


Event = (
    HandshakeDone
    | Ready
    | EventDone
    | ResponseDone
    | Attached
    | Quarantined
    | PutFailed
    | RegistrationNeeded
    | Committing
    | CommandReceived
    | Malformed
    | Notice
    | Failed
)


@dataclass
class SessionStats:
    """Counters that outlive a session (the shell keeps one for all of them)."""

    connects: int = 0
    syncs: int = 0
    puts: int = 0
    commits: int = 0
    events_acked: int = 0
    events_rejected: int = 0
    commands: int = 0
    malformed_frames: int = 0
    unmatched_answers: int = 0
    budget_resets: int = 0  # commits sent to reset the platform's count of errors in a row


@dataclass(slots=True)
class _Request:
    handler: str
    deadline: float
    ref: object = None
    uri: str = ""
    windowed: bool = False  # counts against the window of requests in flight (events, responses)
    kind: tuple[str, str] = ("", "")  # an event's device type and service
    risky: bool = False  # may well be refused: puts, and events as send_event tells
    reset: bool = False  # a commit sent only to reset the platform's count of errors


class Tokens:
    """Fresh uuid4 strings (Part 2 §2.3), formatted from random bytes read 4 KiB at a time:
    one system call per 256 tokens, and no UUID object per request (those two were a
    sixth of an event's cost in the session)."""

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def __call__(self) -> str:
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


class GatewaySession:
    def __init__(
        self,
        *,
        devices: Mapping[str, Device],
        gid: str = "",
        user: str = "",
        password: str = "",
        dialect: str = "envelope",
        window: int = 32,
        request_timeout: float = 10.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        commit_debounce: float = COMMIT_DEBOUNCE,
        stats: SessionStats | None = None,
        new_token: Callable[[], str] | None = None,
    ) -> None:
        if dialect not in ("envelope", "legacy"):
            raise ValueError(f"unknown dialect {dialect!r}")
        # The devices the gateway manages: the caller's mapping, read here (D5).
        self.devices = devices
        self.gid = gid
        self.user = user
        self.password = password
        self.legacy = dialect == "legacy"
        self.full_window = window
        self.window = window
        self.request_timeout = request_timeout
        self.sync_timeout = max(SYNC_MIN_TIMEOUT, request_timeout)
        self.handshake_timeout = handshake_timeout
        self.commit_debounce = commit_debounce
        self.stats = stats if stats is not None else SessionStats()
        self.new_token = new_token if new_token is not None else Tokens()
        self.phase = Phase.HANDSHAKE
        self.attached: set[str] = set()
        self.quarantined: dict[str, str] = {}
        self.in_flight = 0
        # The platform's count of error answers in a row (§2.11), and what may add to it:
        # devices and (device type, service) kinds refused since their last 200, and the
        # kinds that have had no 200 yet in this session.
        self.errors_in_row = 0
        self._guard = True  # off when a reset was refused: see _answered
        self._risky_in_flight = 0
        self._failing: set[str | tuple[str, str]] = set()
        self._proven: set[tuple[str, str]] = set()
        self._deadline = 0.0  # of the handshake
        self._pending: dict[str, _Request] = {}
        self._puts: deque[Device] = deque()  # one put at a time, as the v3/v4 client
        self._put_token: str | None = None
        self._commit_due: float | None = None
        self._commit_token: str | None = None
        self._reset_token: str | None = None
        self._registering: set[str] = set()  # legacy: devices whose registration is under way
        self._writes: list[str] = []
        self._events: list[Event] = []

    # --- what the shell reads ------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        writes, self._writes = self._writes, []
        return writes

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    # --- the session's course ------------------------------------------------------------

    def start(self, now: float) -> None:
        """The credentials frame: the first thing on a new link (Part 2 §1.3, §2.6)."""
        if self.closed:
            return
        self.stats.connects += 1
        if self.legacy:
            # Era A: no answer, no gateway id, no hash; the devices are registered over
            # HTTP before the session counts as ready.
            self._writes.append(legacy.encode_credentials(self.user, self.password))
            self.phase = Phase.SYNC
            self._register(tuple(self.devices.values()))
            return
        self._writes.append(envelope.encode_credentials(self.user, self.password, self.gid))
        self._deadline = now + self.handshake_timeout

    def receive(self, text: str, now: float) -> None:
        """A text frame from the platform."""
        if self.phase is Phase.CLOSED:
            return
        if self.legacy:
            self._receive_legacy(text)
        elif self.phase is Phase.HANDSHAKE:
            self._handshake_answer(text, now)
        else:
            self._receive_envelope(text, now)

    def tick(self, now: float) -> None:
        """Deadlines: the handshake, unanswered requests, the debounced commit."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.HANDSHAKE and not self.legacy and now >= self._deadline:
            self._fail(f"no answer to the credentials within {self.handshake_timeout:g} s")
            return
        late = [token for token, request in self._pending.items() if request.deadline <= now]
        for token in late:
            request = self._pending.pop(token)
            timeout = self.sync_timeout if not request.windowed else self.request_timeout
            self._unanswered(request, f"no answer to {request.handler} within {timeout:g} s", now)
            if self.closed:
                return
        if (
            self._commit_due is not None
            and now >= self._commit_due
            and self.phase is Phase.READY
            and self._put_token is None
            and self._commit_token is None
            and self._reset_token is None
        ):
            self._commit_due = None
            self._commit(now)

    def close(self, reason: str) -> None:
        """The link is gone: everything waiting for an answer gets LinkDown."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        pending, self._pending = self._pending, {}
        for request in pending.values():
            self._settle(request, LinkDown(f"link closed before the answer to {request.handler}"))
        for device in self._puts:
            self._events.append(PutFailed(device.uri, reason))
        self._puts.clear()
        self._put_token = self._commit_token = self._reset_token = None

    # --- what the caller asks ------------------------------------------------------------

    def attach(self, device: Device, now: float, *, again: bool = False) -> None:
        """Put the device (or register it, legacy) unless it is attached; `again` puts a
        changed device anew. The outcome comes as Attached, Quarantined or PutFailed."""
        if self.phase is not Phase.READY:
            self._events.append(PutFailed(device.uri, "the session is not ready"))
            return
        if again:
            self.attached.discard(device.uri)
        if device.uri in self.attached or any(d.uri == device.uri for d in self._puts):
            return
        if self.legacy:
            if device.uri not in self._registering:
                self._register((device,))
            return
        self._puts.append(device)
        self._next_put(now)

    def detach(self, uri: str, now: float, *, delete: bool = False) -> None:
        """`disconnect` (or `delete`) an attached device, then commit (Part 2 §2.8). A put
        of it still waiting is dropped; one already sent is followed by a disconnect."""
        self.quarantined.pop(uri, None)
        in_flight = self._put_token is not None and self._puts and self._puts[0].uri == uri
        self._puts = deque(
            d for i, d in enumerate(self._puts) if d.uri != uri or (i == 0 and in_flight)
        )
        if uri not in self.attached or self.phase is not Phase.READY:
            self.attached.discard(uri)
            return
        self.attached.discard(uri)
        if self.legacy:  # Era A never had un-registration (Part 2 §1.4)
            return
        self._request("delete" if delete else "disconnect", uri, now, self.sync_timeout, uri)
        self._schedule_commit(now)

    def send_event(
        self, ref: object, device: Device, service: str, data: str, metadata: str, now: float
    ) -> Refusal | None:
        """Queue an event frame; its outcome comes as EventDone(ref, …)."""
        refusal = self._sendable(device)
        if refusal is not None:
            return refusal
        uri = device.uri
        if self.legacy:
            self._writes.append(legacy.encode_change(uri, service, data, metadata))
            self.stats.events_acked += 1
            self._events.append(EventDone(ref, None))  # at-most-once: written is delivered
            return None
        kind = (device.device_type, service)
        risky = uri in self._failing or kind in self._failing or kind not in self._proven
        if risky:
            if self._budget_low(now):
                return Refusal.BUDGET
            self._risky_in_flight += 1
        token = self.new_token()
        self._pending[token] = _Request(
            "event", now + self.request_timeout, ref, uri, True, kind, risky
        )
        self.in_flight += 1
        self._writes.append(envelope.encode_event_request(token, uri, service, data, metadata))
        return None

    def _budget_low(self, now: float) -> bool:
        """Whether a risky request (one that may well be refused) must wait: the errors in
        a row, with the risky requests unanswered, could reach the guard. With nothing on
        its way whose answer would reset the count, a reset goes."""
        if not self._guard or self.errors_in_row + self._risky_in_flight < BUDGET_GUARD:
            return False
        if self.errors_in_row and not self._pending:
            self._reset_budget(now)
        return True

    def _reset_budget(self, now: float) -> None:
        """A commit of the devices attached now: the Go connector answers it 200 whatever
        the repository says (§8.9), which sets the platform's count of errors back to 0.
        Its hash covers what is attached, so a session that ends before the real commit
        syncs again next time rather than trust a set it never committed."""
        if self._reset_token is None and self._commit_token is None and self._put_token is None:
            self.stats.budget_resets += 1
            token = self.new_token()
            self._pending[token] = _Request("commit", now + self.sync_timeout, reset=True)
            self._writes.append(envelope.encode_request("commit", token, self.committable_hash()))
            self._reset_token = token

    def respond(
        self, ref: object, command: Command, data: str | None, metadata: str | None, now: float
    ) -> Refusal | None:
        """Queue the answer to a command; its outcome comes as ResponseDone(ref, …)."""
        if self.phase is not Phase.READY:
            return Refusal.NOT_READY
        if self.legacy:
            self._writes.append(legacy.encode_reply(command, data, metadata))
            self._events.append(ResponseDone(ref, None))
            return None
        if self.in_flight >= self.window:
            return Refusal.WINDOW_FULL
        token = self.new_token()
        self._pending[token] = _Request("response", now + self.request_timeout, ref, "", True)
        self.in_flight += 1
        payload = reply_payload(command, data, metadata)
        self._writes.append(envelope.encode_request("response", token, payload, "map"))
        return None

    def registered(self, devices: Iterable[Device], error: str | None = None) -> None:
        """Legacy: the outcome of the HTTP registration asked for by RegistrationNeeded.
        On success the bare `update` frame follows (D4)."""
        if self.closed:
            return
        devices = tuple(devices)
        self._registering.difference_update(d.uri for d in devices)
        if error is not None:
            if self.phase is Phase.SYNC:
                self._fail(f"registration failed: {error}")
            else:
                for device in devices:
                    self._events.append(PutFailed(device.uri, error))
            return
        self.stats.puts += len(devices)
        self._writes.append(legacy.UPDATE_FRAME)
        for device in devices:
            self.attached.add(device.uri)
            self._events.append(Attached(device.uri))
        if self.phase is Phase.SYNC:
            self.phase = Phase.READY
            self._events.append(Ready(len(self.attached)))

    def committable_hash(self) -> str:
        # Only what is really attached: a quarantined device then leaves the hashes
        # different, and the next session syncs again instead of trusting a false match.
        return gateway_hash(d for u, d in self.devices.items() if u in self.attached)

    # --- internals -----------------------------------------------------------------------

    def _sendable(self, device: Device) -> Refusal | None:
        if self.phase is not Phase.READY:
            return Refusal.NOT_READY
        uri = device.uri
        if uri in self.quarantined:
            return Refusal.QUARANTINED
        if uri not in self.attached:
            return Refusal.NOT_ATTACHED
        known = self.devices.get(uri)
        if known is not device and known != device:
            return Refusal.CHANGED
        if self.in_flight >= self.window:
            return Refusal.WINDOW_FULL
        return None

    def _request(
        self, handler: str, payload: Any, now: float, timeout: float, uri: str = ""
    ) -> str:
        token = self.new_token()
        self._pending[token] = _Request(handler, now + timeout, uri=uri)
        self._writes.append(envelope.encode_request(handler, token, payload))
        return token

    def _register(self, devices: tuple[Device, ...]) -> None:
        if not devices:  # a session start with nothing to register: ready at once
            self.phase = Phase.READY
            self._events.append(Ready(0))
            return
        self._registering.update(d.uri for d in devices)
        self._events.append(RegistrationNeeded(devices))

    def _handshake_answer(self, text: str, now: float) -> None:
        try:
            gid, server_hash = envelope.decode_handshake_answer(text)
        except ProtocolError as exc:
            self._fail(f"handshake failed: {exc}")
            return
        self.gid = gid
        matched = gateway_hash(self.devices.values()) == server_hash
        self._events.append(HandshakeDone(gid, matched))
        if matched:
            self.attached = set(self.devices)
            self.phase = Phase.READY
            self._events.append(Ready(len(self.attached)))
            return
        self.stats.syncs += 1
        self.phase = Phase.SYNC
        self._request("clear", None, now, self.sync_timeout)

    def _receive_envelope(self, text: str, now: float) -> None:
        try:
            frame = envelope.decode_server_frame(text)
            if frame.handler == "command":
                self._command(parse_command(frame.payload))
                return
        except ProtocolError as exc:
            self._malformed(str(exc), len(text))
            return
        request = self._pending.pop(frame.token, None)
        if request is None:
            self.stats.unmatched_answers += 1  # late or unknown: dropped, as v3/v4 does
            return
        self._answered(request, frame, now)

    def _receive_legacy(self, text: str) -> None:
        try:
            command = legacy.decode_command(text)
        except ProtocolError as exc:
            self._malformed(str(exc), len(text))
            return
        self._command(command)

    def _command(self, command: Command) -> None:
        self.stats.commands += 1
        self._events.append(CommandReceived(command))

    def _malformed(self, reason: str, size: int) -> None:
        self.stats.malformed_frames += 1
        self._events.append(Malformed(reason, size))

    def _answered(self, request: _Request, answer: Envelope, now: float) -> None:
        self._take_answer(request, answer, now)
        if (
            self._puts
            and self._put_token is None
            and request.handler not in ("put", "clear")
            and not self.closed
        ):
            self._next_put(now)  # puts held back by the error budget: go on, or reset

    def _take_answer(self, request: _Request, answer: Envelope, now: float) -> None:
        handler = request.handler
        # After any error answer only one request may be in flight until a 200 (D8): the
        # platform counts every error in a row towards closing the session.
        ok = answer.status == 200
        self.window = self.full_window if ok else 1
        self.errors_in_row = 0 if ok else self.errors_in_row + 1
        self._unwindow(request)
        if request.reset:
            self._reset_token = None
            if not ok:
                # Not the Go connector's commit (always 200): nothing resets the count,
                # so holding requests back would only stall them. Go on without the guard.
                self._guard = False
                self._events.append(
                    Notice(f"commit answered {answer.status}: the error budget cannot be reset")
                )
        if request.reset:
            return
        if handler == "event":
            if ok:
                self._failing.discard(request.uri)
                self._failing.discard(request.kind)
                self._proven.add(request.kind)
            else:
                self._failing.update((request.uri, request.kind))
            self._events.append(EventDone(request.ref, self._event_outcome(request.uri, answer)))
        elif handler == "response":
            error = None if answer.status == 200 else EventRejected(answer.status, _text(answer))
            self._events.append(ResponseDone(request.ref, error))
        elif handler == "clear":
            if answer.status != 200:
                self._fail(f"sync failed: clear answered {answer.status}: {_text(answer)}")
                return
            self.attached.clear()
            self._puts.extend(self.devices.values())
            self._next_put(now)
        elif handler == "put":
            self._put_answered(request.uri, answer, now)
        elif handler == "commit":
            self._commit_token = None
            if answer.status != 200:
                reason = f"commit answered {answer.status}: {_text(answer)}"
                if self.phase is Phase.SYNC:
                    self._fail(f"sync failed: {reason}")
                    return
                self._events.append(Notice(f"{reason}; the next sync will commit"))
            elif self.phase is Phase.SYNC:
                self.phase = Phase.READY
                self._events.append(Ready(len(self.attached)))
        elif answer.status != 200:  # disconnect, delete
            self._events.append(
                Notice(f"{handler} of {request.uri} answered {answer.status}: {_text(answer)}")
            )

    def _event_outcome(self, uri: str, answer: Envelope) -> ConnectorError | None:
        if answer.status == 200:
            self.stats.events_acked += 1
            return None
        message = _text(answer)
        if answer.status == 400 and NOT_LISTENING in message:
            # The two sides' device sets diverged: the caller puts it again and resends.
            self.attached.discard(uri)
            return NotListening(uri, message)
        self.stats.events_rejected += 1
        return EventRejected(answer.status, message)

    def _next_put(self, now: float) -> None:
        if self._put_token is not None:
            return
        while self._puts:
            device = self._puts[0]
            if device.uri in self.attached:
                self._puts.popleft()
                continue
            # A put may be refused (a type the platform lacks): risky, as events can be.
            if self._budget_low(now):
                return
            self._put_token = self._request(
                "put", device.put_payload(), now, self.sync_timeout, device.uri
            )
            self._pending[self._put_token].risky = True
            self._risky_in_flight += 1
            self.stats.puts += 1
            return
        if self.phase is Phase.SYNC:
            self._commit(now)

    def _put_answered(self, uri: str, answer: Envelope, now: float) -> None:
        self._put_token = None
        if self._puts and self._puts[0].uri == uri:
            self._puts.popleft()
        if answer.status == 200 and uri not in self.devices and not self.legacy:
            # Dropped by the caller while its put was under way: attached on the platform
            # now, so it is disconnected again (before the sync's commit, if one follows).
            self._request("disconnect", uri, now, self.sync_timeout, uri)
            if self.phase is Phase.READY:
                self._schedule_commit(now)
        elif answer.status == 200:
            self.attached.add(uri)
            self.quarantined.pop(uri, None)
            self._events.append(Attached(uri))
            if self.phase is Phase.READY:
                self._schedule_commit(now)
        elif answer.status in (400, 500):
            reason = f"put answered {answer.status}: {_text(answer)}"
            self.quarantined[uri] = reason
            self._events.append(Quarantined(uri, reason))
        elif self.phase is Phase.SYNC:
            self._fail(f"sync failed: put of {uri} answered {answer.status}: {_text(answer)}")
            return
        else:
            self._events.append(PutFailed(uri, f"put answered {answer.status}: {_text(answer)}"))
        self._next_put(now)

    def _schedule_commit(self, now: float) -> None:
        if self._commit_due is None:
            self._commit_due = now + self.commit_debounce

    def _commit(self, now: float) -> None:
        committed = self.committable_hash()
        self._events.append(Committing(committed))
        self._commit_token = self._request("commit", committed, now, self.sync_timeout)
        self.stats.commits += 1

    def _unanswered(self, request: _Request, reason: str, now: float) -> None:
        if request.handler == "put":
            self._unwindow(request)
        if request.reset:
            self._reset_token = None
        if request.handler in ("clear", "commit") and self.phase is Phase.SYNC:
            self._fail(f"sync failed: {reason}")
        elif request.handler == "put":
            if self.phase is Phase.SYNC:
                self._fail(f"sync failed: {reason}")
                return
            self._put_token = None
            if self._puts and self._puts[0].uri == request.uri:
                self._puts.popleft()
            self._events.append(PutFailed(request.uri, reason))
            self._next_put(now)
        elif request.reset:
            self._next_put(now)
        elif request.handler == "commit":
            self._commit_token = None
            self._events.append(Notice(f"{reason}; the next sync will commit"))
        else:
            self._settle(request, LinkDown(reason))

    def _unwindow(self, request: _Request) -> None:
        if request.windowed:
            self.in_flight -= 1
        if request.risky:
            self._risky_in_flight -= 1

    def _settle(self, request: _Request, error: ConnectorError) -> None:
        """A windowed request that will get no answer."""
        self._unwindow(request)
        if request.handler == "event":
            self._events.append(EventDone(request.ref, error))
        elif request.handler == "response":
            self._events.append(ResponseDone(request.ref, error))

    def _fail(self, reason: str) -> None:
        self._events.append(Failed(reason))
        self.close(reason)


def _text(answer: Envelope) -> str:
    payload = answer.payload
    return payload if isinstance(payload, str) else repr(payload)
