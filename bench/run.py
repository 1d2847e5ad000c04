"""`make bench`: the adapter against a naive forwarder, real processes, one run (issue [6]).

Every scenario starts its own Mosquitto (sepl_dev/broker.py, quiet log) and its own
acknowledging sink (bench/sink.py) on free loopback ports, then the adapter
(`python -m adapter run`, a temporary state directory, only the Tasmota mapping file) or
the naive forwarder (bench/naive.py), and drives it with bench/loadgen.py. The adapter's
CPU seconds come from /proc/<pid>/stat (utime + stime), its peak RSS from VmHWM in
/proc/<pid>/status; latency is the sink's receive time minus the publish time carried in
the payload.

Scenarios (issue [6]): 0 the sink alone with a trivial client (its capacity), 1+2
throughput at QoS 0 and 1 against the naive forwarder (after a warm-up message per device,
so first-seen registration is timed apart), 3 latency at a steady 1,000/s and at 100/s, and
at 1,000/s with a flat-out publisher to an unrelated topic sharing the cores,
4 commands answered by `adapter simulate` devices, 5 scale (start-up and RSS with the
bundled mappings and 10,000 devices), 6 recovery after a platform outage, 7 history (bench.history)
plus bench.match. Each throughput run waits at most `--drain-cap` s for its events, so a
slow forwarder bounds the run; it then reports the rate over what arrived and the rest as
not in (loss unknown). `--quick` scales the counts down for a smoke run; `--profile` adds
two py-spy recordings of the adapter under the QoS 1 load (not used for the figures). A
table is printed and JSON written to bench/results/run-<time>.json. Other work on the
machine shows in the figures: the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from websockets.sync.client import ClientConnection, connect

from adapter.sepl.device import Device, gateway_hash
from sepl_dev.broker import Broker, child_preexec, free_port, port_accepts, stop_process
from sepl_dev.nats import ADAPTER_USER, DEVICE_USER, HA_USER, NatsCluster

REPO = Path(__file__).resolve().parents[1]
# Where the adapter under test runs from: this checkout, or another one (--adapter-tree,
# e.g. an older revision, measured with this revision's harness, naive forwarder and sink).
ADAPTER_TREE = REPO
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class BenchError(RuntimeError):
    """A scenario could not be measured (a process died, a wait timed out)."""


class OutOfTime(BaseException):
    """The whole run went over its time budget (--max-minutes)."""


# --- settings ------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool = False
    devices: int = 2000  # throughput and latency
    count: int = 100_000  # throughput messages
    workers: int = 2  # load generator processes
    latency_rate: float = 1000.0
    latency_devices: int = 200  # fewer than for throughput: each new device costs a warm-up
    latency_seconds: float = 30.0
    latency_low_rate: float = 100.0  # a rate every forwarder sustains: the pipeline's own delay
    latency_low_seconds: float = 10.0
    drain_cap: float = 60.0  # s a throughput run waits for the events before it is cut short
    commands: int = 1000
    command_devices: int = 10
    scale_devices: int = 10_000
    recovery_count: int = 100_000
    probe_count: int = 100_000
    profile: bool = False
    profile_seconds: float = 20.0
    repeat: int = 3  # throughput runs per forwarder and QoS (the median is reported)
    fleet_count: int = 10_000  # messages of each fleet run (one instance, then two)
    fleet_rate: float = 0.0  # their rate (0: flat out)
    scenarios: list[str] = field(default_factory=list)

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            quick=True,
            devices=500,
            count=20_000,
            latency_seconds=10.0,
            latency_low_seconds=5.0,
            drain_cap=45.0,
            latency_devices=100,
            commands=200,
            scale_devices=2000,
            recovery_count=20_000,
            probe_count=20_000,
            profile_seconds=8.0,
            repeat=1,
            fleet_count=3_000,
        )


ALL_SCENARIOS = [
    "sink",
    "throughput",
    "latency",
    "commands",
    "scale",
    "recovery",
    "history",
    "fleet",
]


# --- processes ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS in MB, and the thread count."""
    result: dict[str, float] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return result
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            result[key] = round(int(value.split()[0]) / 1024, 1)
        elif key == "Threads":
            result["threads"] = int(value)
    return result


def machine_busy() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic() just before the spawn

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, needle: str, timeout: float) -> float:
        """Seconds from the spawn until `needle` appeared in the log."""

        def seen() -> bool:
            if not self.alive():
                raise BenchError(f"{self.name} exited early:\n{self.text()[-2000:]}")
            return needle in self.text()

        wait_until(seen, timeout, f"{needle!r} in the {self.name} log", interval=0.005)
        return time.monotonic() - self.started


