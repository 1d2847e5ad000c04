"""A lightweight acknowledging SEPL platform for the benchmarks (issue [6]).

`python -m bench.sink --port N [--state FILE]` listens on 127.0.0.1:N and speaks only what
the throughput measurements need of the envelope dialect (protocol Part 2 §2.6-2.9): the
credentials handshake (answered `{"gid": ..., "hash": ...}`), and 200 "ok" to clear, put,
disconnect, delete, commit, event and response. The one check it makes, as the platform
does, is that an event's device was put (or restored from the last commit) in this
session; otherwise it answers 400 "not listen to this device".

Every event's data part is searched for the load generator's mark `"Seq":<n>,"PubT":<t>`:
the sequence number finds duplicates, the publish time gives the publish-to-platform
latency (both processes on one machine, one clock).

Control: a websocket on path `/control` takes JSON requests and answers JSON:
  {"op": "stats", "latency": true}   counters, first/last event times, latency summary
  {"op": "reset"}                    zero the counters (gateways and sessions stay)
  {"op": "commands", "count": 1000, "devices": [...], "services": ["on", "off"],
   "timeout_each": 10}               send commands one at a time on the newest session and
                                     time each until the adapter's response frame arrives

`python -m bench.sink probe --port N --count 100000` is the trivial client that measures
the sink alone: it pipelines pre-built event frames with a window and prints the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from adapter.sepl.envelope import (
    ProtocolError,
    decode_credentials,
    encode_command,
    encode_response,
)
from adapter.sepl.messages import build_command

HOST = "127.0.0.1"
MARK = re.compile(r'"Seq":(\d+),"PubT":(\d+(?:\.\d+)?)')
NOT_LISTENING = "error event: not listen to this device"
MAX_FRAME = 64 * 1024 * 1024
FLUSH_EVERY = 64  # answers held back at most before a write


def ok_frame(token: str) -> str:
    # encode_response(200, token, "ok") without the generic serialiser: this is the hot path.
    return (
        '{"status":200,"handler":"response","token":'
        + json.dumps(token)
        + ',"content_type":"string","payload":"ok"}'
    )


def percentiles(values: list[float]) -> dict[str, float | int]:
    """p50/p90/p99/max (same unit as the values) of a sample, by nearest rank."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, round(p * n + 0.5) - 1))]

    return {
        "n": n,
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / n,
    }


@dataclass
class Gateway:
    hash: str = ""
    devices: list[str] = field(default_factory=list)


@dataclass
class Session:
    ws: ServerConnection
    gid: str
    attached: set[str]
    opened: float = field(default_factory=time.time)


@dataclass
class Counters:
    events: int = 0  # answered 200
    unique: int = 0  # distinct sequence numbers among them
    duplicates: int = 0
    unmarked: int = 0  # events without the load generator's mark
    rejected: int = 0  # answered 400: device not put in this session
    puts: int = 0
    clears: int = 0
    commits: int = 0
    responses: int = 0  # command responses
    other: int = 0
    malformed: int = 0
    first: float | None = None
    last: float | None = None
    max_seq: int = -1


async def flush(ws: ServerConnection) -> None:
    """Write what the protocol holds in one go (websockets writes each frame separately)."""
    chunks = ws.protocol.data_to_send()
    data = b"".join(chunks)
    if data:
        ws.transport.write(data)
    if any(not chunk for chunk in chunks) and ws.transport.can_write_eof():
        ws.transport.write_eof()  # the protocol asked for a half-close (closing handshake)
    await ws.drain()


