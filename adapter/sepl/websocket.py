"""A client websocket: websockets' sans-I/O `ClientProtocol` driven over an anyio byte
stream (TCP, or TLS for wss://). It sends text frames, many in one write, hands on the
text messages it reads, answers pings (the protocol does) and pings itself for the
keep-alive of decision D7.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import ByteStream
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidURI, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

READ_SIZE = 65536


class LinkClosed(Exception):
    """The websocket is closed (by either side, or the TCP connection broke);
    `close_frame` tells whether the platform said goodbye with a close frame."""

    def __init__(self, reason: str, *, close_frame: bool = False) -> None:
        super().__init__(reason)
        self.close_frame = close_frame


class ClosedEarly(ConnectionError):
    """The server closed (or reset) the connection during the TLS handshake or before it
    answered the opening handshake. A server that requires a TLS client certificate does
    that when it gets none it accepts, often without a TLS alert; `tls` tells whether the
    connection was TLS. An OSError, as the other failures of `WebSocket.connect`."""

    def __init__(self, during: str, *, tls: bool, cause: BaseException | None = None) -> None:
        detail = f" ({cause})" if cause is not None and str(cause) else ""
        super().__init__(f"the server closed the connection during the {during}{detail}")
        self.tls = tls


class _RedactCredentials(logging.Filter):
    """websockets' debug log prints frames; the first one holds the password (D3)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        # Long frames are shortened to their start and end, so a long user name can push
        # '"pw"' out of the line: the start of a credentials frame is enough.
        if '"pw"' in text or '{"user"' in text:
            record.msg, record.args = "> TEXT [credentials frame redacted]", None
        return True


def redacting_logger() -> logging.Logger:
    logger = logging.getLogger("adapter.sepl.websocket")
    if not any(isinstance(f, _RedactCredentials) for f in logger.filters):
        logger.addFilter(_RedactCredentials())
    return logger


class WebSocket:
    """One open connection. `receive` and the writers may run in different tasks."""

    def __init__(self, stream: ByteStream, protocol: ClientProtocol) -> None:
        self._stream = stream
        self._protocol = protocol
        self._fragments: list[bytes] = []
        self._write_lock = anyio.Lock()
        self._pongs: dict[bytes, anyio.Event] = {}
        self._ping_count = 0
        self._early: list[str] = []  # messages read together with the handshake answer
        self._ended: LinkClosed | None = None  # a close read together with messages

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        open_timeout: float,
        max_size: int,
    ) -> WebSocket:
        """Open the TCP (TLS) connection and do the opening handshake within
        `open_timeout` s. Raises OSError (ssl.SSLError for a failed TLS handshake,
        ClosedEarly), TimeoutError, InvalidURI, InvalidHandshake or LinkClosed."""
        uri = parse_uri(url)
        protocol = ClientProtocol(uri, max_size=max_size, logger=redacting_logger())
        with anyio.fail_after(open_timeout):
            stream: ByteStream
            if uri.secure:
                try:
                    stream = await anyio.connect_tcp(
                        uri.host,
                        uri.port,
                        ssl_context=ssl_context or ssl.create_default_context(),
                        tls_standard_compatible=False,
                    )
                except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                    # A server ending the TLS handshake without an alert, as one that
                    # refuses the client's certificate may (TLS 1.2).
                    raise ClosedEarly("TLS handshake", tls=True, cause=_cause(exc)) from None
            else:
                stream = await anyio.connect_tcp(uri.host, uri.port)
            try:
                protocol.send_request(protocol.connect())
                await _write(stream, protocol.data_to_send())
                frames = await _handshake(stream, protocol, tls=uri.secure)
            except BaseException:
                await _abort(stream)
                raise
        websocket = cls(stream, protocol)
        websocket._early = websocket._take(frames)
        await websocket._flush()
        return websocket

    @property
    def open(self) -> bool:
        return self._protocol.state is State.OPEN

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Text frames in one write (a burst of events costs one system call)."""
        if self._protocol.state is not State.OPEN:
            raise LinkClosed("the websocket is closed")
        for text in texts:
            self._protocol.send_text(text.encode())
        await self._flush()

    async def receive(self) -> list[str]:
        """The text messages of the next read (at least one; waits for them). Raises
        LinkClosed when the connection ends."""
        if self._early:
            early, self._early = self._early, []
            return early
        if self._ended is not None:
            raise self._ended
        protocol = self._protocol
        while True:
            if protocol.state is State.CLOSED:
                raise _closed(protocol)
            try:
                data = await self._stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                protocol.receive_eof()
                raise _closed(protocol) from None
            protocol.receive_data(data)
            texts = self._take(protocol.events_received())
            await self._flush()  # pongs, and the answer to a close frame
            if protocol.close_expected():
                await self.aclose()
                if not texts:
                    raise _closed(protocol)
                # The messages before the close still count; the close comes next time.
                self._ended = _closed(protocol)
            if texts:
                return texts

    async def ping(self, timeout: float) -> bool:
        """Send a ping; True if its pong arrived within `timeout` s (a reader must run)."""
        self._ping_count += 1
        payload = str(self._ping_count).encode()
        pong = self._pongs[payload] = anyio.Event()
        try:
            self._protocol.send_ping(payload)
            await self._flush()
            with anyio.move_on_after(timeout):
                await pong.wait()
            return pong.is_set()
        finally:
            self._pongs.pop(payload, None)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, briefly, then the TCP connection."""
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            with anyio.move_on_after(2.0), anyio.CancelScope(shield=True):
                await self._flush()
        await self.aclose()

    async def aclose(self) -> None:
        await _abort(self._stream)

    def _take(self, events: list[Any]) -> list[str]:
        texts: list[str] = []
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or (opcode is Opcode.CONT and self._fragments):
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    data, self._fragments = b"".join(self._fragments), []
                    try:
                        texts.append(data.decode("utf-8"))
                    except UnicodeDecodeError:
                        self._protocol.fail(1007, "invalid UTF-8 in a text message")
            elif opcode is Opcode.BINARY or opcode is Opcode.CONT:
                texts.append("")  # no protocol data: the session counts it as malformed
            elif opcode is Opcode.PONG:
                waiter = self._pongs.get(bytes(frame.data))
                if waiter is not None:
                    waiter.set()
        return texts

    async def _flush(self) -> None:
        data = self._protocol.data_to_send()
        if data:
            async with self._write_lock:
                await _write(self._stream, data)


