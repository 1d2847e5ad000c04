"""Delivery from the outbox to the platform (decision D8): a window of events in flight,
per-device order, retries of 500s with back-off, dead letters for refusals, and a circuit
breaker so one poison device cannot spend the session's error budget."""

from __future__ import annotations

import contextlib
import heapq
import logging
import sqlite3
import time
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from adapter.outbox import Entry, Outbox
from adapter.sepl.client import Connector
from adapter.sepl.envelope import event_frame_fits, event_frame_size
from adapter.sepl.errors import (
    ConnectorError,
    DeviceQuarantined,
    EventRejected,
    LinkDown,
)
from adapter.sqlitedb import disk_full
from adapter.status import DeliveryStatus, Latency

DISK_RETRY = 2.0  # s before an event whose dead letter could not be written goes again
log = logging.getLogger("adapter.delivery")

FETCH = 512  # rows read from the outbox at a time
POLL_INTERVAL = 1.0  # new rows written by another process (dead-letter replay)
ACK_FLUSH = 0.01  # seconds between deletes of answered events


@dataclass
class Breaker:
    """Per device: after `threshold` refusals in a row its events wait `cooldown` s."""

    threshold: int = 5
    cooldown: float = 30.0
    failures: int = 0
    open_until: float = 0.0

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def failure(self, now: float) -> bool:
        """Count a failure; True when this one opened the breaker."""
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown * 2 ** min(self.failures - self.threshold, 4)
            return True
        return False


@dataclass
class DeliveryStats:
    acknowledged: int = 0
    dead_lettered: int = 0
    retries: int = 0
    link_failures: int = 0
    breaker_trips: int = 0


