"""The client's fast path for answers (adapter/sepl/wsframes.py and _Connection): the
splitter against streams of every kind of frame cut at every point, then the Connector
against real websockets peers with and without permessage-deflate, with commands,
fragments, pings and stray answers mixed into the events' answers."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.uri import parse_uri

from adapter.sepl import Connector, ConnectorConfig, ConnectorError, Device
from adapter.sepl.client import _Connection
from adapter.sepl.envelope import encode_command, encode_response
from adapter.sepl.messages import build_command
from adapter.sepl.wsframes import FrameSplitter
from sepl_dev.broker import free_port

HTTP = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
MAX_TEXT = 300
WS_URI = parse_uri("ws://127.0.0.1:1/")


def frame(first: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """RFC 6455 §5.2, written independently of the code under test."""
    size = len(payload)
    second = 0x80 if mask is not None else 0
    if size < 126:
        head = bytes([first, second | size])
    elif size < 65536:
        head = bytes([first, second | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, second | 127]) + size.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A frame and, when the splitter must take it, its text."""
    kind = draw(st.sampled_from(["text", "text", "text", "bad-utf8", "other", "masked", "big"]))
    if kind == "text":
        text = draw(st.text(max_size=200))
        raw = text.encode()
        return frame(0x81, raw), text if len(raw) <= MAX_TEXT else None
    if kind == "bad-utf8":
        return frame(0x81, b"ok\xff\xfe"), None
    if kind == "big":  # the 16- and 64-bit length forms
        size = draw(st.sampled_from([126, MAX_TEXT, MAX_TEXT + 1, 65535, 65536, 70000]))
        return frame(0x81, b"x" * size), "x" * size if size <= MAX_TEXT else None
    payload = draw(st.binary(max_size=150))
    if kind == "masked":
        return frame(0x81, payload, mask=draw(st.binary(min_size=4, max_size=4))), None
    # Binary, continuation, text without FIN, compressed (RSV1), ping, pong, close.
    first = draw(st.sampled_from([0x82, 0x80, 0x01, 0x00, 0xC1, 0x89, 0x8A, 0x88]))
    return frame(first, payload[:125] if first & 0x08 else payload), None


@given(
    st.lists(frames(), max_size=12),
    st.lists(st.integers(min_value=0, max_value=200_000), max_size=12),
)
def test_splitter_takes_exactly_the_small_text_frames_and_hands_on_the_rest(
    framed: list[tuple[bytes, str | None]], cuts: list[int]
) -> None:
    stream = HTTP + b"".join(raw for raw, _ in framed)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    splitter = FrameSplitter(MAX_TEXT)
    out: list[bytes | tuple[str, bytes]] = []
    for start, end in itertools.pairwise(points):
        out.extend(splitter.feed(stream[start:end]))
    assert splitter.rest() == b""
    # In stream order, every byte once: taken frames whole, the rest as it came.
    assert b"".join(p if isinstance(p, bytes) else p[1] for p in out) == stream
    taken = [p for p in out if not isinstance(p, bytes)]
    assert [text for text, _ in taken] == [text for _, text in framed if text is not None]
    assert [raw for _, raw in taken] == [raw for raw, text in framed if text is not None]
    # The general parser gets the HTTP answer and whole frames: what it is handed, joined,
    # is the HTTP answer followed by the frames not taken, in order.
    handed = b"".join(p for p in out if isinstance(p, bytes))
    assert handed == HTTP + b"".join(raw for raw, text in framed if text is None)


def test_nothing_before_the_end_of_the_http_answer_is_taken_as_a_frame() -> None:
    splitter = FrameSplitter(MAX_TEXT)
    answer = frame(0x81, b'{"status":200}')
    assert splitter.feed(HTTP[:-3]) == []
    assert splitter.feed(HTTP[-3:] + answer[:3]) == [HTTP]
    assert splitter.feed(answer[3:]) == [('{"status":200}', answer)]


def test_a_frame_over_the_limit_is_handed_on_from_its_header() -> None:
    splitter = FrameSplitter(MAX_TEXT, after_http=False)
    header = frame(0x81, b"y" * 1_000_000)[:10]
    # The general parser sees the header at once and can fail the connection (1009)
    # without anyone buffering the megabyte first.
    assert splitter.feed(header + b"yyy") == [header + b"yyy"]
    assert splitter.feed(b"y" * 10) == [b"y" * 10]


def test_a_partial_header_waits() -> None:
    splitter = FrameSplitter(MAX_TEXT, after_http=False)
    whole = frame(0x81, b"z" * 200)  # 16-bit length: a 4-byte header
    assert splitter.feed(whole[:1]) == []
    assert splitter.feed(whole[1:3]) == []
    assert splitter.feed(whole[3:]) == [("z" * 200, whole)]


# --- the Connector against real websockets peers -------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


DEVICE = Device.create("test:plug", "Plug", "iot#tasmota-plug")


class Event(NamedTuple):
    device: Device
    service: str
    data: str
    metadata: str


