"""The SEPL connector client: the async shell around the sans-I/O `GatewaySession`
(adapter/sepl/session.py). It finds the endpoint (D2), opens the websocket
(adapter/sepl/websocket.py), feeds the session what arrives and the time, writes what the
session queued, keeps the keep-alive (D7), reconnects with back-off (D6), persists the
gateway id and the device set (D5) and makes the legacy dialect's HTTP registration (D4).
The protocol rules themselves are all in the session.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from adapter.sepl import legacy
from adapter.sepl.backoff import Backoff
from adapter.sepl.device import Device
from adapter.sepl.errors import (
    ConnectorError,
    DeviceQuarantined,
    EventRejected,
    HandshakeFailed,
    LinkDown,
    NotListening,
)
from adapter.sepl.lookup import LookupError_, fetch_endpoint, registration_url
from adapter.sepl.messages import Command
from adapter.sepl.session import (
    Attached,
    CommandReceived,
    Committing,
    Event,
    EventDone,
    Failed,
    GatewaySession,
    HandshakeDone,
    Malformed,
    Notice,
    Phase,
    PutFailed,
    Quarantined,
    Ready,
    Refusal,
    RegistrationNeeded,
    ResponseDone,
    SessionStats,
)
from adapter.sepl.state import GatewayState
from adapter.sepl.websocket import (
    ClosedEarly,
    InvalidHandshake,
    InvalidURI,
    LinkClosed,
    WebSocket,
)

if TYPE_CHECKING:
    from adapter.config import Settings

log = logging.getLogger("adapter.sepl")

OPEN_TIMEOUT = 20.0  # s for TCP, TLS and the websocket upgrade together
MAX_FRAME = 16 * 1024 * 1024
TICK = 0.1  # s between looks at the session's deadlines
SAVE_DEBOUNCE = 0.15  # the device set is written once for a burst of new devices
# Refusals that clear by themselves once answers come in: the request waits its turn.
WAIT = (Refusal.WINDOW_FULL, Refusal.BUDGET)

ConnectorStats = SessionStats


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
AnswerCallback = Callable[[Any, "ConnectorError | None"], None]


class ClientCertificateError(ConnectorError):
    """A TLS client certificate or key file that cannot be used; `str(e)` is one line
    naming the file. `key`: the problem is the key file's (a separate one)."""

    def __init__(self, path: Path, problem: str, *, key: bool = False) -> None:
        super().__init__(f"TLS client {'key' if key else 'certificate'} {path}: {problem}")
        self.path = path
        self.problem = problem
        self.key = key


def load_client_certificate(
    context: ssl.SSLContext, cert_file: Path, key_file: Path | None = None
) -> None:
    """Make `context` present this certificate (PEM, its chain may follow it) in its
    handshakes; the key is `key_file`, or in `cert_file` when None. ClientCertificateError
    when the files cannot be used: not PEM, no key, an encrypted key, a key of another
    certificate. An encrypted key is refused, never asked for at the terminal (OpenSSL's
    default, which would hang a service)."""

    def encrypted() -> str:
        raise ClientCertificateError(
            key_file or cert_file,
            "the private key is encrypted (has a passphrase); give it unencrypted and protect"
            " the file instead (mode 0600, readable by the adapter's user only)",
            key=key_file is not None,
        )

    try:
        context.load_cert_chain(cert_file, key_file, password=encrypted)
    except ssl.SSLError as exc:
        raise _certificate_problem(cert_file, key_file, exc) from None
    except OSError as exc:
        for path, is_key in ((cert_file, False), (key_file, True)):
            if path is not None:
                try:
                    path.read_bytes()
                except OSError as unreadable:
                    reason = unreadable.strerror or str(unreadable)
                    raise ClientCertificateError(
                        path, f"cannot be read: {reason}", key=is_key
                    ) from None
        raise ClientCertificateError(cert_file, f"cannot be used: {exc}") from None


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")