async def _write(stream: ByteStream, chunks: list[bytes]) -> None:
    """Write what the protocol produced; an empty chunk asks for the end of the stream."""
    payload = b"".join(chunks)
    try:
        if payload:
            await stream.send(payload)
        if chunks and not chunks[-1]:
            await stream.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        raise LinkClosed(f"write failed: {exc!r}") from None


async def _handshake(stream: ByteStream, protocol: ClientProtocol, *, tls: bool) -> list[Frame]:
    """Read until the handshake answer; returns the frames that came right after it."""
    while True:
        try:
            data = await stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            # In TLS 1.3 a server checks the client's certificate after the client's side
            # of the TLS handshake is done: a refusal ends the connection here.
            protocol.receive_eof()
            raise ClosedEarly("opening handshake", tls=tls, cause=_cause(exc)) from None
        protocol.receive_data(data)
        events = protocol.events_received()
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        for index, event in enumerate(events):
            if isinstance(event, Response):
                return [e for e in events[index + 1 :] if isinstance(e, Frame)]


def _cause(exc: BaseException) -> BaseException | None:
    """What anyio's EndOfStream or BrokenResourceError stands for (a reset, a TLS error)."""
    return exc.__cause__ or exc.__context__


async def _abort(stream: ByteStream) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(OSError, anyio.BrokenResourceError):
        await stream.aclose()


def _closed(protocol: ClientProtocol) -> LinkClosed:
    return LinkClosed(_close_text(protocol), close_frame=protocol.close_rcvd is not None)


def _close_text(protocol: ClientProtocol) -> str:
    close = protocol.close_rcvd
    if close is not None:
        return f"closed by the platform ({close.code} {close.reason})".strip()
    exc = protocol.parser_exc
    if isinstance(exc, ProtocolError):
        return f"protocol error: {exc}"
    return "connection lost"


__all__ = [
    "ClosedEarly",
    "InvalidHandshake",
    "InvalidURI",
    "LinkClosed",
    "WebSocket",
    "redacting_logger",
]