class Peer:
    """A platform that answers every request 200 and, after the `trigger`-th event, sends
    a fragmented command, a ping and an answer with an unknown token first."""

    def __init__(self, trigger: int) -> None:
        self.trigger = trigger
        self.events = 0
        self.compressed: list[bool] = []

    async def handle(self, ws: ServerConnection) -> None:
        self.compressed.append(bool(ws.protocol.extensions))
        json.loads(await ws.recv())  # credentials
        await ws.send(encode_response(200, "credentials", {"gid": "gw-1", "hash": ""}))
        async for message in ws:
            request = json.loads(message)
            if request["handler"] == "event":
                self.events += 1
                if self.events == self.trigger:
                    await self.interleave(ws)
            await ws.send(encode_response(200, request["token"], "ok"))

    async def interleave(self, ws: ServerConnection) -> None:
        command = encode_command(
            build_command(
                device_uri=DEVICE.uri,
                service_uri="sepl_set",
                data='{"power":"ON"}',
                task_id="task-1",
                device_instance_id=DEVICE.uri,
                time=0,
            )
        )
        middle = len(command) // 2
        await ws.send([command[:middle], command[middle:]])  # two frames, one message
        await ws.ping()
        await ws.send(encode_response(200, "nobody-asked", "ok"))


@asynccontextmanager
async def platform(peer: Peer, compression: str | None) -> AsyncIterator[str]:
    port = free_port()
    async with serve(peer.handle, "127.0.0.1", port, compression=compression):
        yield f"ws://127.0.0.1:{port}/"


@pytest.mark.anyio
@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_event_answers_commands_and_control_frames_mixed(
    compression: str | None, tmp_path: Path
) -> None:
    peer = Peer(trigger=7)
    outcomes: list[ConnectorError | None] = []
    answered: list[Event] = []

    def done(event: Event, outcome: ConnectorError | None) -> None:
        answered.append(event)
        outcomes.append(outcome)

    async with platform(peer, compression) as url:
        config = ConnectorConfig(url=url, state_dir=tmp_path, request_timeout=5)
        async with Connector(config) as connector:
            await connector.register([DEVICE])
            await connector.wait_ready(10)
            session = connector._session
            assert session is not None
            taken: list[str] = []
            take = session.ws.take_text  # type: ignore[attr-defined]
            assert take is not None

            def counting(text: str) -> bool:
                if take(text):
                    taken.append(text)
                    return True
                return False

            session.ws.take_text = counting  # type: ignore[attr-defined]
            events = [(DEVICE, "sepl_get", f'{{"n":{n}}}', "{}") for n in range(20)]
            sent = [Event(*fields) for fields in events]
            rest: list[Event] = []
            for start in range(0, 20, 5):  # several bursts, all within the window
                rest += await connector.start_events(sent[start : start + 5], done)
            assert rest == []
            with anyio.fail_after(10):
                command = await anext(connector.commands())
                while len(outcomes) < 20:
                    await anyio.sleep(0.01)
            assert command.device_uri == DEVICE.uri and command.data == '{"power":"ON"}'
            assert outcomes == [None] * 20
            assert sorted(answered, key=lambda e: e.data) == sorted(sent, key=lambda e: e.data)
            assert connector.stats.events_acked == 20
            assert connector.stats.unmatched_answers == 1
            assert connector.stats.malformed_frames == 0
            # Uncompressed answers come the fast way; compressed ones the general way.
            assert peer.compressed == [compression is not None]
            assert len(taken) == (0 if compression else 20)
            assert connector.ready


@pytest.mark.anyio
async def test_a_close_from_the_peer_still_ends_the_session(tmp_path: Path) -> None:
    """The close frame goes to the general parser, which then owns the stream."""
    closed = anyio.Event()
    sessions = 0

    async def handle(ws: ServerConnection) -> None:
        nonlocal sessions
        sessions += 1
        json.loads(await ws.recv())
        await ws.send(encode_response(200, "credentials", {"gid": "gw-1", "hash": ""}))
        if sessions == 1:
            await ws.send(encode_response(200, "stray", "ok"))
            await ws.close(1001, "going away")
            closed.set()
            return
        async for message in ws:
            request: dict[str, Any] = json.loads(message)
            await ws.send(encode_response(200, request["token"], "ok"))

    port = free_port()
    async with serve(handle, "127.0.0.1", port, compression=None):
        config = ConnectorConfig(
            url=f"ws://127.0.0.1:{port}/", state_dir=tmp_path, reconnect_min=0.05
        )
        async with Connector(config) as connector:
            await connector.register([DEVICE])
            with anyio.fail_after(10):
                await closed.wait()
                while sessions < 2 or not connector.ready:
                    await anyio.sleep(0.01)
            await connector.send_event(DEVICE, "sepl_get", "{}", "{}")
            assert connector.stats.connects == 2


@given(st.lists(st.text(max_size=300) | st.sampled_from(["x" * 70_000, "é" * 40]), max_size=6))
def test_frames_built_for_sending_are_what_a_server_reads(texts: list[str]) -> None:
    """queue_texts writes client frames itself (masked with bulk entropy): a websockets
    server protocol reads them back as the same messages, each with its own mask."""
    client = _Connection.__new__(_Connection)  # only the frame builder: no connection
    client._outgoing, client._masks, client._mask_at = [], b"", 0
    client.protocol = ClientProtocol(WS_URI)
    assert client.queue_texts(texts)
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    server.receive_data(b"".join(client._outgoing))
    frames = server.events_received()
    assert all(isinstance(frame, Frame) and frame.opcode is Opcode.TEXT for frame in frames)
    assert [bytes(frame.data).decode() for frame in frames if isinstance(frame, Frame)] == texts
    assert all(raw[1] & 0x80 for raw in client._outgoing)  # every client frame masked