class SinkHandle:
    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/"
        self._control: ClientConnection | None = None
        self._exit = contextlib.ExitStack()

    def control(self) -> ClientConnection:
        if self._control is None:
            # Entered as a context manager (websockets 17 deprecates the bare call).
            self._control = self._exit.enter_context(
                connect(f"ws://127.0.0.1:{self.port}/control", max_size=None, proxy=None)
            )
        return self._control

    def call(self, op: str, timeout: float = 30.0, **kw: Any) -> dict[str, Any]:
        ws = self.control()
        ws.send(json.dumps({"op": op, **kw}))
        answer: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
        return answer

    def stats(self, latency: bool = False) -> dict[str, Any]:
        return self.call("stats", latency=latency)

    def close(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._exit.close()
            self._control = None


class Stack:
    """The processes of one scenario; everything is stopped when the block ends."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.children: list[Child] = []
        self.brokers: list[Broker] = []
        self.sinks: list[SinkHandle] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sink in self.sinks:
            sink.close()
        for child in reversed(self.children):
            stop_process(child.process, timeout=10.0)
        for broker in self.brokers:
            broker.stop()

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        log: str = "",
        cwd: Path = REPO,
    ) -> Child:
        path = self.dir / (log or f"{name}.log")
        with path.open("ab") as out:
            started = time.monotonic()
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        child = Child(name, process, path, started)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        stop_process(child.process, timeout=10.0)

    def broker(self) -> Broker:
        broker = Broker(self.dir / "broker", log_type="error").start()
        self.brokers.append(broker)
        return broker

    def sink(self, port: int | None = None, state: Path | None = None) -> SinkHandle:
        port = port or free_port()
        argv = [PY, "-m", "bench.sink", "--port", str(port)]
        if state is not None:
            argv += ["--state", str(state)]
        child = self.spawn("sink", argv)

        def listening() -> bool:
            if not child.alive():
                raise BenchError(f"the sink exited:\n{child.text()[-2000:]}")
            return port_accepts(port)

        wait_until(listening, 10, "the sink to listen")
        handle = SinkHandle(child, port)
        self.sinks.append(handle)
        return handle

    def adapter(
        self,
        broker: Broker | int,
        sink: SinkHandle,
        mappings: Path,
        state: Path | None = None,
        env: dict[str, str] | None = None,
        log: str = "",
    ) -> Child:
        state = state or self.dir / "adapter-state"
        return self.spawn(
            "adapter",
            [PY, "-m", "adapter", "run"],
            log=log,
            cwd=ADAPTER_TREE,
            env={
                "PYTHONPATH": str(ADAPTER_TREE),
                "MQTT_HOST": "127.0.0.1",
                "MQTT_PORT": str(broker if isinstance(broker, int) else broker.port),
                "CONNECTOR_URL": sink.url,
                "ADAPTER_STATE_DIR": str(state),
                "MAPPINGS_DIR": str(mappings),
                "ADAPTER_HTTP": "off",
                "RECONNECT_MIN": "200ms",
                "RECONNECT_MAX": "2s",
                "LOGLEVEL": "info",
                **(env or {}),
            },
        )

    def naive(self, broker: Broker, sink: SinkHandle, qos: int = 1) -> Child:
        child = self.spawn(
            "naive",
            [
                *(PY, "-m", "bench.naive", "--mqtt-port", str(broker.port)),
                *("--url", sink.url, "--qos", str(qos)),
            ],
        )
        child.wait_log("naive ready", 20)
        return child


def loadgen(
    stack: Stack,
    broker: Broker | int,
    *,
    count: int,
    devices: int,
    qos: int = 1,
    rate: float = 0.0,
    workers: int = 2,
    seq_start: int = 0,
    topic: str | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    port = broker if isinstance(broker, int) else broker.port
    argv = [
        *(PY, "-m", "bench.loadgen", "--port", str(port)),
        *("--count", str(count), "--devices", str(devices), "--qos", str(qos)),
        *("--rate", str(rate), "--workers", str(workers), "--seq-start", str(seq_start)),
        *("--max-seconds", str(timeout)),
    ]
    if topic:
        argv += ["--topic", topic]
    child = stack.spawn("loadgen", argv, env=env, log=f"loadgen-{len(stack.children)}.log")
    try:
        child.process.wait(timeout + 60)
    except subprocess.TimeoutExpired:
        stop_process(child.process)
        raise BenchError("the load generator did not finish") from None
    lines = child.text().strip().splitlines()
    try:
        summary: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(f"load generator failed:\n{child.text()[-2000:]}") from None
    return summary


def wait_events(
    sink: SinkHandle,
    target: int,
    timeout: float,
    stall: float = 30.0,
    watch: Child | None = None,
) -> dict[str, Any]:
    """Poll the sink until `target` distinct events arrived, or nothing new for `stall` s."""
    deadline = time.monotonic() + timeout
    last_unique, last_change = -1, time.monotonic()
    while True:
        stats = sink.stats()
        now = time.monotonic()
        if stats["unique"] != last_unique:
            last_unique, last_change = stats["unique"], now
        if stats["unique"] >= target:
            time.sleep(0.5)  # late duplicates
            return sink.stats(latency=True)
        if now > deadline or now - last_change > stall:
            final = sink.stats(latency=True)
            final["incomplete"] = f"{final['unique']} of {target} after {now - last_change:.0f} s"
            return final
        if watch is not None and not watch.alive():
            raise BenchError(f"{watch.name} died:\n{watch.text()[-2000:]}")
        time.sleep(0.2)


def problems(child: Child, limit: int = 5) -> dict[str, Any]:
    """WARNING/ERROR lines and tracebacks in a child's log: anything that looked wrong."""
    lines = [
        line
        for line in child.text().splitlines()
        if any(mark in line for mark in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
    ]
    return {"count": len(lines), "first": [line[:300] for line in lines[:limit]]}


def tasmota_mappings(root: Path) -> Path:
    directory = root / "mappings-tasmota"
    if not directory.exists():
        directory.mkdir(parents=True)
        shutil.copy(ADAPTER_TREE / "mappings" / "tasmota.yaml", directory / "tasmota.yaml")
    return directory


# --- scenario 0: the sink alone ------------------------------------------------------------


def scenario_sink(root: Path, s: Settings) -> dict[str, Any]:
    with Stack(root, "sink-capacity") as stack:
        sink = stack.sink()
        result: dict[str, Any] = {}
        for window in (256, 32):
            probe = stack.spawn(
                f"probe-{window}",
                [
                    *(PY, "-m", "bench.sink", "probe", "--port", str(sink.port)),
                    *("--count", str(s.probe_count), "--window", str(window)),
                ],
            )
            cpu0 = cpu_seconds(sink.child.pid)
            probe.process.wait(180)
            cpu = cpu_seconds(sink.child.pid) - cpu0
            out = json.loads(probe.text().strip().splitlines()[-1])
            out["sink_cpu_s_per_10k"] = round(cpu / out["events"] * 10_000, 3)
            result[f"window_{window}"] = out
        return result


# --- scenarios 1 and 2: throughput, adapter and naive ----------------------------------------


def throughput_run(
    root: Path,
    s: Settings,
    impl: str,
    qos: int,
    *,
    count: int,
    rate: float = 0.0,
    workers: int | None = None,
    name: str = "",
    profile_to: Path | None = None,
    profile_flags: tuple[str, ...] = (),
    cap: float | None = None,
    devices: int = 0,
    noise: bool = False,
) -> dict[str, Any]:
    """Warm up (one message per device, so every device is known), then `count` messages.
    With `noise`, a second publisher sends flat out to a topic nobody subscribes to while
    the messages are measured: it shares the cores (and the broker) with the forwarder."""
    devices = devices or s.devices
    with Stack(root, name or f"throughput-{impl}-qos{qos}") as stack:
        broker = stack.broker()
        sink = stack.sink()
        if impl == "adapter":
            fwd = stack.adapter(broker, sink, tasmota_mappings(root))
            fwd.wait_log("broker confirmed", 30)
            fwd.wait_log("connector ready", 30)
        else:
            fwd = stack.naive(broker, sink, qos=1)
        began = time.monotonic()
        warm = loadgen(stack, broker, count=devices, devices=devices, qos=1, workers=1)
        warmed = wait_events(sink, devices, timeout=600, watch=fwd)
        warm_s = time.monotonic() - began
        if warmed.get("incomplete"):
            raise BenchError(f"warm-up incomplete: {warmed['incomplete']}")
        time.sleep(0.5)
        sink.call("reset")
        spy = None
        if profile_to is not None:
            spy = start_profiler(stack, fwd.pid, profile_to, s.profile_seconds, profile_flags)
        noisy = None
        if noise:
            seconds = count / rate + 30 if rate else 120.0
            noisy = stack.spawn(
                "noise",
                [
                    *(PY, "-m", "bench.loadgen", "--port", str(broker.port)),
                    *("--count", "100000000", "--devices", "100", "--qos", "1"),
                    *("--workers", "1", "--topic", "bench-noise/{n:05d}/data"),
                    *("--max-seconds", str(seconds)),
                ],
            )
            time.sleep(1.0)  # at full speed before the measured messages start
        cpu0 = cpu_seconds(fwd.pid)
        sink_cpu0 = cpu_seconds(sink.child.pid)
        broker_cpu0 = cpu_seconds(broker.pid or 0)
        busy0 = machine_busy()
        wall0 = time.monotonic()
        lg = loadgen(
            stack,
            broker,
            count=count,
            devices=devices,
            qos=qos,
            rate=rate,
            workers=workers or s.workers,
            seq_start=0,
            timeout=max(120.0, count / rate * 2 if rate else 120.0),
        )
        cap = max(10.0, (cap or s.drain_cap) - (time.monotonic() - wall0))
        final = wait_events(sink, count, timeout=cap, stall=30.0, watch=fwd)
        wall = time.monotonic() - wall0
        if noisy is not None:
            stop_process(noisy.process)
        cpu = cpu_seconds(fwd.pid) - cpu0
        busy = machine_busy() - busy0
        mem = memory(fwd.pid)
        if spy is not None:
            spy.process.wait(s.profile_seconds + 60)
        unique, last = final["unique"], final["last"]
        return {
            "messages": count,
            "devices": devices,
            "qos": qos,
            "target_rate": rate or "flat out",
            "warmup_s": round(warm_s, 2),
            "warmup_publish": warm["rate"],
            "publish_rate": lg["rate"],
            "publish_errors": lg["errors"],
            "received_unique": unique,
            "events": final["events"],
            # Not all in within the cap: the rest is still queued (broker or outbox), so
            # loss cannot be told; the rate over what arrived stands.
            "lost": None if final.get("incomplete") else count - unique,
            "unreceived_at_end": count - unique,
            "duplicates": final["duplicates"],
            "rejected": final["rejected"],
            "incomplete": final.get("incomplete"),
            "rate": arrival_rate(final),
            "end_to_end_s": round(last - lg["first"], 3) if last else None,
            # From the first publish: also counts a start-up stall before the first event.
            "end_to_end_rate": round(unique / (last - lg["first"])) if last else None,
            "cpu_s": round(cpu, 2),
            "cpu_s_per_10k": round(cpu / max(unique, 1) * 10_000, 3),
            "sink_cpu_s": round(cpu_seconds(sink.child.pid) - sink_cpu0, 2),
            "broker_cpu_s": round(cpu_seconds(broker.pid or 0) - broker_cpu0, 2),
            "machine_busy_cpu_s": round(busy, 2),
            "wall_s": round(wall, 2),
            "peak_rss_mb": mem.get("VmHWM"),
            "rss_mb": mem.get("VmRSS"),
            "threads": mem.get("threads"),
            "latency_ms": final.get("latency_ms"),
            "noise": noise,
            "log_problems": problems(fwd),
        }


def arrival_rate(final: dict[str, Any]) -> int | None:
    """Distinct events a second between the sink's first and last arrival."""
    first, last = final["first"], final["last"]
    span = (last - first) if first and last else 0.0
    return round(final["unique"] / span) if span > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 2)


def scenario_throughput(root: Path, s: Settings) -> dict[str, Any]:
    """Adapter and naive forwarder alternately, `s.repeat` times each: the machine is
    shared, and one pair of runs moved by a third either way. Each side's median run (by
    rate) is the one reported; every run's rate is kept."""
    result: dict[str, Any] = {}
    for qos in (0, 1):
        every: dict[str, list[dict[str, Any]]] = {"adapter": [], "naive": []}
        for i in range(s.repeat):
            for impl in ("adapter", "naive"):
                name = f"throughput-{impl}-qos{qos}-{i + 1}"
                every[impl].append(throughput_run(root, s, impl, qos, count=s.count, name=name))
        runs = {impl: median_run(done) for impl, done in every.items()}
        a, n = runs["adapter"], runs["naive"]
        result[f"qos{qos}"] = {
            **runs,
            "rates": {impl: [r["rate"] for r in done] for impl, done in every.items()},
            "ratio_rate": ratio(a["rate"], n["rate"]),
            "ratio_cpu_per_10k": ratio(a["cpu_s_per_10k"], n["cpu_s_per_10k"]),
            "ratio_peak_rss": ratio(a["peak_rss_mb"], n["peak_rss_mb"]),
        }
    return result


# --- scenario 3: latency at a steady rate ----------------------------------------------------


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["rate"] or 0)
    return ordered[(len(ordered) - 1) // 2]


def latency_pair(
    root: Path, s: Settings, rate: float, seconds: float, name: str, noise: bool = False
) -> dict[str, Any]:
    """The adapter and the naive forwarder at a steady `rate` for `seconds`."""
    runs = {
        impl: throughput_run(
            root,
            s,
            impl,
            1,
            count=int(rate * seconds),
            rate=rate,
            workers=1,
            name=f"{name}-{impl}",
            cap=max(s.drain_cap, seconds + 60),
            devices=s.latency_devices,
            noise=noise,
        )
        for impl in ("adapter", "naive")
    }
    a = runs["adapter"]["latency_ms"] or {}
    n = runs["naive"]["latency_ms"] or {}
    return {
        **runs,
        "rate": rate,
        "seconds": seconds,
        "ratio_p50": ratio(a.get("p50"), n.get("p50")),
        "ratio_p99": ratio(a.get("p99"), n.get("p99")),
    }


def scenario_latency(root: Path, s: Settings) -> dict[str, Any]:
    return {
        **latency_pair(root, s, s.latency_rate, s.latency_seconds, "latency"),
        "low": latency_pair(root, s, s.latency_low_rate, s.latency_low_seconds, "latency-low"),
        "loaded": latency_pair(
            root, s, s.latency_rate, s.latency_seconds, "latency-loaded", noise=True
        ),
    }


# --- scenario 4: commands --------------------------------------------------------------------


def command_run(root: Path, s: Settings, devices: str) -> dict[str, Any]:
    """`s.commands` commands one at a time from the sink, answered by `adapter simulate`
    (`devices="simulate"`, paho's defaults) or by bench.replier with TCP_NODELAY."""
    with Stack(root, f"commands-{devices}") as stack:
        broker = stack.broker()
        sink = stack.sink()
        adapter = stack.adapter(broker, sink, tasmota_mappings(root))
        adapter.wait_log("connector ready", 30)
        topics = [f"cmd{i:02d}" for i in range(s.command_devices)]
        if devices == "simulate":
            argv = [
                *(PY, "-m", "adapter", "simulate", "--mqtt-port", str(broker.port)),
                *("--devices", ",".join(topics), "--interval", "3600"),
            ]
        else:
            argv = [
                *(PY, "-m", "bench.replier", "--port", str(broker.port)),
                *("--devices", ",".join(topics), "--nodelay"),
            ]
        stack.spawn(devices, argv)
        wait_until(
            lambda: sink.stats()["attached"] >= len(topics),
            60,
            "the simulated devices to be put",
            interval=0.1,
        )
        time.sleep(1.0)
        cpu0 = cpu_seconds(adapter.pid)
        answer = sink.call(
            "commands",
            timeout=s.commands * 10 + 60,
            count=s.commands,
            devices=[f"tasmota:{t}" for t in topics],
            services=["on", "off"],
            timeout_each=10,
        )
        answer["adapter_cpu_s"] = round(cpu_seconds(adapter.pid) - cpu0, 2)
        answer["devices"] = len(topics)
        answer["device_side"] = devices
        answer["peak_rss_mb"] = memory(adapter.pid).get("VmHWM")
        answer["log_problems"] = problems(adapter)
        return answer


def scenario_commands(root: Path, s: Settings) -> dict[str, Any]:
    return {kind: command_run(root, s, kind) for kind in ("simulate", "nodelay")}


# --- scenario 5: scale -----------------------------------------------------------------------


def prefill(state: Path, devices: list[Device], gid: str) -> None:
    """An adapter state directory that already manages `devices` on gateway `gid`."""
    connector = state / "connector"
    connector.mkdir(parents=True)
    (connector / "gid").write_text(gid + "\n")
    rows = [
        {"uri": d.uri, "name": d.name, "type": d.device_type, "tags": [list(t) for t in d.tags]}
        for d in sorted(devices, key=lambda d: d.uri)
    ]
    (connector / "devices.json").write_text(json.dumps(rows, indent=1) + "\n")


def sink_state(path: Path, devices: list[Device], gid: str) -> Path:
    """The platform side of `prefill`: the gateway's committed hash and devices."""
    body = {gid: {"hash": gateway_hash(devices), "devices": sorted(d.uri for d in devices)}}
    path.write_text(json.dumps(body))
    return path


def scale_case(
    root: Path,
    name: str,
    mappings: Path,
    devices: list[Device],
    platform_knows: bool,
    topic: str | None,
    publish: int,
    restart: bool = False,
) -> dict[str, Any]:
    gid = "bench-gw-scale"
    with Stack(root, f"scale-{name}") as stack:
        broker = stack.broker()
        state = stack.dir / "adapter-state"
        sink_file = None
        if devices:
            prefill(state, devices, gid)
            if platform_knows:
                sink_file = sink_state(stack.dir / "sink-state.json", devices, gid)
        sink = stack.sink(state=sink_file)
        # The local API on, as by default: its server is part of the memory a user sees.
        api = {"ADAPTER_HTTP": f"127.0.0.1:{free_port()}"}
        adapter = stack.adapter(broker, sink, mappings, state=state, env=api)
        mqtt_s = adapter.wait_log("broker confirmed", 120)
        ready_s = adapter.wait_log("connector ready", 300)
        mem_ready = memory(adapter.pid)
        result: dict[str, Any] = {
            "devices": len(devices),
            "platform_knows_devices": platform_knows,
            "subscribed_s": round(mqtt_s, 3),
            "platform_ready_s": round(ready_s, 3),
            "startup_s": round(max(mqtt_s, ready_s), 3),
            "startup_cpu_s": round(cpu_seconds(adapter.pid), 2),
            "rss_ready_mb": mem_ready.get("VmRSS"),
            "puts": sink.stats()["puts"],
        }
        if publish and topic:
            cpu0 = cpu_seconds(adapter.pid)
            began = time.monotonic()
            lg = loadgen(stack, broker, count=publish, devices=publish, qos=1, topic=topic)
            final = wait_events(sink, publish, timeout=600, watch=adapter)
            mem = memory(adapter.pid)
            result.update(
                published=lg["published"],
                forwarded=final["unique"],
                incomplete=final.get("incomplete"),
                new_devices_put=final["puts"],
                forward_s=round(time.monotonic() - began, 2),
                forward_cpu_s=round(cpu_seconds(adapter.pid) - cpu0, 2),
                rss_after_mb=mem.get("VmRSS"),
            )
        result["peak_rss_mb"] = memory(adapter.pid).get("VmHWM")
        result["threads"] = memory(adapter.pid).get("threads")
        result["log_problems"] = problems(adapter)
        if restart:
            # The usual start: the same mapping files and state as the last run.
            stack.stop(adapter)
            again = stack.adapter(
                broker, sink, mappings, state=state, env=api, log="adapter-restart.log"
            )
            mqtt_s = again.wait_log("broker confirmed", 120)
            ready_s = again.wait_log("connector ready", 300)
            result.update(
                restart_startup_s=round(max(mqtt_s, ready_s), 3),
                restart_startup_cpu_s=round(cpu_seconds(again.pid), 2),
                restart_rss_mb=memory(again.pid).get("VmHWM"),
            )
        return result


def scenario_scale(root: Path, s: Settings) -> dict[str, Any]:
    """Start-up and memory with the bundled mappings: without devices, with `scale_devices`
    devices the platform already knows (a restart), and with a full re-sync of them."""
    bundled = ADAPTER_TREE / "mappings"
    n_dev = s.scale_devices
    plugs = [
        Device(
            f"tasmota:bench{i:05d}",
            f"Tasmota bench{i:05d}",
            "iot#tasmota-plug",
            (("vendor", "tasmota"),),
        )
        for i in range(n_dev)
    ]
    result: dict[str, Any] = {}
    result["baseline"] = scale_case(root, "baseline", bundled, [], False, None, 0)
    result["devices"] = scale_case(
        root, "devices", bundled, plugs, True, "tele/bench{n:05d}/SENSOR", n_dev, restart=True
    )
    result["devices_full_sync"] = scale_case(root, "devices-sync", bundled, plugs, False, None, 0)
    with Stack(root, "scale-naive") as stack:
        broker = stack.broker()
        sink = stack.sink()
        naive = stack.naive(broker, sink)
        result["naive_startup_s"] = round(time.monotonic() - naive.started, 3)
        result["naive_rss_mb"] = memory(naive.pid).get("VmRSS")
    result["devices_count"] = n_dev
    return result


# --- scenario 6: recovery --------------------------------------------------------------------


def outbox_depth(state: Path) -> int:
    path = state / "outbox.sqlite3"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def scenario_recovery(root: Path, s: Settings) -> dict[str, Any]:
    count = s.recovery_count
    with Stack(root, "recovery") as stack:
        broker = stack.broker()
        sink_state_file = stack.dir / "sink-state.json"
        sink = stack.sink(state=sink_state_file)
        state = stack.dir / "adapter-state"
        adapter = stack.adapter(broker, sink, tasmota_mappings(root), state=state)
        adapter.wait_log("connector ready", 30)
        loadgen(stack, broker, count=s.devices, devices=s.devices, qos=1, workers=1)
        warmed = wait_events(sink, s.devices, timeout=600, watch=adapter)
        if warmed.get("incomplete"):
            raise BenchError(f"warm-up incomplete: {warmed['incomplete']}")
        time.sleep(1.0)  # the debounced commit
        port = sink.port
        sink.close()
        stack.stop(sink.child)
        down = time.monotonic()
        cpu0 = cpu_seconds(adapter.pid)
        lg = loadgen(stack, broker, count=count, devices=s.devices, qos=1, seq_start=0)
        depth = wait_until(
            lambda: d if (d := outbox_depth(state)) >= count else None,
            max(120.0, count / 200),
            f"{count} events in the outbox",
            interval=0.25,
        )
        buffered_s = time.monotonic() - down
        buffer_cpu = cpu_seconds(adapter.pid) - cpu0
        mem_outage = memory(adapter.pid)
        time.sleep(1.0)
        cpu1 = cpu_seconds(adapter.pid)
        back = time.time()
        sink = stack.sink(port=port, state=sink_state_file)
        final = wait_events(sink, count, timeout=max(300.0, count / 200), watch=adapter)
        first, last = final["first"], final["last"]
        return {
            "messages": count,
            "devices": s.devices,
            "publish_rate": lg["rate"],
            "outbox_depth": depth,
            "buffered_s": round(buffered_s, 2),
            "buffer_rate": round(count / buffered_s),
            "buffer_cpu_s_per_10k": round(buffer_cpu / count * 10_000, 3),
            "peak_rss_outage_mb": mem_outage.get("VmHWM"),
            "reconnect_s": round(first - back, 2) if first else None,
            "drain_s": round(last - back, 2) if last else None,
            "drain_rate": arrival_rate(final),
            "drain_cpu_s_per_10k": round(
                (cpu_seconds(adapter.pid) - cpu1) / max(final["unique"], 1) * 10_000, 3
            ),
            "received_unique": final["unique"],
            "lost": count - final["unique"],
            "duplicates": final["duplicates"],
            "incomplete": final.get("incomplete"),
            "puts_after_outage": final["puts"],
            "peak_rss_mb": memory(adapter.pid).get("VmHWM"),
            "log_problems": problems(adapter),
        }


# --- scenario 7: history (and matching) ------------------------------------------------------


# --- scenario: a fleet on the NATS cluster (issue [15]) --------------------------------------


def fleet_run(root: Path, s: Settings, instances: int) -> dict[str, Any]:
    """`instances` adapters on the 3-node cluster of contrib/nats, the same load each time:
    one instance reads every device topic in the devices' account; two read a partition
    each in the adapters' account. The load generator publishes QoS 1 to the third node."""
    count, devices = s.fleet_count, s.devices
    with Stack(root, f"fleet-{instances}") as stack:
        cluster = NatsCluster(stack.dir / "nats").start()
        adapters: list[Child] = []
        try:
            sink = stack.sink()
            for k in range(instances):
                user = HA_USER if instances == 1 else ADAPTER_USER
                env = {
                    "MQTT_USERNAME": user,
                    "MQTT_PASSWORD": cluster.passwords[user],
                    "ADAPTER_INSTANCE": f"p{k}",
                    "MQTT_TOPIC_PREFIX": f"part/{k}/" if instances > 1 else "",
                    "DISCOVERY_SETTLE": "1h",
                }
                child = stack.adapter(
                    cluster.nodes[k].mqtt_port,
                    sink,
                    tasmota_mappings(root),
                    state=stack.dir / f"state-{k}",
                    env=env,
                    log=f"adapter-{k}.log",
                )
                adapters.append(child)
            for child in adapters:
                child.wait_log("broker confirmed", 120)
                child.wait_log("connector ready", 30)
            devices_env = {
                "MQTT_USERNAME": DEVICE_USER,
                "MQTT_PASSWORD": cluster.passwords[DEVICE_USER],
            }
            port = cluster.nodes[2].mqtt_port
            loadgen(stack, port, count=devices, devices=devices, workers=1, env=devices_env)
            warmed = wait_events(sink, devices, timeout=300)
            if warmed.get("incomplete"):
                raise BenchError(f"fleet warm-up incomplete: {warmed['incomplete']}")
            sink.call("reset")
            pids = [c.pid for c in adapters]
            nodes = [n.process.pid for n in cluster.nodes if n.process is not None]
            cpu0 = sum(cpu_seconds(pid) for pid in pids)
            nats0 = sum(cpu_seconds(pid) for pid in nodes)
            wall0 = time.monotonic()
            lg = loadgen(
                stack,
                port,
                count=count,
                devices=devices,
                rate=s.fleet_rate,
                workers=s.workers,
                env=devices_env,
                timeout=count / s.fleet_rate * 2 + 60 if s.fleet_rate else 300.0,
            )
            # A message NATS did not acknowledge to the publisher was not taken (a device
            # would send it again): what it acknowledged is what must arrive.
            accepted = int(lg["acked"])
            final = wait_events(sink, accepted, timeout=s.drain_cap * 3, stall=30.0)
            wall = time.monotonic() - wall0
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
            nats_cpu = sum(cpu_seconds(pid) for pid in nodes) - nats0
        finally:
            for child in adapters:  # before their broker, which they would report lost
                stack.stop(child)
            cluster.stop()
    unique = final["unique"]
    return {
        "instances": instances,
        "messages": count,
        "devices": devices,
        "target_rate": s.fleet_rate or "flat out",
        "publish_rate": lg["rate"],
        "accepted_by_nats": accepted,
        "received_unique": unique,
        "duplicates": final["duplicates"],
        "lost": None if final.get("incomplete") else accepted - unique,
        "incomplete": final.get("incomplete"),
        "rate": arrival_rate(final),
        "adapters_cpu_s_per_10k": round(cpu / max(unique, 1) * 10_000, 3),
        "nats_cpu_s_per_10k": round(nats_cpu / max(unique, 1) * 10_000, 3),
        "wall_s": round(wall, 2),
        "log_problems": [problems(child) for child in adapters],
    }


def scenario_fleet(root: Path, s: Settings) -> dict[str, Any]:
    """One and two instances on the NATS cluster with the same load (issue [15])."""
    one, two = fleet_run(root, s, 1), fleet_run(root, s, 2)
    return {"one": one, "two": two, "ratio_rate": ratio(two["rate"], one["rate"])}


def run_module(module: str, prefix: str, timeout: float) -> dict[str, Any]:
    before = set(RESULTS.glob(f"{prefix}-*.json"))
    began = time.monotonic()
    out = subprocess.run(
        [PY, "-m", module], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - began
    if out.returncode != 0:
        raise BenchError(f"{module} failed:\n{out.stderr[-2000:]}")
    print(out.stdout.rstrip(), flush=True)
    written = sorted(set(RESULTS.glob(f"{prefix}-*.json")) - before)
    report: dict[str, Any] = json.loads(written[-1].read_text()) if written else {}
    report["wall_s"] = round(seconds, 1)
    return report


def scenario_history(root: Path, s: Settings) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ("history", "match"):
        try:
            result[name] = run_module(f"bench.{name}", name, 600)
        except (BenchError, subprocess.SubprocessError) as exc:
            result[name] = {"error": str(exc)}
    return result


# --- profile ---------------------------------------------------------------------------------


def start_profiler(
    stack: Stack, pid: int, out: Path, seconds: float, flags: tuple[str, ...]
) -> Child:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed (.venv/bin/pip install py-spy)")
    child = stack.spawn(
        "py-spy",
        [
            *(spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)),
            *("--duration", str(int(seconds)), "--rate", "200", "--threads", *flags),
        ],
    )
    time.sleep(0.5)
    return child


# Leaf frames of a thread blocked in C (py-spy cannot always tell them from running ones).
WAITING = ("Condition.wait (", "EpollSelector.select (", "Event.wait (", "Queue.get (")


def summarise_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the sampled frames (collapsed stacks from py-spy), over
    the samples of threads that were not blocked waiting (their share is `waiting`)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    paths: Counter[str] = Counter()  # the first three adapter frames of each sample
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(WAITING):
            waiting += n
            continue
        total += n
        threads[frames[0]] += n
        frames = frames[1:] if frames[0].startswith(("thread", "process")) else frames
        if not frames:
            frames = ["(no Python frame)"]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        ours = [
            f.split(" (")[0]
            for f in frames
            if "(adapter/" in f and not f.startswith(("main (", "<module> ("))
        ]
        paths[" > ".join(ours[:3]) or "(outside adapter code: event loop, anyio, libraries)"] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(n / total * 100, 1)) for frame, n in counter.most_common(top)]

    return {
        "samples": total,
        "waiting_samples_left_out": waiting,
        "threads": share(threads),
        "self": share(own),
        "inclusive": share(inclusive),
        "adapter_paths": share(paths),
    }