def _certificate_problem(
    cert_file: Path, key_file: Path | None, error: ssl.SSLError
) -> ClientCertificateError:
    """Which file is wrong, and how: OpenSSL says only "PEM lib" for most of it."""
    cert = _read(cert_file)
    if not _PEM_CERTIFICATE.search(cert):
        hint = ""
        if cert[:1] == b"\x30":  # an ASN.1 SEQUENCE: a DER certificate
            hint = f"; it looks like DER: openssl x509 -inform der -in {cert_file} -out cert.pem"
        return ClientCertificateError(
            cert_file, f"no PEM certificate in it (-----BEGIN CERTIFICATE-----){hint}"
        )
    if error.reason == "KEY_VALUES_MISMATCH":
        if key_file is None:
            return ClientCertificateError(
                cert_file, "the private key in it does not belong to its certificate"
            )
        return ClientCertificateError(
            key_file, f"the private key does not belong to the certificate {cert_file}", key=True
        )
    if not _PEM_KEY.search(_read(key_file or cert_file)):
        if key_file is None:
            return ClientCertificateError(
                cert_file, "no PEM private key in it, and no key file is given"
            )
        return ClientCertificateError(
            key_file, "no PEM private key in it (-----BEGIN PRIVATE KEY-----)", key=True
        )
    files = f"{cert_file} and {key_file}" if key_file is not None else str(cert_file)
    return ClientCertificateError(
        cert_file, f"{files} cannot be used as certificate and key: {error.reason or error}"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


# The TLS alerts (OpenSSL's reason names) by which a server refuses a client certificate.
_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    }
)


def client_certificate_refusal(
    alert: str | None, cert_file: Path | None, *, peer: str, setting: str
) -> str:
    """Why `peer` ended a TLS connection before its protocol answered, in words, with the
    client certificate in mind. `alert`: the TLS alert it sent (OpenSSL's reason name,
    such as TLSV13_ALERT_CERTIFICATE_REQUIRED), None when it just closed (Mosquitto and
    Python servers send none in TLS 1.3). `setting` names where a certificate is given."""
    shown = f" ({alert.split('_ALERT_')[-1].lower().replace('_', ' ')} alert)" if alert else ""
    # A handshake failure alert is what a TLS 1.2 server sends a client without a
    # certificate; any other alert is not about the client certificate.
    unrelated = alert != "SSLV3_ALERT_HANDSHAKE_FAILURE" or cert_file is not None
    if alert is not None and alert not in _CERTIFICATE_ALERTS and unrelated:
        return f"{peer} refused the TLS handshake{shown}"
    if cert_file is None:
        if alert == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            return f"{peer} requires a TLS client certificate and none is given ({setting})"
        return (
            f"{peer} ended the TLS connection{shown or ' without an alert'}; it may require a"
            f" TLS client certificate, and none is given ({setting})"
        )
    if alert is not None:
        return f"{peer} did not accept the TLS client certificate {cert_file}{shown}"
    return (
        f"{peer} ended the TLS connection without an alert; it may not accept the TLS client"
        f" certificate {cert_file} (is it signed by a CA {peer} trusts, and still valid?)"
    )


def tls_alert(error: BaseException) -> str | None:
    """OpenSSL's name of the TLS alert that ended a handshake (ssl.SSLError.reason),
    None when `error` is no such alert."""
    reason = error.reason if isinstance(error, ssl.SSLError) else None
    return reason if isinstance(reason, str) and "_ALERT_" in reason else None


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
    # A TLS client certificate for wss:// and https:// (PEM); the key is in `cert_file`
    # when `key_file` is None. Last, so that positional calls of older releases still fit.
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings, state_dir: Path | None = None) -> ConnectorConfig:
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
            cert_file=settings.connector_cert_file,
            key_file=settings.connector_key_file,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectorConfig:
        """The origin document's variables (CONNECTOR_LOOKUP_URL, …) for library users."""
        from adapter import config as settings_module

        settings = settings_module.load(None, environ)
        return cls.from_settings(settings, state_dir=settings.adapter_state_dir / "connector")

    def ssl_context(self) -> ssl.SSLContext:
        """A new context each time: the files are read at each connection, so a renewed
        client certificate is taken at the next reconnect. ClientCertificateError when the
        certificate or key cannot be used."""
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            load_client_certificate(context, self.cert_file, self.key_file)
        return context

    def check_tls(self) -> None:
        """Raise what a client certificate that cannot work would raise only at the first
        connection: ClientCertificateError for its files, ConnectorError when it would
        never be sent (a ws:// URL, no lookup)."""
        if self.key_file is not None and self.cert_file is None:
            raise ConnectorError(f"TLS client key {self.key_file} given without its certificate")
        if self.cert_file is None:
            return
        if self.lookup_url is None and not self.https and not self.url.startswith("wss:"):
            raise ConnectorError(
                f"TLS client certificate {self.cert_file}: {self.url} is not a wss:// URL, and"
                " a client certificate is sent only over TLS"
            )
        self.ssl_context()