@dataclass
class Sender:
    outbox: Outbox
    connector: Connector
    inflight: int = 32
    max_retries: int = 5
    retry_base: float = 1.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    event_max_bytes: int = 2**20  # EVENT_MAX_BYTES: larger frames are never sent
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    latency: Latency = field(default_factory=Latency)  # from MQTT receive to the 200

    def __post_init__(self) -> None:
        self._ready: list[tuple[int, Entry]] = []  # heap by seq: sent in outbox order
        self._cursor = 0  # highest seq taken from the outbox
        self._unread = True  # the outbox may hold rows after the cursor
        self._in_flight: set[int] = set()
        self._busy: set[str] = set()  # devices with an event on its way
        self._held: dict[str, list[Entry]] = {}  # device -> entries waiting behind a retry
        self._retry_at: dict[str, float] = {}  # device -> when its head entry goes again
        self._breakers: dict[str, Breaker] = {}
        self._acked: list[int] = []  # answered, not yet deleted from the outbox
        self._ack_waiting = anyio.Event()  # set at the first answer after a flush
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        # Free slots of the window: a counter, since anyio's Semaphore yields to the loop
        # on every acquire, a loop turn per event.
        self._free = self.inflight
        self._slot_freed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._full_logged = -60.0

    def notify(self) -> None:
        """New rows were added (by another process, or without `offer`)."""
        self._unread = True
        self._wake.set()

    def offer(self, entries: list[Entry]) -> None:
        """Rows just written: taken as they are when they follow the last one taken, so
        the outbox is not read back; otherwise they are read in turn later."""
        if not entries:
            return
        if entries[0].seq == self._cursor + 1 and not self._unread and len(self._ready) < FETCH:
            for entry in entries:
                heapq.heappush(self._ready, (entry.seq, entry))
            self._cursor = entries[-1].seq
        else:
            self._unread = True
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def status(self) -> DeliveryStatus:
        stats = self.stats
        return DeliveryStatus(
            stats.acknowledged,
            stats.dead_lettered,
            stats.retries,
            self.in_flight,
            tuple(self.latency.counts),
            self.latency.sum,
        )

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._poller)
                tg.start_soon(self._flusher)
                await self._dispatch(tg)
        finally:
            self.flush()

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until nothing is in flight; for a clean shutdown."""
        with anyio.move_on_after(timeout):
            while self._in_flight:
                self._idle = anyio.Event()
                await self._idle.wait()
        self.flush()

    def flush(self) -> None:
        """Delete the answered events from the outbox; on a full disk they stay listed
        and go with the next flush (a crash meanwhile sends them again: duplicates)."""
        if self._acked:
            acked, self._acked = self._acked, []
            try:
                self.outbox.delete(acked)
            except sqlite3.Error as exc:
                if not disk_full(exc):
                    raise
                self._acked = acked + self._acked
                self._full_disk(exc)

    async def _dispatch(self, tg: TaskGroup) -> None:
        while True:
            entry = await self._next()
            if self._too_large(entry):
                continue
            while self._free == 0:
                self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
            # Everything that may go now leaves in one write: the first entry and as many
            # more as slots and the queue allow.
            batch = [self._take(entry)]
            while self._free and (more := self._next_nowait(time.monotonic())) is not None:
                if not self._too_large(more):
                    batch.append(self._take(more))
            rest = await self.connector.start_events(batch, self._answered)
            for entry in rest:  # not attached yet, link down, window narrowed: the slow way
                tg.start_soon(self._deliver, entry, None)

    def _too_large(self, entry: Entry) -> bool:
        """An event whose frame the platform would refuse (EVENT_MAX_BYTES: its pipeline
        puts events on Kafka, about 1 MB a message) goes to the dead letters unsent: sent,
        it closed the link at every try and held back every event behind it."""
        limit = self.event_max_bytes
        uri, service, data, metadata = entry.device_uri, entry.service, entry.data, entry.metadata
        if event_frame_fits(uri, service, data, metadata, limit):
            return False
        size = event_frame_size(uri, service, data, metadata)
        self._dead_letter(
            entry, f"its frame is {size:,} bytes, more than EVENT_MAX_BYTES ({limit:,})"
        )
        return True

    def _take(self, entry: Entry) -> Entry:
        self._free -= 1
        self._in_flight.add(entry.seq)
        self._busy.add(entry.device_uri)
        return entry

    async def _next(self) -> Entry:
        while True:
            now = time.monotonic()
            entry = self._next_nowait(now)
            if entry is not None:
                return entry
            self._wake = anyio.Event()
            if not self._retry_at:
                # The poller wakes this every POLL_INTERVAL; a timeout scope per wait was
                # a tenth of the adapter's CPU at 1,000 messages/s.
                await self._wake.wait()
                continue
            delay = min(t - now for t in self._retry_at.values())
            with anyio.move_on_after(max(0.01, min(delay, POLL_INTERVAL))):
                await self._wake.wait()

    def _next_nowait(self, now: float) -> Entry | None:
        if self._unread and len(self._ready) < FETCH // 2:
            self._fetch()
        if self._retry_at:
            self._release_due(now)
        while self._ready:
            _, entry = heapq.heappop(self._ready)
            uri = entry.device_uri
            if uri in self._busy and uri not in self._retry_at:
                # One event per device on its way at a time: its order on the platform is
                # then the outbox order, whatever reconnects, re-puts and retries do to the
                # timing of the ones in flight.
                self._held.setdefault(uri, []).append(entry)
                continue
            breaker = self._breakers.get(uri)
            if uri in self._retry_at or (breaker is not None and not breaker.allows(now)):
                # Behind an earlier event of the same device: keep the device's order.
                self._held.setdefault(uri, []).append(entry)
                self._retry_at.setdefault(uri, breaker.open_until if breaker else now)
                continue
            return entry
        return None

    def _fetch(self) -> None:
        entries = self.outbox.after(self._cursor, FETCH)
        for entry in entries:
            heapq.heappush(self._ready, (entry.seq, entry))
        if entries:
            self._cursor = entries[-1].seq
        self._unread = len(entries) == FETCH

    def _release_due(self, now: float) -> None:
        for uri, due in list(self._retry_at.items()):
            if due <= now:
                del self._retry_at[uri]
                for entry in self._held.pop(uri, []):
                    heapq.heappush(self._ready, (entry.seq, entry))

    def _hold(self, entry: Entry, until: float) -> None:
        uri = entry.device_uri
        self._retry_at[uri] = max(until, self._retry_at.get(uri, 0.0))
        self._held.setdefault(uri, []).insert(0, entry)

    def _answered(self, entry: Entry, failure: ConnectorError | None) -> None:
        """start_events' callback (from the connector's reader, no await possible)."""
        if failure is None:
            self._acknowledged(entry)
            self._settled(entry)
        elif self._tg is not None:
            self._tg.start_soon(self._deliver, entry, failure)

    async def _deliver(self, entry: Entry, failure: ConnectorError | None) -> None:
        try:
            await self._send(entry, failure)
        finally:
            self._settled(entry)

    def _settled(self, entry: Entry) -> None:
        self._in_flight.discard(entry.seq)
        uri = entry.device_uri
        self._busy.discard(uri)
        if uri not in self._retry_at:  # the next event of this device may go now
            for held in self._held.pop(uri, ()):
                heapq.heappush(self._ready, (held.seq, held))
        self._free += 1
        self._slot_freed.set()
        if not self._in_flight:
            self._idle.set()
        self._wake.set()

    async def _send(self, entry: Entry, failure: ConnectorError | None) -> None:
        """The slow way, with a task per event: after a failure of the fast path, or when
        the device must be put first or the link is down."""
        uri = entry.device_uri
        try:
            if failure is not None and not isinstance(failure, LinkDown):
                raise failure
            if failure is not None:
                self.stats.link_failures += 1
                log.debug("event %d waits for the link: %s", entry.seq, failure)
                await self.connector.wait_ready()
            while True:
                try:
                    await self.connector.send_event(
                        entry.device, entry.service, entry.data, entry.metadata
                    )
                    break
                except LinkDown as exc:
                    # Not answered: this task sends it again once the link is back
                    # (duplicates possible, never gaps). Handing it back to the queue let
                    # later events of its device, already waiting, go first.
                    self.stats.link_failures += 1
                    log.debug("event %d waits for the link: %s", entry.seq, exc)
                    await self.connector.wait_ready()
        except DeviceQuarantined as exc:
            self._dead_letter(entry, f"device quarantined: {exc}")
            return
        except EventRejected as exc:
            if self._breaker(uri).failure(time.monotonic()):
                self.stats.breaker_trips += 1
                log.warning(
                    "device %s: %d refusals in a row; holding its events",
                    uri,
                    self._breaker(uri).failures,
                )
            if exc.retryable and entry.attempts + 1 < self.max_retries:
                with contextlib.suppress(sqlite3.Error):  # a full disk: the count is not kept
                    self.outbox.record_attempt(entry.seq)
                self.stats.retries += 1
                retried = entry._replace(attempts=entry.attempts + 1)
                self._hold(retried, time.monotonic() + self.retry_base * 2**entry.attempts)
                return
            self._dead_letter(entry, str(exc))
            return
        except ConnectorError as exc:
            self._dead_letter(entry, str(exc))
            return
        self._acknowledged(entry)

    def _acknowledged(self, entry: Entry) -> None:
        breaker = self._breakers.get(entry.device_uri)
        if breaker is not None:
            breaker.success()
        self.stats.acknowledged += 1
        age = max(0.0, time.time() - entry.created)
        self.latency.observe(age)
        # Deleted in batches every few milliseconds: after a crash only the events in
        # flight and those answered since the last delete go again.
        if not self._acked:
            self._ack_waiting.set()
        self._acked.append(entry.seq)
        if len(self._acked) >= FETCH:
            self.flush()

    def _breaker(self, uri: str) -> Breaker:
        breaker = self._breakers.get(uri)
        if breaker is None:
            breaker = self._breakers[uri] = Breaker(self.breaker_threshold, self.breaker_cooldown)
        return breaker

    def _dead_letter(self, entry: Entry, reason: str) -> None:
        try:
            self.outbox.dead_letter(entry, reason)
        except sqlite3.Error as exc:
            if not disk_full(exc):
                raise
            # Stays in the outbox; tried again (and refused again) once the disk has room.
            self._full_disk(exc)
            self._hold(entry, time.monotonic() + DISK_RETRY)
            return
        self.stats.dead_lettered += 1
        log.warning(
            "event %d of %s moved to the dead letters: %s", entry.seq, entry.device_uri, reason
        )

    def _full_disk(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._full_logged >= 60.0:  # a line a minute
            self._full_logged = now
            log.warning("cannot write the outbox (%s): the disk is full; trying again", exc)

    async def _flusher(self) -> None:
        while True:
            await self._ack_waiting.wait()
            self._ack_waiting = anyio.Event()
            await anyio.sleep(ACK_FLUSH)
            self.flush()

    async def _poller(self) -> None:
        # Rows can also come from `sepl-adapter deadletters replay` in another process.
        # Only then is the outbox read again: a read every second sent the events of the
        # moment the slow way (read back, their devices parsed) instead of as offered.
        while True:
            await anyio.sleep(POLL_INTERVAL)
            if self.outbox.written_elsewhere():
                self.notify()
            else:
                self._wake.set()  # due retries
