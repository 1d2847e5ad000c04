"""What the running adapter shows of itself: each part publishes a small frozen record of
its state (`status()`), and the local API reads a `Snapshot` of them all. The API sees
these records only, never the parts, so nothing it does can reach into them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from adapter.sepl.device import Device

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)


class Latency:
    """Event latencies (MQTT receive to the platform's 200), counted into fixed buckets."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le`: bound included
        self.sum += seconds


@dataclass(frozen=True)
class MqttStatus:
    connected: bool
    for_s: float  # seconds since `connected` last changed
    client_id: str
    received: int


@dataclass(frozen=True)
class PipelineStatus:
    counts: Mapping[str, int]  # received, mapped, unmapped, rejected, …
    online: Mapping[str, bool | None]  # device uri -> availability
    unmapped_topics: tuple[tuple[str, int], ...]  # the most frequent, with their counts
    disk_full_for_s: float | None = None  # the outbox cannot be written (a full disk)


@dataclass(frozen=True)
class MappingsStatus:
    rules: int
    commands: int
    reloads: int
    reload_errors: int


@dataclass(frozen=True)
class OutboxStatus:
    depth: int
    dead_letters: int
    dropped: int
    oldest_waiting_s: float | None


@dataclass(frozen=True)
class DeliveryStatus:
    acknowledged: int
    dead_lettered: int
    retries: int
    in_flight: int
    latency_counts: tuple[int, ...]
    latency_sum: float


@dataclass(frozen=True)
class PlatformStatus:
    ready: bool
    up_for_s: float | None
    down_for_s: float | None
    gateway: str
    last_error: str
    devices: Mapping[str, Device]  # the devices the gateway manages
    attached: frozenset[str]
    quarantined: Mapping[str, str]
    connects: int
    malformed_frames: int


@dataclass(frozen=True)
class HistoryStatus:
    dropped_for_space: int = 0  # readings removed to keep HISTORY_MAX_BYTES
    used_bytes: int | None = None  # the history's pages in use, at the last look


@dataclass(frozen=True)
class Snapshot:
    mqtt: MqttStatus
    pipeline: PipelineStatus
    outbox: OutboxStatus
    delivery: DeliveryStatus
    platform: PlatformStatus
    mappings: MappingsStatus
    history: HistoryStatus = HistoryStatus()


@dataclass
class StatusBoard:
    """The parts' `status` functions, wired by the adapter; `snapshot` asks each."""

    mqtt: Callable[[], MqttStatus]
    pipeline: Callable[[], PipelineStatus]
    outbox: Callable[[], OutboxStatus]
    delivery: Callable[[], DeliveryStatus]
    platform: Callable[[], PlatformStatus]
    mappings: Callable[[], MappingsStatus]
    history: Callable[[], HistoryStatus] = HistoryStatus

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.mqtt(),
            self.pipeline(),
            self.outbox(),
            self.delivery(),
            self.platform(),
            self.mappings(),
            self.history(),
        )