def scenario_profile(root: Path, s: Settings) -> dict[str, Any]:
    """Two py-spy recordings of the adapter under the QoS 1 load: `gil` samples only the
    thread holding the GIL (where the Python CPU goes; SQLite and socket calls release the
    GIL and are under-counted), `threads` samples every thread that is not idle."""
    result: dict[str, Any] = {}
    for mode, flags in (("gil", ("--gil",)), ("threads", ())):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        raw = RESULTS / f"profile-{mode}-{stamp}.txt"
        run = throughput_run(
            root,
            s,
            "adapter",
            1,
            count=s.count,
            name=f"profile-{mode}",
            profile_to=raw,
            profile_flags=flags,
            cap=s.profile_seconds + 5,
        )
        summary = summarise_profile(raw) if raw.exists() else {}
        result[mode] = {
            "raw": str(raw.relative_to(REPO)),
            "run_rate": run["rate"],
            "run_cpu_s_per_10k": run["cpu_s_per_10k"],
            **summary,
        }
    return result


# --- report ----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: dict[str, Any], s: Settings) -> list[str]:
    """The terminal report: one row per figure, adapter against naive where both exist."""
    rows: list[tuple[str, str, str, str, str]] = []

    def row(what: str, a: Any, n: Any = None, r: Any = None, target: str = "") -> None:
        rows.append((what, fmt(a), fmt(n), fmt(r, 2), target))

    def pair(a: Any, b: Any) -> str:
        return f"{fmt(a)} / {fmt(b)}"

    def ok(name: str) -> dict[str, Any] | None:
        value = results["scenarios"].get(name)
        return value if isinstance(value, dict) and "error" not in value else None

    if w := ok("sink"):
        row(
            "0 sink alone, trivial client: events/s (window 256 / 32)",
            pair(w["window_256"]["rate"], w["window_32"]["rate"]),
        )
    if t := ok("throughput"):
        for qos in (0, 1):
            q = t[f"qos{qos}"]
            a, n = q["adapter"], q["naive"]
            label = f"1 {a['messages']:,} msgs, {a['devices']:,} devices, QoS {qos}"
            target = ">=10,000/s, >=1.0x naive" if qos == 1 else ""
            row(f"{label}: events/s acked", a["rate"], n["rate"], q["ratio_rate"], target)
            if len(q.get("rates", {}).get("adapter", [])) > 1:
                row(
                    f"{label}: each run, events/s",
                    " / ".join(f"{r:,}" for r in q["rates"]["adapter"]),
                    " / ".join(f"{r:,}" for r in q["rates"]["naive"]),
                )
            row(
                f"{label}: same, from the first publish",
                a["end_to_end_rate"],
                n["end_to_end_rate"],
                ratio(a["end_to_end_rate"], n["end_to_end_rate"]),
            )
            row(
                f"{label}: lost / duplicated",
                pair(a["lost"], a["duplicates"]),
                pair(n["lost"], n["duplicates"]),
                None,
                "0 lost" if qos == 1 else "",
            )
            if a["incomplete"] or n["incomplete"]:
                row(
                    f"{label}: not in after the cap",
                    a["unreceived_at_end"],
                    n["unreceived_at_end"],
                )
            row(
                f"{label}: CPU s per 10k msgs",
                a["cpu_s_per_10k"],
                n["cpu_s_per_10k"],
                q["ratio_cpu_per_10k"],
            )
            row(f"{label}: peak RSS MB", a["peak_rss_mb"], n["peak_rss_mb"], q["ratio_peak_rss"])
            row(f"{label}: threads", a["threads"], n["threads"])
            row(
                f"{label}: publish rate / warm-up s",
                pair(a["publish_rate"], a["warmup_s"]),
                pair(n["publish_rate"], n["warmup_s"]),
            )
    if lat := ok("latency"):
        parts = [(lat, "<25 ms", ""), (lat["low"], "", "")]
        if "loaded" in lat:
            parts.append((lat["loaded"], "<25 ms", ", a flat-out publisher beside"))
        for part, target, beside in parts:
            a = part["adapter"]["latency_ms"] or {}
            n = part["naive"]["latency_ms"] or {}
            label = (
                f"3 latency @{part['rate']:g}/s for {part['seconds']:g} s, "
                f"{part['adapter']['devices']:,} devices{beside}"
            )
            row(f"{label}: p50 ms", a.get("p50"), n.get("p50"), part["ratio_p50"])
            row(f"{label}: p99 ms", a.get("p99"), n.get("p99"), part["ratio_p99"], target)
            row(f"{label}: max ms", a.get("max"), n.get("max"))
            row(
                f"{label}: lost / duplicated",
                pair(part["adapter"]["lost"], part["adapter"]["duplicates"]),
                pair(part["naive"]["lost"], part["naive"]["duplicates"]),
            )
    if c := ok("commands"):
        for kind, who in (("simulate", "adapter simulate"), ("nodelay", "replier, TCP_NODELAY")):
            run = c[kind]
            rtt = run["rtt_ms"]
            label = f"4 {run['count']:,} commands, one at a time, {who}"
            row(f"{label}: RTT p50 ms", rtt.get("p50"))
            row(f"{label}: RTT p99 ms", rtt.get("p99"), None, None, "<20 ms")
            row(f"{label}: RTT max ms", rtt.get("max"))
            row(f"{label}: timeouts / errors", pair(run["timeouts"], run["errors"]))
    if g := ok("scale"):
        nd = g["devices_count"]
        b = g["baseline"]
        row(
            "5 start-up, bundled mappings, no devices: s",
            b["startup_s"],
            g["naive_startup_s"],
            ratio(b["startup_s"], g["naive_startup_s"]),
        )
        row(
            "5 RSS after start-up, no devices: MB",
            b["rss_ready_mb"],
            g["naive_rss_mb"],
            ratio(b["rss_ready_mb"], g["naive_rss_mb"]),
        )
        d = g["devices"]
        row(f"5 start-up, bundled mappings, {nd:,} known devices: s", d["startup_s"])
        if "restart_startup_s" in d:
            row(
                f"5 restart, bundled mappings, {nd:,} known devices: s",
                d["restart_startup_s"],
                None,
                None,
                "<1 s",
            )
        row(f"5 {nd:,} devices, one message each: forwarded in s", d.get("forward_s"))
        row(f"5 {nd:,} devices: peak RSS MB (local API on)", d["peak_rss_mb"], None, None, "<60 MB")
        fs = g["devices_full_sync"]
        row(f"5 start-up, {nd:,} devices, full re-sync (puts): s", fs["startup_s"])
    if rc := ok("recovery"):
        label = f"6 outage, {rc['messages']:,} events"
        row(f"{label}: into the outbox, events/s", rc["buffer_rate"])
        row(f"{label}: drain once back, events/s", rc["drain_rate"], None, None, ">=10,000/s")
        row(f"{label}: back -> first event / all in, s", pair(rc["reconnect_s"], rc["drain_s"]))
        row(f"{label}: lost / duplicated", pair(rc["lost"], rc["duplicates"]), None, None, "0 lost")
        row(
            f"{label}: peak RSS outage / overall MB",
            pair(rc["peak_rss_outage_mb"], rc["peak_rss_mb"]),
        )
    if h := ok("history"):
        hist = h["history"]
        row(
            f"7 hourly average, {hist.get('readings', 0):,} readings: ms (vs Python loop)",
            (hist.get("hourly_average_s") or 0) * 1000,
            (hist.get("python_baseline_s") or 0) * 1000,
            hist.get("ratio_to_baseline"),
        )
        if hist.get("hourly_average_with_staged_s") is not None:
            row(
                "  the same with the newest readings not folded yet: ms",
                hist["hourly_average_with_staged_s"] * 1000,
            )
        if "error" in h["match"]:
            row("  bench.match: FAILED (see the JSON)", None)
        for m in h["match"].get("rows", []):
            row(
                f"  bench.match {m['what']}: /s, 10 vs 10,000 rules",
                m["rules_10_per_s"],
                m["rules_10000_per_s"],
                m["slower_vs_faster"],
            )
    if f := ok("fleet"):
        # Two instances against one, on the same 3-node NATS cluster and load (issue [15]).
        one, two = f["one"], f["two"]
        label = f"F fleet on 3 NATS nodes, {one['messages']:,} msgs, {one['devices']:,} devices"
        row(
            f"{label}: events/s, one / two instances",
            pair(one["rate"], two["rate"]),
            None,
            f["ratio_rate"],
        )
        row(f"{label}: lost, one / two", pair(one["lost"], two["lost"]), target="0 lost")
        row(f"{label}: duplicated, one / two", pair(one["duplicates"], two["duplicates"]))
        row(
            f"{label}: adapters' CPU s per 10k msgs, one / two",
            pair(one["adapters_cpu_s_per_10k"], two["adapters_cpu_s_per_10k"]),
        )
        row(
            f"{label}: NATS CPU s per 10k msgs, one / two",
            pair(one["nats_cpu_s_per_10k"], two["nats_cpu_s_per_10k"]),
        )
    head = ("scenario", "adapter", "naive", "ratio", "target")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(5)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(head), "-" * len(line(head))]
    lines += [line(r) for r in rows]
    for name, value in results["scenarios"].items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"{name}: FAILED: {value['error'].splitlines()[0]}")
    return lines


