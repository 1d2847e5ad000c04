"""Raw HTTP over anyio sockets for the local API's tests: a request with any Host header
(or none), and a flood of slow connections that reopen as soon as they are closed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import SocketStream

Answer = tuple[int, dict[str, str], bytes]
# A request head that never ends: its header value grows by a byte at a time.
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


async def read_answer(stream: SocketStream) -> Answer:
    """One whole answer (its body by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        body += await stream.receive()
    return int(lines[0].split()[1]), headers, body


async def request(port: int, path: str, host: str | None, *, token: str | None = None) -> Answer:
    """GET `path` on a new connection with `Host: host`; with host None, as HTTP/1.0
    without a Host header, as old tools send it."""
    lines = [f"GET {path} HTTP/1.1" if host is not None else f"GET {path} HTTP/1.0"]
    if host is not None:
        lines.append(f"Host: {host}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append("Connection: close")
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return await read_answer(stream)


@dataclass
class Flood:
    """`size` connections to 127.0.0.1:`port`, half silent, half trickling a never-ending
    head a byte every `trickle` seconds; each one the server closes (or answers) is
    reopened at once, as an attacker keeping the server's slots taken would."""

    port: int
    size: int
    trickle: float = 0.2
    local_host: str | None = None  # the address it comes from (any of 127.0.0.0/8 on Linux)
    opened: int = 0
    closed: int = 0  # by the server: timed out, pushed out, or refused with an answer

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Flood]:
        async with anyio.create_task_group() as tg:
            for index in range(self.size):
                tg.start_soon(self._client, index % 2 == 1)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def wait_closed(self, count: int, timeout: float) -> None:
        """Poll until the server has closed `count` of the flood's connections in all."""
        with anyio.fail_after(timeout):
            while self.closed < count:
                await anyio.sleep(0.02)

    async def _client(self, trickling: bool) -> None:
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", self.port, local_host=self.local_host)
            except OSError:
                await anyio.sleep(0.01)  # the backlog is full for a moment
                continue
            self.opened += 1
            async with stream:
                await self._hold(stream, trickling)
            self.closed += 1

    async def _hold(self, stream: SocketStream, trickling: bool) -> None:
        """Until the server closes the connection."""
        sent = 0
        try:
            while True:
                with anyio.move_on_after(self.trickle if trickling else 3600):
                    await stream.receive()  # an answer (408, 503): read on until closed
                    continue
                chunk = SLOW_HEAD[sent : sent + 1] if sent < len(SLOW_HEAD) else b"a"
                await stream.send(chunk)
                sent += 1
        except CLOSED:
            return


async def _flood_forever(port: int, size: int, report: Path) -> None:
    """Flood until cancelled, writing how many connections the server closed to `report`."""
    flood = Flood(port, size)
    async with flood.running():
        while True:
            report.write_text(str(flood.closed), encoding="utf-8")
            await anyio.sleep(0.05)


if __name__ == "__main__":
    # `python -m tests.slowclients PORT SIZE REPORT`: a flood from a process of its own, as
    # an attacker's would be, until terminated.
    import sys

    anyio.run(_flood_forever, int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