class Sink:
    def __init__(self, state_file: Path | None = None) -> None:
        self.state_file = state_file
        self.gateways: dict[str, Gateway] = self._load()
        self.sessions: list[Session] = []
        self.sessions_opened = 0
        self.c = Counters()
        self.seen = bytearray(1 << 20)
        self.latencies: list[float] = []  # seconds, publish to receive
        self.pending: dict[str, asyncio.Future[tuple[float, Any]]] = {}

    # --- state ---------------------------------------------------------------------------

    def _load(self) -> dict[str, Gateway]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        raw = json.loads(self.state_file.read_text(encoding="utf-8"))
        return {gid: Gateway(g["hash"], list(g["devices"])) for gid, g in raw.items()}

    def _save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {gid: {"hash": g.hash, "devices": g.devices} for gid, g in self.gateways.items()}
            )
        )
        tmp.replace(self.state_file)

    def reset(self) -> None:
        self.c = Counters()
        self.seen = bytearray(1 << 20)
        self.latencies = []

    # --- the connector protocol ----------------------------------------------------------

    async def connector(self, ws: ServerConnection) -> None:
        try:
            first = await asyncio.wait_for(ws.recv(), 40)
            creds = decode_credentials(first)
        except (TimeoutError, ConnectionClosed, ProtocolError):
            return  # as the platform does: close without an answer
        gid = creds.gid or f"bench-gw-{uuid.uuid4().hex[:12]}"
        gateway = self.gateways.setdefault(gid, Gateway())
        session = Session(ws, gid, set(gateway.devices))
        await ws.send(encode_response(200, creds.token, {"gid": gid, "hash": gateway.hash}))
        self.sessions.append(session)
        self.sessions_opened += 1
        handle = self.handle
        backlog = ws.recv_messages.frames  # frames received and not yet read
        queued = 0
        try:
            async for frame in ws:
                answer = handle(session, frame)
                if answer is not None:
                    # Answers to a burst of frames leave in one socket write instead of one
                    # each (the write is most of the sink's cost per event): queued in the
                    # protocol, flushed when no received frame is waiting any more.
                    ws.protocol.send_text(answer.encode())
                    queued += 1
                if queued and (not len(backlog) or queued >= FLUSH_EVERY):
                    queued = 0
                    await flush(ws)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.remove(session)

    def handle(self, session: Session, frame: str | bytes) -> str | None:
        c = self.c
        try:
            obj = json.loads(frame)
            handler = obj["handler"]
            token = obj["token"]
        except (ValueError, KeyError, TypeError):
            c.malformed += 1
            return None
        payload = obj.get("payload")
        if handler == "event":
            try:
                uri = payload["device_uri"]
                parts = payload["value"]
            except (TypeError, KeyError):
                c.malformed += 1
                return encode_response(400, token, "malformed event")
            if uri not in session.attached:
                c.rejected += 1
                return encode_response(400, token, f"{NOT_LISTENING} {{{uri}}}")
            now = time.time()
            c.events += 1
            if c.first is None:
                c.first = now
            c.last = now
            data = ""
            for part in parts:
                if part.get("name") == "data":
                    data = part.get("value") or ""
            mark = MARK.search(data)
            if mark is None:
                c.unmarked += 1
            else:
                seq = int(mark.group(1))
                self.latencies.append(now - float(mark.group(2)))
                seen = self.seen
                if seq >= len(seen):
                    seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
                if seen[seq]:
                    c.duplicates += 1
                else:
                    seen[seq] = 1
                    c.unique += 1
                    if seq > c.max_seq:
                        c.max_seq = seq
            return ok_frame(token)
        if handler == "put":
            if isinstance(payload, dict) and isinstance(payload.get("uri"), str):
                session.attached.add(payload["uri"])
                c.puts += 1
                return ok_frame(token)
            return encode_response(400, token, "put payload must be a device")
        if handler == "response":
            c.responses += 1
            task = payload.get("task_id") if isinstance(payload, dict) else None
            waiter = self.pending.pop(task, None) if isinstance(task, str) else None
            if waiter is not None and not waiter.done():
                waiter.set_result((time.perf_counter(), payload))
            return ok_frame(token)
        if handler == "commit":
            c.commits += 1
            gateway = self.gateways.setdefault(session.gid, Gateway())
            gateway.hash = payload if isinstance(payload, str) else ""
            gateway.devices = sorted(session.attached)
            self._save()
            return ok_frame(token)
        if handler == "clear":
            c.clears += 1
            session.attached.clear()
            self.gateways[session.gid] = Gateway()
            return ok_frame(token)
        if handler in ("disconnect", "delete"):
            c.other += 1
            if isinstance(payload, str):
                session.attached.discard(payload)
            return ok_frame(token)
        c.other += 1
        return encode_response(400, token, f"unknown handler {handler!r}")

    # --- control -------------------------------------------------------------------------

    def stats(self, latency: bool) -> dict[str, Any]:
        c = self.c
        body: dict[str, Any] = {
            **c.__dict__,
            "sessions": len(self.sessions),
            "sessions_opened": self.sessions_opened,
            "attached": len(self.sessions[-1].attached) if self.sessions else 0,
            "now": time.time(),
        }
        if latency:
            body["latency_ms"] = percentiles([x * 1000 for x in self.latencies])
        return body

    async def commands(self, request: dict[str, Any]) -> dict[str, Any]:
        count = int(request.get("count", 1000))
        devices = [str(d) for d in request["devices"]]
        services = [str(s) for s in request.get("services", ["on", "off"])]
        timeout = float(request.get("timeout_each", 10.0))
        if not self.sessions:
            return {"error": "no connector session"}
        session = self.sessions[-1]
        loop = asyncio.get_running_loop()
        rtts: list[float] = []
        timeouts = errors = 0
        samples: list[str] = []
        for i in range(count):
            device = devices[i % len(devices)]
            task_id = f"bench-{i}-{uuid.uuid4().hex[:8]}"
            command = build_command(
                device_uri=device,
                service_uri=services[i % len(services)],
                data=None,
                task_id=task_id,
                device_instance_id=f"iot#{device}",
                time=int(time.time()),
            )
            waiter: asyncio.Future[tuple[float, Any]] = loop.create_future()
            self.pending[task_id] = waiter
            began = time.perf_counter()
            try:
                await session.ws.send(encode_command(command))
                answered, payload = await asyncio.wait_for(waiter, timeout)
            except (TimeoutError, ConnectionClosed):
                self.pending.pop(task_id, None)
                timeouts += 1
                continue
            rtts.append((answered - began) * 1000)
            data = ""
            for part in payload.get("protocol_parts") or []:
                if isinstance(part, dict) and part.get("name") == "data":
                    data = str(part.get("value") or "")
            if '"error"' in data or "POWER" not in data:
                errors += 1
                if len(samples) < 5:
                    samples.append(data[:200])
        return {
            "count": count,
            "answered": len(rtts),
            "timeouts": timeouts,
            "errors": errors,
            "error_samples": samples,
            "rtt_ms": percentiles(rtts),
        }

    async def control(self, ws: ServerConnection) -> None:
        async for message in ws:
            request = json.loads(message)
            op = request.get("op")
            answer: dict[str, Any]
            if op == "stats":
                answer = self.stats(bool(request.get("latency")))
            elif op == "reset":
                self.reset()
                answer = {"ok": True}
            elif op == "commands":
                answer = await self.commands(request)
            else:
                answer = {"error": f"unknown op {op!r}"}
            await ws.send(json.dumps(answer))

    async def route(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        if path.startswith("/control"):
            await self.control(ws)
        else:
            await self.connector(ws)


async def serve_forever(port: int, state_file: Path | None) -> None:
    sink = Sink(state_file)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        sink.route,
        HOST,
        port,
        compression=None,
        max_size=MAX_FRAME,
        max_queue=256,
        ping_interval=20,
        ping_timeout=20,
    ):
        print(f"sink listening on ws://{HOST}:{port}/", flush=True)
        await stop