def report_problems(scenarios: dict[str, Any]) -> list[str]:
    """Every `log_problems` with warnings or errors, by where it was found."""
    lines: list[str] = []

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        found = node.get("log_problems")
        if isinstance(found, dict) and found.get("count"):
            lines.append(f"{where}: {found['count']} warning/error lines in the adapter log")
            lines.extend(f"    {text}" for text in found["first"])
        for key, value in node.items():
            if key != "log_problems":
                walk(value, f"{where}.{key}" if where else key)

    walk(scenarios, "")
    return ["", *lines] if lines else []


def report_profile(profile: dict[str, Any], top: int = 15) -> list[str]:
    lines = []
    for mode, p in profile.items():
        if not isinstance(p, dict) or "self" not in p:
            continue
        lines += [
            "",
            f"profile '{mode}' ({p['samples']} samples at "
            f"{fmt(p['run_rate'])} events/s; {p['raw']})",
            "  threads: " + ", ".join(f"{name} {pct}%" for name, pct in p["threads"]),
            "  by adapter code path (first three adapter frames):",
            *(f"    {pct:5.1f}%  {name}" for name, pct in p["adapter_paths"][:top]),
            "  by own time:",
            *(f"    {pct:5.1f}%  {name}" for name, pct in p["self"][:top]),
        ]
    return lines


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": model,
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip()


