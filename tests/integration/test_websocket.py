"""The websocket shell (adapter/sepl/websocket.py, websockets' sans-I/O ClientProtocol over
anyio) and the Connector on it, against real websockets servers: answers, a fragmented
command, pings, stray answers and binary frames mixed into the events' answers; a close
from the peer; a peer that stops answering pings; a server that is no websocket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve

from adapter.sepl import Connector, ConnectorConfig, ConnectorError, Device
from adapter.sepl.device import EMPTY_GATEWAY_HASH
from adapter.sepl.envelope import encode_command, encode_response
from adapter.sepl.messages import build_command
from adapter.sepl.websocket import LinkClosed, WebSocket
from sepl_dev.broker import free_port


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
    a fragmented command, a ping, a binary frame and an answer with an unknown token."""

    def __init__(self, trigger: int) -> None:
        self.trigger = trigger
        self.events = 0
        self.offered_extensions: list[str | None] = []

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.offered_extensions.append(ws.request.headers.get("Sec-WebSocket-Extensions"))
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
        await ws.send(b"\x00\x01")
        await ws.send(encode_response(200, "nobody-asked", "ok"))


@asynccontextmanager
async def platform(handler: Any, compression: str | None = None) -> AsyncIterator[str]:
    port = free_port()
    async with serve(handler, "127.0.0.1", port, compression=compression):
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

    async with platform(peer.handle, compression) as url:
        config = ConnectorConfig(url=url, state_dir=tmp_path, request_timeout=5)
        async with Connector(config) as connector:
            await connector.register([DEVICE])
            await connector.wait_ready(10)
            # One event first: until an event of a (type, service) had its 200, only a few
            # go at once (the error budget, issue [13]).
            await connector.send_event(DEVICE, "sepl_get", '{"n":-1}', "{}")
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
            assert connector.stats.events_acked == 21
            assert connector.stats.unmatched_answers == 1
            assert connector.stats.malformed_frames == 1  # the binary frame
            assert connector.ready
    # The client offers no compression: the frames pass as written, whatever the server.
    assert peer.offered_extensions == [None]


@pytest.mark.anyio
async def test_a_close_from_the_peer_ends_the_session_and_it_reconnects(tmp_path: Path) -> None:
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

    async with platform(handle) as url:
        config = ConnectorConfig(url=url, state_dir=tmp_path, reconnect_min=0.05)
        async with Connector(config) as connector:
            await connector.register([DEVICE])
            with anyio.fail_after(10):
                await closed.wait()
                while sessions < 2 or not connector.ready:
                    await anyio.sleep(0.01)
            await connector.send_event(DEVICE, "sepl_get", "{}", "{}")
            assert connector.stats.connects == 2
            assert "going away" in connector.last_error


@pytest.mark.anyio
async def test_text_binary_fragments_and_pings_on_the_bare_websocket() -> None:
    received: list[Any] = []

    async def handle(ws: ServerConnection) -> None:
        await ws.send("first")  # may come in the same read as the handshake answer
        await ws.send(["frag", "mented"])
        await ws.send("é" * 70_000)  # a 64-bit length
        async for message in ws:
            received.append(message)
            await ws.send(f"echo {len(message)}")

    async with platform(handle) as url:
        websocket = await WebSocket.connect(url, ssl_context=None, open_timeout=5, max_size=2**20)
        got: list[str] = []
        with anyio.fail_after(10):
            while len(got) < 3:
                got += await websocket.receive()
            assert got == ["first", "fragmented", "é" * 70_000]
            async with anyio.create_task_group() as tg:
                tg.start_soon(websocket.receive)  # the reader takes the pong
                assert await websocket.ping(5)
                tg.cancel_scope.cancel()
            await websocket.send_texts(["a", "bb", "x" * 70_000])
            echoes: list[str] = []
            while len(echoes) < 3:
                echoes += await websocket.receive()
        assert received == ["a", "bb", "x" * 70_000]
        assert echoes == ["echo 1", "echo 2", "echo 70000"]
        await websocket.close()
        assert not websocket.open


@pytest.mark.anyio
async def test_a_peer_that_stops_answering_pings_is_a_dead_link(tmp_path: Path) -> None:
    done = anyio.Event()

    async def handle(ws: ServerConnection) -> None:
        json.loads(await ws.recv())
        # The hash of no devices: ready at once, without a sync.
        answer = {"gid": "gw-1", "hash": EMPTY_GATEWAY_HASH}
        await ws.send(encode_response(200, "credentials", answer))
        ws.transport.pause_reading()  # a frozen peer: pings stay unanswered
        with anyio.move_on_after(10):
            await done.wait()
        ws.transport.abort()

    async with platform(handle) as url:
        config = ConnectorConfig(
            url=url, state_dir=tmp_path, ping_interval=0.2, ping_timeout=0.3, reconnect_min=5
        )
        async with Connector(config) as connector:
            with anyio.fail_after(10):
                await connector.wait_ready()
                while connector.ready:
                    await anyio.sleep(0.02)
            with anyio.fail_after(5):
                while not connector.last_error:
                    await anyio.sleep(0.02)
            assert connector.last_error == "no pong within 0.3 s"
        done.set()


@pytest.mark.anyio
async def test_a_server_that_is_no_websocket_is_refused_cleanly() -> None:
    async def http(stream: Any) -> None:
        await stream.receive()
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await stream.aclose()

    port = free_port()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, http)
        with pytest.raises(Exception) as caught:
            await WebSocket.connect(
                f"ws://127.0.0.1:{port}/", ssl_context=None, open_timeout=5, max_size=1024
            )
        tg.cancel_scope.cancel()
    assert not isinstance(caught.value, LinkClosed)
    assert "200" in str(caught.value)