# --- the trivial client that measures the sink alone ---------------------------------------


def probe_frame(seq: int, uri: str) -> str:
    data = (
        '{"Time":"2026-11-23T21:00:00","ENERGY":{"TotalStartTime":"2024-01-01T00:00:00",'
        '"Total":123.456,"Yesterday":1.234,"Today":0.567,"Period":3,"Power":245,'
        '"ApparentPower":260,"ReactivePower":87,"Factor":0.94,"Voltage":229,"Current":1.135},'
        f'"Seq":{seq},"PubT":{time.time():.6f}}}'
    )
    metadata = json.dumps({"time": "2026-11-23T21:00:00.000Z", "topic": "tele/probe/SENSOR"})
    payload = {
        "device_uri": uri,
        "service_uri": "sepl_get",
        "value": [{"name": "metadata", "value": metadata}, {"name": "data", "value": data}],
    }
    return json.dumps(
        {
            "status": 0,
            "handler": "event",
            "token": str(uuid.uuid4()),
            "content_type": "",
            "payload": payload,
        }
    )


async def probe(port: int, count: int, window: int) -> dict[str, Any]:
    uri = "probe:device"
    frames = [probe_frame(i, uri) for i in range(count)]
    async with connect(
        f"ws://{HOST}:{port}/", compression=None, max_size=MAX_FRAME, proxy=None
    ) as ws:
        await ws.send(json.dumps({"user": "", "pw": "", "gid": "", "token": "credentials"}))
        await ws.recv()
        put = {"uri": uri, "name": "probe", "iot_type": "iot#probe", "tags": []}
        await ws.send(
            json.dumps(
                {"status": 0, "handler": "put", "token": "put", "content_type": "", "payload": put}
            )
        )
        await ws.recv()
        slots = asyncio.Semaphore(window)
        answered = 0
        failed = 0

        async def reader() -> None:
            nonlocal answered, failed
            async for message in ws:
                answered += 1
                if '"status":200' not in str(message)[:20]:
                    failed += 1
                slots.release()
                if answered == count:
                    return

        began = time.perf_counter()
        task = asyncio.create_task(reader())
        for frame in frames:
            await slots.acquire()
            await ws.send(frame)
        await asyncio.wait_for(task, 120)
        seconds = time.perf_counter() - began
    return {
        "events": answered,
        "failed": failed,
        "seconds": round(seconds, 3),
        "rate": round(answered / seconds),
        "window": window,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("mode", nargs="?", choices=("serve", "probe"), default="serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, help="gateways (gid, hash, devices) across restarts")
    parser.add_argument("--count", type=int, default=100_000, help="probe: events to send")
    parser.add_argument("--window", type=int, default=256, help="probe: events in flight")
    args = parser.parse_args(argv)
    if args.mode == "probe":
        print(json.dumps(asyncio.run(probe(args.port, args.count, args.window))), flush=True)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.port, args.state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
