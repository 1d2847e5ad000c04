"""The way from a batch of received MQTT messages to outbox rows and the broker's
acknowledgements.

For each message, in the order received: the adapter's own publications coming back are
skipped, replies to pending commands are matched, discovery configs go to the mapping
source, the retained-message policy (FORWARD_RETAINED) is applied, and the mappings make
an event, an availability change, a rejection or nothing of it. Events go into the outbox
and to the sender; rejected messages become dead letters with their reason; then every
message of the slice is acknowledged to the broker, in order, dead-lettered ones
included (MQTT 3.1.1 §4.6); the readings follow to the history.

The mapping stage (adapter/mapping/) is pure; this module is where its outcomes meet the
outbox. The command path (adapter/commands.py) shares `Replies` with it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import anyio

from adapter.history import Reading
from adapter.mapping import AvailabilityChange, MappingSet, PublishPlan, Rejected
from adapter.mapping.eventparts import (
    event_metadata,
    millis_timestamp,
    payload_text,
    payload_text_pieces,
)
from adapter.mqtt import Message
from adapter.outbox import Entry, NewEvent, Outbox
from adapter.sepl.device import Device
from adapter.sqlitedb import disk_full
from adapter.status import PipelineStatus

log = logging.getLogger("adapter")

SLICE = 32  # messages mapped, stored and acknowledged before the answers get a turn
DISK_RETRY = 2.0  # s between tries to write the outbox on a full disk
UNMAPPED_TOPICS_KEPT = 1000
OWN_ECHO_WINDOW = 10.0  # seconds in which a message equal to one we published is ours


class MappingSource(Protocol):
    """What the pipeline needs of the mappings: the current set, and discovery configs."""

    @property
    def current(self) -> MappingSet: ...
    def owns(self, topic: str) -> bool: ...
    def take(self, topic: str, payload: bytes) -> bool: ...
    async def apply_discovery(self) -> None: ...


class ReadingSink(Protocol):
    async def put(self, readings: list[Reading]) -> None: ...


@dataclass
class ReplyWaiter:
    plan: PublishPlan
    done: anyio.Event = field(default_factory=anyio.Event)
    data: str | None = None
    topic: str = ""
    received: datetime | None = None


class Replies:
    """Commands waiting for their device's reply, and the adapter's own recent publishes
    (MQTT 3.1.1 has no No Local: they come back on the subscriptions)."""

    def __init__(self) -> None:
        self.waiting: list[ReplyWaiter] = []
        self._published: dict[tuple[str, bytes], float] = {}

    def expect(self, plan: PublishPlan) -> ReplyWaiter:
        waiter = ReplyWaiter(plan)
        self.waiting.append(waiter)
        return waiter

    def forget(self, waiter: ReplyWaiter) -> None:
        self.waiting.remove(waiter)

    def published(self, topic: str, payload: str) -> None:
        now = time.monotonic()
        if len(self._published) > 1000:
            self._published = {k: t for k, t in self._published.items() if t >= now}
        self._published[(topic, payload.encode("utf-8"))] = now + OWN_ECHO_WINDOW

    def is_own(self, topic: str, payload: bytes) -> bool:
        if not self._published:  # nearly always: no command published in the last seconds
            return False
        expiry = self._published.pop((topic, payload), None)
        return expiry is not None and expiry >= time.monotonic()

    def match(self, message: Message, mappings: MappingSet) -> None:
        for waiter in self.waiting:
            if waiter.received is not None or waiter.plan.reply_topic != message.topic:
                continue
            data = mappings.reply_data(waiter.plan, message.payload)
            if data is not None:  # the first reply that matches this command's predicate
                waiter.data, waiter.topic, waiter.received = data, message.topic, message.received
                waiter.done.set()


class RateLimitedLog:
    """At most one line a minute per key, so a chatty broken device cannot flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -self.interval) < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return
        skipped = self.suppressed.pop(key, 0)
        self.last[key] = now
        suffix = f" ({skipped} more since the last report)" if skipped else ""
        log.warning(message + suffix, *args)