class _Outcome:
    """What a task waiting for one answer (or one put) is woken with."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: ConnectorError | None = None

    def settle(self, error: ConnectorError | None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass
class _Link:
    """The session of one open websocket, and what the shell keeps with it."""

    session: GatewaySession
    websocket: WebSocket
    url: str
    tg: TaskGroup
    write_wanted: anyio.Event = field(default_factory=anyio.Event)
    failure: str | None = None
    closed: anyio.Event = field(default_factory=anyio.Event)
    registrations: int = 0  # legacy HTTP registrations under way
    registered: anyio.Event = field(default_factory=anyio.Event)


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
        if self.config.protocol not in ("envelope", "legacy"):
            raise ConnectorError(f"unknown dialect {self.config.protocol!r}")
        self.config.check_tls()  # a bad certificate file: one clear error now, not per retry
        self._warned_plain = False
        self.state = GatewayState(self.config.state_dir)
        self.stats = SessionStats()
        self.quarantined: dict[str, str] = {}
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._link: _Link | None = None
        self._ready = anyio.Event()
        self._ready_since: float | None = None
        self.down_since: float | None = time.monotonic()  # None while the link is ready
        self._puts: dict[str, list[_Outcome]] = {}  # device uri -> tasks waiting for it
        self._slot_waiters: deque[anyio.Event] = deque()  # first come, first served
        self._save_pending = False
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

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Connector:
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
    def legacy(self) -> bool:
        return self.config.protocol == "legacy"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def ready_since(self) -> float | None:
        """monotonic() when the current session became ready, None while not ready."""
        return self._ready_since if self.ready else None

    @property
    def gid(self) -> str:
        return self.state.gid

    @property
    def devices(self) -> dict[str, Device]:
        return dict(self.state.devices)

    @property
    def attached(self) -> set[str]:
        link = self._link
        return set(link.session.attached) if link is not None else set()

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
            known = managed.get(device.uri)
            if known != device:
                if known is not None and known.device_type != device.device_type:
                    log.warning(
                        "device %s was registered with type %s and is now of type %s: a put"
                        " does not change a device's type on the platform (Part 2 §2.9);"
                        " delete %s there (its history goes with it) or keep type %s in the"
                        " mapping",
                        device.uri,
                        known.device_type,
                        device.device_type,
                        device.uri,
                        known.device_type,
                    )
                managed[device.uri] = device
                changed.append(device)
        if not changed:
            return
        self._schedule_save()
        link = self._ready_link()
        if link is None:
            return
        for device in changed:
            try:
                await self._attach(link, device, again=True)
            except (LinkDown, DeviceQuarantined) as exc:
                log.info("device %s will be synced later: %s", device.uri, exc)

    async def unregister(self, devices: Iterable[Device | str], *, delete: bool = False) -> None:
        """Stop managing devices: `disconnect` (or `delete`) each, then commit."""
        uris = [d if isinstance(d, str) else d.uri for d in devices]
        for uri in uris:
            self.state.devices.pop(uri, None)
            self.quarantined.pop(uri, None)
        self._schedule_save()
        link = self._ready_link()
        if link is None:
            return
        now = time.monotonic()
        for uri in uris:
            link.session.detach(uri, now, delete=delete)
        self._after(link)

    async def send_event(
        self, device: Device | str, service: str, data: str, metadata: str | None = None
    ) -> None:
        """Send one event; returns once the platform answered 200.

        Raises LinkDown (retry later), EventRejected or DeviceQuarantined.
        """
        uri = device if isinstance(device, str) else device.uri
        if isinstance(device, Device) and self.state.devices.get(uri) != device:
            await self.register([device])
        known = self.state.devices.get(uri)
        if known is None:
            raise ConnectorError(f"event for device {uri!r} that was never registered")
        resent = False
        while True:
            link = await self._ready_link_wait()
            if uri in self.quarantined:
                raise DeviceQuarantined(f"device {uri!r} is quarantined: {self.quarantined[uri]}")
            if uri not in link.session.attached:
                await self._attach(link, known)
            outcome = _Outcome()
            refusal = await self._queue(
                link,
                functools.partial(
                    link.session.send_event, outcome, known, service, data, metadata or ""
                ),
            )
            if refusal is Refusal.QUARANTINED:
                reason = link.session.quarantined.get(uri, "")
                raise DeviceQuarantined(f"device {uri!r} is quarantined: {reason}")
            if refusal is not None:  # not ready, detached or changed meanwhile: again
                known = self.state.devices.get(uri, known)
                continue
            await outcome.done.wait()
            error = outcome.error
            if error is None:
                return
            if isinstance(error, NotListening):
                if not resent:  # detached by the session: put it again and resend
                    resent = True
                    continue
                self.stats.events_rejected += 1
                raise EventRejected(400, error.message)
            raise error

    async def start_events(self, events: Sequence[E], done: AnswerCallback) -> list[E]:
        """The fast path of send_event, for attached devices on a ready link with free
        slots: queues the events (written together) and returns without waiting for the
        answers; `done(event, outcome)` is called exactly once per event queued, with None
        for a 200 or with the error send_event would have raised (LinkDown: not answered,
        send it again). Returns the events it did not queue (device not attached or
        changed, window full, link down): those go through send_event."""
        link = self._ready_link()
        if link is None or self._slot_waiters:  # those waiting for a slot go first
            return list(events)
        session = link.session
        now = time.monotonic()
        rest: list[E] = []
        for event in events:
            if (
                session.send_event(
                    (event, done), event.device, event.service, event.data, event.metadata, now
                )
                is not None
            ):
                rest.append(event)
        self._after(link)
        return rest

    async def commands(self) -> AsyncIterator[Command]:
        async for command in self._commands_out:
            yield command

    async def respond(
        self, command: Command, data: str | None, metadata: str | None = None
    ) -> None:
        """Answer a command; returns once the platform acknowledged the response."""
        while True:
            link = await self._ready_link_wait()
            outcome = _Outcome()
            refusal = await self._queue(
                link, functools.partial(link.session.respond, outcome, command, data, metadata)
            )
            if refusal is None:
                break
        await outcome.done.wait()
        if outcome.error is not None:
            raise outcome.error

    # --- sending -------------------------------------------------------------------------

    def _ready_link(self) -> _Link | None:
        link = self._link
        if link is None or not link.session.ready or link.closed.is_set():
            return None
        return link

    async def _ready_link_wait(self) -> _Link:
        while True:
            await self.wait_ready()
            link = self._ready_link()
            if link is not None:
                return link
            await anyio.sleep(0.01)  # the dead session is being torn down

    async def _queue(self, link: _Link, send: Callable[[float], Refusal | None]) -> Refusal | None:
        """Queue one request once the window has room (None), or say why it cannot go.
        Arrival order is kept, so a later event of a device cannot overtake an earlier
        one after an outage."""
        if not self._slot_waiters:
            refusal = send(time.monotonic())
            self._after(link)
            if refusal not in WAIT:
                return refusal
        turn = anyio.Event()
        self._slot_waiters.append(turn)
        try:
            while True:
                await turn.wait()
                if link.closed.is_set():
                    return Refusal.NOT_READY
                refusal = send(time.monotonic())
                self._after(link)
                if refusal not in WAIT:
                    return refusal
                turn = anyio.Event()
                self._slot_waiters[0] = turn
        finally:
            if self._slot_waiters and self._slot_waiters[0] is turn:
                self._slot_waiters.popleft()
            elif turn in self._slot_waiters:
                self._slot_waiters.remove(turn)
            self._hand_over()

    def _hand_over(self) -> None:
        link = self._link
        if self._slot_waiters and (
            link is None or link.closed.is_set() or link.session.in_flight < link.session.window
        ):
            self._slot_waiters[0].set()

    async def _attach(self, link: _Link, device: Device, *, again: bool = False) -> None:
        outcome = _Outcome()
        self._puts.setdefault(device.uri, []).append(outcome)
        link.session.attach(device, time.monotonic(), again=again)
        self._after(link)
        await outcome.done.wait()
        if outcome.error is not None:
            raise outcome.error

    # --- the session's events ------------------------------------------------------------

    def _after(self, link: _Link) -> None:
        """After every call into the session: act on its events, then let the writer go."""
        for event in link.session.events_received():
            self._handle(link, event)
        if self._slot_waiters and link.session.errors_in_row == 0:
            self._hand_over()  # e.g. a commit's 200 that reset the error budget
        link.write_wanted.set()

    def _handle(self, link: _Link, event: Event) -> None:
        if type(event) is EventDone:  # nearly every event: the answers to events
            ref = event.ref
            if type(ref) is _Outcome:
                ref.settle(event.error)
            else:
                item, done = cast(tuple[OutgoingEvent, AnswerCallback], ref)
                done(item, event.error)
            if self._slot_waiters:
                self._hand_over()
        elif isinstance(event, ResponseDone):
            assert isinstance(event.ref, _Outcome)
            event.ref.settle(event.error)
            self._hand_over()
        elif isinstance(event, Attached):
            self.quarantined.pop(event.uri, None)
            self._settle_puts(event.uri, None)
        elif isinstance(event, Quarantined):
            self.quarantined[event.uri] = event.reason
            log.warning("device %s quarantined: %s", event.uri, event.reason)
            self._settle_puts(event.uri, DeviceQuarantined(event.reason))
        elif isinstance(event, PutFailed):
            self._settle_puts(event.uri, LinkDown(event.reason))
        elif isinstance(event, CommandReceived):
            self._accept_command(event.command)
        elif isinstance(event, Committing):
            self._flush_save()  # the device set on disk is never older than a commit
        elif isinstance(event, HandshakeDone):
            self._handshake_done(event)
        elif isinstance(event, Ready):
            self._ready_since = time.monotonic()
            self.down_since = None
            self._ready.set()
            log.info(
                "connector ready at %s (gateway %s, %d devices)",
                link.url,
                self.gid,
                event.attached,
            )
            if self._on_connect is not None:
                link.tg.start_soon(_maybe_await, self._on_connect, self.gid)
        elif isinstance(event, RegistrationNeeded):
            link.tg.start_soon(self._register_legacy, link, event.devices)
        elif isinstance(event, Malformed):
            log.warning(
                "ignoring a malformed frame from the platform: %s (%d chars)",
                event.reason,
                event.size,
            )
        elif isinstance(event, Notice):
            log.warning("%s", event.text)
        elif isinstance(event, Failed):
            link.failure = event.reason
            link.closed.set()

    def _handshake_done(self, event: HandshakeDone) -> None:
        if event.gid != self.state.gid or not self.state.gid_saved:
            if self.state.gid and event.gid != self.state.gid:
                log.warning("platform handed out a new gateway id %s (was %s)", event.gid, self.gid)
            try:
                self.state.set_gid(event.gid)
            except OSError as exc:
                # A full disk: the id is kept in memory and saved at the next handshake; a
                # restart before that connects with the old one (one full sync, D5).
                log.warning("could not save the gateway id %s: %s", event.gid, exc)
        if event.hash_matched:
            log.info(
                "gateway hash matches: %d devices restored without sync", len(self.state.devices)
            )

    def _settle_puts(self, uri: str, error: ConnectorError | None) -> None:
        for outcome in self._puts.pop(uri, ()):
            outcome.settle(error)

    def _accept_command(self, command: Command) -> None:
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

    # --- persistence ---------------------------------------------------------------------

    def _schedule_save(self) -> None:
        # Written once for a burst of new devices, not once per device. A crash before the
        # write costs one full sync at the next start, never a wrong hash match: a commit
        # always writes it first (Committing).
        if self._tg is None:
            self.state.save_devices()
        elif not self._save_pending:
            self._save_pending = True
            self._tg.start_soon(self._debounced_save)

    async def _debounced_save(self) -> None:
        await anyio.sleep(SAVE_DEBOUNCE)
        self._flush_save()

    def _flush_save(self) -> None:
        if self._save_pending:
            self._save_pending = False
            try:
                self.state.save_devices()
            except OSError as exc:
                # A full disk: the device set on disk stays older than a commit, which
                # costs one full sync at the next start, never a wrong hash match.
                self._save_pending = True
                log.warning("could not save the device set: %s", exc)

    # --- the link ------------------------------------------------------------------------

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

    async def _endpoint(self) -> str:
        if self.config.lookup_url:
            return await fetch_endpoint(
                self.config.lookup_url, https=self.config.https, ssl=self.config.ssl_context()
            )
        return self.config.url

    async def _one_session(self) -> str:
        try:
            url = await self._endpoint()
        except ClientCertificateError as exc:  # the file changed since the start
            return f"lookup {self.config.lookup_url} not tried: {exc}"
        except (LookupError_, OSError, TimeoutError) as exc:
            return f"lookup {self.config.lookup_url} failed: {exc}"
        except Exception as exc:  # aiohttp's own errors
            return f"lookup {self.config.lookup_url} failed: {exc!r}"
        secure = url.startswith("wss:")
        if not secure and self.config.cert_file is not None and not self._warned_plain:
            self._warned_plain = True
            log.warning(
                "the lookup answered %s, not wss://: the TLS client certificate %s is not sent",
                url,
                self.config.cert_file,
            )
        try:
            websocket = await WebSocket.connect(
                url,
                ssl_context=self.config.ssl_context() if secure else None,
                open_timeout=OPEN_TIMEOUT,
                max_size=MAX_FRAME,
            )
        except ClientCertificateError as exc:  # the file changed since the start
            return f"not connecting to {url}: {exc}"
        except (ssl.SSLError, ClosedEarly) as exc:
            return f"cannot connect to {url}: {self._tls_failure(exc)}"
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, LinkClosed) as exc:
            return f"cannot connect to {url}: {exc}"
        try:
            return await self._serve(websocket, url)
        finally:
            await websocket.close()

    def _tls_failure(self, error: ssl.SSLError | ClosedEarly) -> str:
        """A failed TLS handshake, or a close during or right after it, in words."""
        alert = tls_alert(error)
        if alert is None and (isinstance(error, ssl.SSLError) or not error.tls):
            # Not about the client certificate: the platform's certificate not trusted, no
            # shared cipher, a plain ws:// server closing.
            return str(error)
        return client_certificate_refusal(
            alert, self.config.cert_file, peer="the platform", setting="CONNECTOR_CERT_FILE"
        )

    async def _serve(self, websocket: WebSocket, url: str) -> str:
        config = self.config
        session = GatewaySession(
            devices=self.state.devices,
            gid=self.state.gid,
            user=config.user,
            password=config.password,
            dialect=config.protocol,
            window=config.inflight,
            request_timeout=config.request_timeout,
            stats=self.stats,
        )
        result = f"link to {url} closed"
        async with anyio.create_task_group() as tg:
            link = _Link(session, websocket, url, tg)
            self._link = link
            try:
                session.start(time.monotonic())
                self._after(link)
                tg.start_soon(self._writer, link)
                tg.start_soon(self._ticker, link)
                tg.start_soon(self._pinger, link)
                tg.start_soon(self._reader, link)
                await link.closed.wait()
                if link.failure is not None:
                    result = link.failure
            finally:
                tg.cancel_scope.cancel()
                session.close(result)
                self._after(link)
                self._link = None
                if self._ready.is_set():
                    self.down_since = time.monotonic()
                    self._ready = anyio.Event()
                    if self._on_disconnect is not None:
                        with anyio.CancelScope(shield=True):
                            await _maybe_await(self._on_disconnect, result)
                self._hand_over()
        return result

    async def _reader(self, link: _Link) -> None:
        try:
            while True:
                texts = await link.websocket.receive()
                now = time.monotonic()
                for text in texts:
                    link.session.receive(text, now)
                self._after(link)
        except LinkClosed as exc:
            if link.registrations:
                # Era A: a platform that refuses the credentials just closes the socket;
                # the registration's answer (401) says why.
                with anyio.move_on_after(self.config.request_timeout):
                    await link.registered.wait()
            elif (
                link.session.phase is Phase.HANDSHAKE
                and not link.session.legacy
                and not exc.close_frame
            ):
                # The Go connector refuses credentials by closing the connection unanswered.
                link.failure = link.failure or (
                    f"{link.url} closed the link without answering the credentials,"
                    " as the platform does when it refuses them"
                    " (CONNECTOR_USER / CONNECTOR_PASSWORD)"
                )
            link.failure = link.failure or f"link to {link.url} closed: {exc}"
        link.closed.set()

    async def _writer(self, link: _Link) -> None:
        try:
            while True:
                await link.write_wanted.wait()
                link.write_wanted = anyio.Event()
                texts = link.session.data_to_send()
                if texts:
                    await link.websocket.send_texts(texts)
        except LinkClosed as exc:
            link.failure = link.failure or f"link to {link.url} closed: {exc}"
        link.closed.set()

    async def _ticker(self, link: _Link) -> None:
        while True:
            await anyio.sleep(TICK)
            link.session.tick(time.monotonic())
            self._after(link)

    async def _pinger(self, link: _Link) -> None:
        while True:
            await anyio.sleep(self.config.ping_interval)
            if not await link.websocket.ping(self.config.ping_timeout):
                link.failure = f"no pong within {self.config.ping_timeout:g} s"
                link.closed.set()
                return

    async def _register_legacy(self, link: _Link, devices: tuple[Device, ...]) -> None:
        """POST the Era A registration (D4); the session then sends the bare `update`."""
        url = registration_url(link.url, self.config.registration_path, https=self.config.https)
        body = legacy.registration_body(self.config.user, self.config.password, devices)
        import aiohttp  # only the legacy dialect needs an HTTP client: 13 MB when imported

        error: str | None = None
        link.registrations += 1
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout)
        secure = url.startswith("https:")
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(
                    url, json=body, ssl=self.config.ssl_context() if secure else True
                ) as answer,
            ):
                status, text = answer.status, await answer.text()
            if status == 401:
                error = f"registration at {url} refused the credentials"
            elif status != 200:
                error = f"registration at {url} answered {status}: {text[:200]}"
        except ClientCertificateError as exc:  # the file changed since the start
            error = f"registration at {url} not tried: {exc}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"registration at {url} failed: {exc!r}"
        finally:
            link.registrations -= 1
        link.session.registered(devices, error)
        self._after(link)
        link.registered.set()


async def _maybe_await(callback: ConnectCallback, arg: str) -> None:
    result = callback(arg)
    if result is not None:
        await result


__all__ = [
    "ClientCertificateError",
    "Connector",
    "ConnectorConfig",
    "ConnectorError",
    "ConnectorStats",
    "DeviceQuarantined",
    "EventRejected",
    "HandshakeFailed",
    "LinkDown",
]