SCENARIOS: dict[str, Callable[[Path, Settings], dict[str, Any]]] = {
    "sink": scenario_sink,
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "commands": scenario_commands,
    "scale": scenario_scale,
    "recovery": scenario_recovery,
    "history": scenario_history,
    "fleet": scenario_fleet,
    "profile": scenario_profile,
}


@contextlib.contextmanager
def budget(minutes: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise OutOfTime(f"the run went over {minutes:g} minutes")

    previous = signal.signal(signal.SIGALRM, expire)
    term = signal.signal(signal.SIGTERM, expire)
    signal.alarm(int(minutes * 60))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        signal.signal(signal.SIGTERM, term)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down counts, a smoke run")
    parser.add_argument("--profile", action="store_true", help="add a py-spy profile run")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios of {','.join(ALL_SCENARIOS)},profile"
    )
    parser.add_argument("--max-minutes", type=float, default=25.0, help="hard stop")
    parser.add_argument(
        "--drain-cap", type=float, help="s a throughput run waits for its events (60; quick 45)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--adapter-tree",
        type=Path,
        help="run the adapter from this checkout (e.g. an older revision) with this harness",
    )
    args = parser.parse_args(argv)
    global ADAPTER_TREE
    if args.adapter_tree is not None:
        ADAPTER_TREE = args.adapter_tree.resolve()
    s = Settings.quick_settings() if args.quick else Settings()
    s.profile = args.profile
    if args.drain_cap:
        s.drain_cap = args.drain_cap
    chosen = [x for x in args.only.split(",") if x] or ALL_SCENARIOS + (
        ["profile"] if args.profile else []
    )
    unknown = [x for x in chosen if x not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    s.scenarios = chosen
    root = Path(tempfile.mkdtemp(prefix="sepl-bench-"))
    results: dict[str, Any] = {
        "revision": git("rev-parse", "--short", "HEAD"),
        "adapter_tree": None if ADAPTER_TREE == REPO else str(ADAPTER_TREE),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": asdict(s),
        "scenarios": {},
    }
    RESULTS.mkdir(exist_ok=True)
    began = time.monotonic()
    try:
        with budget(args.max_minutes):
            for name in chosen:
                print(f"--- {name} ...", flush=True)
                t0 = time.monotonic()
                try:
                    results["scenarios"][name] = SCENARIOS[name](root, s)
                except (
                    BenchError,
                    OSError,
                    ValueError,
                    KeyError,
                    subprocess.SubprocessError,
                ) as exc:
                    traceback.print_exc()
                    results["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"    {name}: {time.monotonic() - t0:.0f} s", flush=True)
    except (OutOfTime, KeyboardInterrupt) as exc:
        results["aborted"] = str(exc) or type(exc).__name__
        print(f"aborted: {results['aborted']}", file=sys.stderr)
    finally:
        results["seconds"] = round(time.monotonic() - began, 1)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    out = RESULTS / f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print()
    if results["adapter_tree"]:
        print(f"adapter run from {results['adapter_tree']}")
    print(
        f"revision {results['revision']}{' (dirty)' if results['dirty'] else ''}, "
        f"{results['machine']['cores']} cores {results['machine']['cpu']}, "
        f"load average at start {results['machine']['loadavg_at_start'][0]:.2f}, "
        f"{'quick' if s.quick else 'full'} settings, {results['seconds']:.0f} s"
    )
    print("\n".join(table(results, s)))
    for line in report_problems(results["scenarios"]):
        print(line)
    profile = results["scenarios"].get("profile")
    if isinstance(profile, dict) and "error" not in profile:
        for line in report_profile(profile):
            print(line)
    print(f"\nwritten to {out.relative_to(REPO)}")
    return 1 if "aborted" in results else 0


if __name__ == "__main__":
    sys.exit(main())