class Pipeline:
    def __init__(
        self,
        *,
        mappings: MappingSource,
        outbox: Outbox,
        offer: Callable[[list[Entry]], None],
        ack: Callable[[Sequence[Message]], None],
        history: ReadingSink,
        replies: Replies,
        status_topic: str,
        forward_retained: str,
        event_max_bytes: int = 2**20,
        on_disk_full: Callable[[bool], None] = lambda full: None,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.mappings = mappings
        self.outbox = outbox
        self.offer = offer
        self.ack = ack
        self.history = history
        self.replies = replies
        self.status_topic = status_topic
        self.forward_retained = forward_retained
        self.event_max_bytes = event_max_bytes
        self.on_disk_full = on_disk_full  # the link stops its keep-alive while the disk is full
        # ADAPTER_PARTITION: the devices this instance of a fleet forwards (None: all).
        self.owns = owns
        self.disk_full_since: float | None = None
        self.counts: Counter[str] = Counter()
        self.online: dict[str, bool | None] = {}
        self.unmapped_topics: Counter[str] = Counter()
        self.problems = RateLimitedLog()

    def count(self, what: str) -> None:
        self.counts[what] += 1

    def status(self) -> PipelineStatus:
        since = self.disk_full_since
        return PipelineStatus(
            dict(self.counts),
            dict(self.online),
            tuple(self.unmapped_topics.most_common(10)),
            None if since is None else round(time.monotonic() - since, 1),
        )

    async def deliver(self, batch: list[Message]) -> None:
        """The MQTT link's hand-over: the batch is stored and acknowledged when this
        returns (the link reads nothing meanwhile)."""
        for start in range(0, len(batch), SLICE):
            await self._slice(batch[start : start + SLICE])
            # Let the platform's answers in and the freed slots refill between slices.
            await anyio.lowlevel.checkpoint()

    async def _slice(self, messages: list[Message]) -> None:
        events: list[NewEvent] = []
        refused: list[tuple[NewEvent, str]] = []
        readings: list[Reading] = []
        oversized: list[tuple[Message, str]] = []
        discovered = False
        mappings = self.mappings.current
        for message in messages:
            if not message.topic:  # not UTF-8: counted and logged by the link
                continue
            if self.mappings.owns(message.topic):
                # Configuration, not telemetry: read whatever FORWARD_RETAINED says.
                self.counts["discovery_messages"] += 1
                discovered |= self.mappings.take(message.topic, message.payload)
                continue
            try:
                self._take(message, mappings, events, refused, readings, oversized)
            except Exception as exc:
                if disk_full(exc):
                    raise
                # A bug on one message must not stop the adapter (it would come back from
                # the broker at every start): keep it as a dead letter, go on.
                self.counts["internal_errors"] += 1
                log.exception("could not process a message on %s", message.topic)
                refused.append((raw_event(message), f"internal error: {exc!r}"))
        await self._store(events, refused, oversized)
        self.ack(messages)
        await self.history.put(readings)
        if discovered:
            await self.mappings.apply_discovery()

    async def _store(
        self,
        events: list[NewEvent],
        refused: list[tuple[NewEvent, str]],
        oversized: list[tuple[Message, str]],
    ) -> None:
        """The slice's events into the outbox, before the broker gets its acknowledgement.
        On a full disk this waits, retrying, and the link reads nothing meanwhile: the
        broker keeps what it could not deliver (issue [14]). What is stored is not stored
        again by a retry."""
        entries: list[Entry] | None = None
        while True:
            try:
                if entries is None:
                    entries = self.outbox.add(events)
                self.outbox.add_dead_letters(refused)
                refused = []
                while oversized:
                    message, reason = oversized[0]
                    text = payload_text_pieces(message.payload)
                    # The text is written by the outbox in pieces, not put in the event.
                    letter = _letter(message, "", text.encoding)
                    self.outbox.add_raw_dead_letter(letter, text, reason)
                    oversized.pop(0)
            except sqlite3.Error as exc:
                if not disk_full(exc):
                    raise
                self._disk_full(str(exc))
                await anyio.sleep(DISK_RETRY)
                continue
            if self.disk_full_since is not None:
                log.warning(
                    "the disk has room again after %.0f s: taking messages again",
                    time.monotonic() - self.disk_full_since,
                )
                self.disk_full_since = None
                self.on_disk_full(False)
            self.offer(entries)
            return

    def _disk_full(self, reason: str) -> None:
        now = time.monotonic()
        if self.disk_full_since is None:
            self.disk_full_since = now
            self.counts["disk_full"] += 1
            self.on_disk_full(True)
        self.problems.warning(
            "disk full",
            "cannot write the outbox (%s): messages wait at the broker until the disk has"
            " room; retrying every %g s",
            reason,
            DISK_RETRY,
        )

    def _take(
        self,
        message: Message,
        mappings: MappingSet,
        events: list[NewEvent],
        refused: list[tuple[NewEvent, str]],
        readings: list[Reading],
        oversized: list[tuple[Message, str]],
    ) -> None:
        counts = self.counts
        counts["received"] += 1
        if message.topic == self.status_topic or self.replies.is_own(
            message.topic, message.payload
        ):
            counts["own_skipped"] += 1
            return
        if self.replies.waiting:
            self.replies.match(message, mappings)
        if not self._forwards_retained(message):
            counts["retained_skipped"] += 1
            return
        if len(message.payload) > self.event_max_bytes:
            # Its event could never be sent: kept as a dead letter, and never decoded or
            # parsed (a JSON document of hundreds of MB took gigabytes).
            counts["too_large"] += 1
            reason = (
                f"payload of {len(message.payload):,} bytes, more than EVENT_MAX_BYTES"
                f" ({self.event_max_bytes:,})"
            )
            log.warning("message on %s kept as a dead letter: %s", message.topic[:200], reason)
            oversized.append((message, reason))
            return
        outcome = mappings.map(message.topic, message.payload, message.received)
        if outcome is None:
            counts["unmapped"] += 1
            self._note_unmapped(message.topic)
        elif self.owns is not None and not self.owns(outcome.device.uri):
            # Another instance's device: it forwards, dead-letters and tracks it.
            counts["other_partition"] += 1
        elif isinstance(outcome, Rejected):
            counts["rejected"] += 1
            rule = outcome.rule
            self.problems.warning(
                rule.id,
                "rule %s: message on %s rejected: %s",
                rule.id,
                message.topic,
                outcome.reason,
            )
            raw = raw_event(message)
            event = NewEvent(outcome.device, rule.service, raw.data, raw.metadata, rule.id)
            refused.append((event, outcome.reason))
        elif isinstance(outcome, AvailabilityChange):
            self._availability(outcome)
        else:
            counts["mapped"] += 1
            if outcome.missing:
                counts["readings_missing"] += 1
            device = outcome.device
            readings.append(
                # The event's time has millisecond precision (D10); the history keeps the
                # same instant, so the adapter's and the sandbox's averages agree exactly.
                Reading(
                    device.uri,
                    millis_timestamp(outcome.time),
                    outcome.readings,
                    outcome.primary,
                    device.name,
                    device.device_type,
                    outcome.units,
                )
            )
            events.append(
                NewEvent(device, outcome.service, outcome.data, outcome.metadata, outcome.rule.id)
            )

    def _forwards_retained(self, message: Message) -> bool:
        policy = self.forward_retained
        if policy == "all":
            return True
        if policy == "none":
            return not message.retain
        return self.outbox.should_forward(message.topic, message.payload, message.retain)

    def _availability(self, change: AvailabilityChange) -> None:
        uri = change.device.uri
        if self.online.get(uri, "unknown") != change.online:
            state = {True: "online", False: "offline", None: "unknown"}[change.online]
            log.info("device %s is %s", uri, state)
        self.online[uri] = change.online

    def _note_unmapped(self, topic: str) -> None:
        self.unmapped_topics[topic] += 1
        if len(self.unmapped_topics) > UNMAPPED_TOPICS_KEPT * 5:
            # Bounded memory: keep the most frequent ones (a chatty broker has many topics).
            self.unmapped_topics = Counter(
                dict(self.unmapped_topics.most_common(UNMAPPED_TOPICS_KEPT))
            )


def raw_event(message: Message) -> NewEvent:
    """A message kept as it came, for the dead letters."""
    data, encoding = payload_text(message.payload)
    return _letter(message, data, encoding)


def _letter(message: Message, data: str, encoding: str | None) -> NewEvent:
    metadata = event_metadata(
        time=message.received, topic=message.topic, readings={}, primary=None, encoding=encoding
    )
    return NewEvent(Device("unmapped", message.topic, ""), "", data, metadata)
