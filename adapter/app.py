"""The adapter process: MQTT in, mappings, SEPL events out; SEPL commands in, MQTT out.

One anyio task group owns every task: the MQTT link, the forwarder and the command
handler. SIGINT/SIGTERM cancel the group, and each task cleans up on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from adapter import config
from adapter.delivery import Sender
from adapter.discovery import DiscoverySource
from adapter.history import HistoryStore, HistoryWriter, Reading
from adapter.mapping import (
    AvailabilityChange,
    MappingError,
    MappingSet,
    PublishPlan,
    Rejected,
    load_directory,
)
from adapter.mqtt import Message, MqttLink, PublishRefused, stable_client_id
from adapter.outbox import NewEvent, Outbox
from adapter.sepl import Command, Connector, ConnectorConfig, ConnectorError, Device
from adapter.sepl.messages import event_metadata, format_time, millis_timestamp, payload_text
from adapter.topic import TopicPattern

log = logging.getLogger("adapter")


def setup_logging(level: str, fmt: str | None = None) -> None:
    # stderr, text or JSON lines (LOGFORMAT), no colour off a terminal, websockets capped
    # at INFO (D3): see adapter/logs.py. `fmt` None = the LOGFORMAT environment variable.
    from adapter import logs

    logs.setup(level, fmt)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args)
    except config.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.loglevel, settings.logformat)
    if settings.mqtt_tls and settings.mqtt_tls_insecure:
        log.warning("MQTT_TLS_INSECURE is set: the broker's certificate is not checked")
    if settings.connector_tls_insecure:
        log.warning("CONNECTOR_TLS_INSECURE is set: the platform's certificate is not checked")
    try:
        mappings = load_directory(settings.mappings_dir, settings.device_prefix)
    except MappingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not mappings.rules:
        log.warning("no mapping rules in %s: nothing will be forwarded", settings.mappings_dir)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run, settings, mappings)
    return 0


@dataclass
class ReplyWaiter:
    plan: PublishPlan
    done: anyio.Event = field(default_factory=anyio.Event)
    data: str | None = None
    message: Message | None = None


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


@dataclass
class Adapter:
    settings: Any
    mappings: MappingSet
    connector: Connector
    mqtt: MqttLink
    outbox: Outbox
    sender: Sender
    history: HistoryStore  # read by the API; written through `recorder`
    recorder: HistoryWriter
    hand_written: MappingSet
    discovery: DiscoverySource | None = None
    replies: list[ReplyWaiter] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    online: dict[str, bool | None] = field(default_factory=dict)
    problems: RateLimitedLog = field(default_factory=RateLimitedLog)
    unmapped_topics: Counter[str] = field(default_factory=Counter)
    _next_id: int = 0
    _published: dict[tuple[str, bytes], float] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def watch_mappings(self) -> None:
        """Hot reload: an edited mapping directory takes effect within about a second; an
        invalid edit is logged with its location and the previous mappings stay."""
        directory = self.settings.mappings_dir
        signature = mapping_signature(directory)
        while True:
            await anyio.sleep(MAPPING_POLL)
            current = await anyio.to_thread.run_sync(mapping_signature, directory)
            if current == signature:
                continue
            signature = current
            try:
                new = await anyio.to_thread.run_sync(
                    load_directory, directory, self.settings.device_prefix
                )
            except MappingError as exc:
                self.count("mapping_reload_errors")
                log.error("mapping change not applied, the previous mappings stay: %s", exc)
                continue
            except Exception:
                # A loader bug must not stop a running adapter over an edited file.
                self.count("mapping_reload_errors")
                log.exception("mapping change not applied, the previous mappings stay")
                continue
            self.hand_written = new
            await self.apply_mappings(self._merged())

    def _merged(self) -> MappingSet:
        if self.discovery is None:
            return self.hand_written
        return self.discovery.merged(self.hand_written)

    def filters(self) -> list[str]:
        extra = [] if self.discovery is None else self.discovery.filters()
        return sorted({*subscription_filters(self.mappings), *extra})

    async def watch_discovery(self) -> None:
        """The settle time: configs of an earlier run not announced again are removed."""
        assert self.discovery is not None
        while not self.discovery.settle_due():
            await anyio.sleep(1.0)
        await self._apply_discovery()

    async def _apply_discovery(self) -> None:
        assert self.discovery is not None
        await self.apply_mappings(self._merged(), self.discovery.take_removed())

    async def apply_mappings(self, new: MappingSet, removed: Sequence[str] = ()) -> None:
        self.mappings = new
        self.mqtt.set_filters(self.filters())
        gone = [uri for uri in self.connector.devices if not new.produces(uri)]
        gone += [uri for uri in removed if uri in self.connector.devices and uri not in gone]
        if gone:
            log.info("no rule makes %s any more: disconnecting", ", ".join(sorted(gone)))
            try:
                await self.connector.unregister(gone)
            except ConnectorError as exc:
                log.warning("disconnecting %s failed: %s", ", ".join(gone), exc)
        self.count("mapping_reloads")
        log.info("mappings reloaded: %d rules, %d command rules", len(new.rules), len(new.commands))

    async def forward(self) -> None:
        """MQTT messages to outbox rows, in slices; each slice is acknowledged to the broker
        only after it was written to the outbox (at-least-once from the broker on), then
        handed to the history writer. Small slices keep the broker sending: it holds back
        QoS 1 messages beyond its in-flight limit (Mosquitto: 20 by default) until they are
        acknowledged."""
        while True:
            try:
                batch = await self.mqtt.inbox.get_batch(FORWARD_BATCH)
            except anyio.EndOfStream:
                return
            for start in range(0, len(batch), FORWARD_SLICE):
                await self._forward_slice(batch[start : start + FORWARD_SLICE])
                # Let the answers in and the freed slots refill between slices: with
                # CONNECTOR_INFLIGHT events in flight the rate is that window per round
                # trip, and a whole batch mapped in one go stretched the round trip.
                await anyio.lowlevel.checkpoint()

    async def _forward_slice(self, messages: list[Message]) -> None:
        events: list[NewEvent] = []
        refused: list[tuple[NewEvent, str]] = []
        readings: list[Reading] = []
        discovered = False
        for message in messages:
            if self.discovery is not None and self.discovery.owns(message.topic):
                # Configuration, not telemetry: read whatever FORWARD_RETAINED says.
                self.count("discovery_messages")
                discovered |= self.discovery.take(message.topic, message.payload)
                continue
            try:
                self._take(message, events, refused, readings)
            except Exception as exc:
                # A bug on one message must not stop the adapter (it would come back from
                # the broker at every start): keep it as a dead letter, go on.
                self.count("internal_errors")
                log.exception("could not process a message on %s", message.topic)
                refused.append((self._raw_event(message), f"internal error: {exc!r}"))
        self.sender.offer(self.outbox.add(events))
        self.outbox.add_dead_letters(refused)
        self.mqtt.ack(messages)
        await self.recorder.put(readings)
        if discovered:
            await self._apply_discovery()

    def _take(
        self,
        message: Message,
        events: list[NewEvent],
        refused: list[tuple[NewEvent, str]],
        readings: list[Reading],
    ) -> None:
        self.count("received")
        if self._is_own(message):
            self.count("own_skipped")
            return
        self._resolve_replies(message)
        if not self._forward_retained(message):
            self.count("retained_skipped")
            return
        outcome = self.mappings.map(message.topic, message.payload, message.received)
        if outcome is None:
            self.count("unmapped")
            self._note_unmapped(message.topic)
        elif isinstance(outcome, Rejected):
            self.count("rejected")
            self.problems.warning(
                outcome.rule.id,
                "rule %s: message on %s rejected: %s",
                outcome.rule.id,
                message.topic,
                outcome.reason,
            )
            raw = self._raw_event(message)
            refused.append(
                (
                    NewEvent(
                        outcome.device,
                        outcome.rule.service,
                        raw.data,
                        raw.metadata,
                        outcome.rule.id,
                    ),
                    outcome.reason,
                )
            )
        elif isinstance(outcome, AvailabilityChange):
            self._availability(outcome)
        else:
            self.count("mapped")
            if outcome.missing:
                self.count("readings_missing")
            device = outcome.device
            readings.append(
                # The event's time has millisecond precision (D10); the history keeps the
                # same instant, so the adapter's and the sandbox's averages agree exactly.
                Reading(
                    device.uri,
                    millis_timestamp(outcome.time),
                    outcome.readings,
                    outcome.rule.primary,
                    device.name,
                    device.device_type,
                )
            )
            events.append(
                NewEvent(
                    outcome.device, outcome.service, outcome.data, outcome.metadata, outcome.rule.id
                )
            )

    def _note_unmapped(self, topic: str) -> None:
        self.unmapped_topics[topic] += 1
        if len(self.unmapped_topics) > UNMAPPED_TOPICS_KEPT * 5:
            # Bounded memory: keep the most frequent ones (a chatty broker has many topics).
            self.unmapped_topics = Counter(
                dict(self.unmapped_topics.most_common(UNMAPPED_TOPICS_KEPT))
            )

    def platform_up_for(self) -> float | None:
        since = self.connector.ready_since
        return None if since is None else round(time.monotonic() - since, 1)

    def oldest_waiting(self) -> float | None:
        """Seconds the oldest event has waited in the outbox: how far behind we are."""
        oldest = self.outbox.oldest_created()
        return None if oldest is None else round(max(0.0, time.time() - oldest), 1)

    def platform_down_for(self) -> float | None:
        since = self.connector.down_since
        return None if since is None else time.monotonic() - since

    def _is_own(self, message: Message) -> bool:
        """The adapter's own publications coming back (MQTT 3.1.1 has no No Local)."""
        if message.topic == self.settings.mqtt_status_topic:
            return True
        key = (message.topic, message.payload)
        expiry = self._published.get(key)
        if expiry is None:
            return False
        del self._published[key]
        return expiry >= time.monotonic()

    def _remember_published(self, topic: str, payload: str) -> None:
        now = time.monotonic()
        if len(self._published) > 1000:
            self._published = {k: t for k, t in self._published.items() if t >= now}
        self._published[(topic, payload.encode("utf-8"))] = now + OWN_ECHO_WINDOW

    @staticmethod
    def _raw_event(message: Message) -> NewEvent:
        data, encoding = payload_text(message.payload)
        metadata = event_metadata(
            time=message.received,
            topic=message.topic,
            readings={},
            primary=None,
            encoding=encoding,
        )
        return NewEvent(Device("unmapped", message.topic, ""), "", data, metadata)

    def _forward_retained(self, message: Message) -> bool:
        policy = self.settings.forward_retained
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

    def _resolve_replies(self, message: Message) -> None:
        for waiter in self.replies:
            if waiter.message is not None or waiter.plan.reply_topic != message.topic:
                continue
            data = self.mappings.reply_data(waiter.plan, message.payload)
            if data is not None:  # the first reply that matches this command's predicate
                waiter.message, waiter.data = message, data
                waiter.done.set()

    async def handle_commands(self, tg: TaskGroup) -> None:
        async for command in self.connector.commands():
            tg.start_soon(self._run_command, command)

    async def _run_command(self, command: Command) -> None:
        self.count("commands")
        data, metadata = await self._execute(command)
        try:
            await self.connector.respond(command, data, metadata)
        except ConnectorError as exc:
            log.warning("response to the command for %s not delivered: %s", command.device_uri, exc)

    def _correlation(self) -> dict[str, str]:
        self._next_id += 1
        return {"id": str(self._next_id), "transaction": secrets.token_hex(4)}

    async def _execute(self, command: Command) -> tuple[str, str]:
        now = format_time(datetime.now(UTC))
        plan = self.mappings.plan_command(
            command.device_uri, command.service_uri, command.data, self._correlation()
        )
        if plan is None:
            message = (
                f"no command rule for service {command.service_uri!r} of device "
                f"{command.device_uri!r}"
            )
            log.warning("%s", message)
            return json.dumps({"error": message}), json.dumps({"time": now})
        if self.online.get(command.device_uri) is False:
            message = f"device {command.device_uri!r} is offline"
            return json.dumps({"error": message}), json.dumps({"time": now})
        waiter = ReplyWaiter(plan) if plan.reply_topic is not None else None
        if waiter is not None:
            self.replies.append(waiter)
        try:
            try:
                self._remember_published(plan.topic, plan.payload)
                await self.mqtt.publish(plan.topic, plan.payload, plan.rule.qos)
            except (ConnectionError, PublishRefused, ValueError) as exc:
                log.warning("command for %s not published: %s", command.device_uri, exc)
                return json.dumps({"error": str(exc)}), json.dumps({"time": now})
            log.info(
                "command %s for %s published to %s",
                command.service_uri,
                command.device_uri,
                plan.topic,
            )
            meta = {"time": now, "topic": plan.topic}
            if waiter is None or plan.rule.reply is None:
                return json.dumps({"status": "published", "topic": plan.topic}), json.dumps(meta)
            timeout = plan.rule.reply.timeout
            with anyio.move_on_after(timeout):
                await waiter.done.wait()
            if waiter.message is None or waiter.data is None:
                self.count("command_timeouts")
                error = f"no reply on {plan.reply_topic} within {timeout:g} s"
                return json.dumps({"error": error, "topic": plan.topic}), json.dumps(meta)
            meta.update(
                reply_topic=waiter.message.topic,
                reply_time=format_time(waiter.message.received),
            )
            return waiter.data, json.dumps(meta)
        finally:
            if waiter is not None:
                self.replies.remove(waiter)


MAPPING_POLL = 0.5  # seconds between looks at the mapping directory


def mapping_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, modification times and sizes of the mapping files: cheap to compare."""
    entries = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def subscription_filters(mappings: MappingSet) -> list[str]:
    filters = set(mappings.filters)
    for command in mappings.commands:
        if command.reply is not None:
            filters.add(TopicPattern.compile(command.reply.topic).mqtt_filter)
    return sorted(filters)


async def run(settings: Any, mappings: MappingSet) -> None:
    state_dir = settings.adapter_state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    # Versions up to 0.1.0 kept compiled mapping files here; nothing reads them any more.
    shutil.rmtree(state_dir / "mappings-cache", ignore_errors=True)
    client_id = settings.mqtt_client_id or stable_client_id(state_dir)
    connector_config = ConnectorConfig.from_settings(settings, state_dir=state_dir / "connector")
    discovery = None
    if settings.discovery_tasmota is not None or settings.discovery_homeassistant is not None:
        discovery = DiscoverySource(
            settings.discovery_tasmota,
            settings.discovery_homeassistant,
            state_dir,
            settings.discovery_settle,
        )
    hand_written = mappings
    if discovery is not None:
        mappings = discovery.merged(hand_written)
    filters = [*subscription_filters(mappings), *(discovery.filters() if discovery else [])]
    mqtt = MqttLink(settings, client_id, filters, state_dir=state_dir)
    outbox = Outbox(
        state_dir / "outbox.sqlite3", settings.outbox_max_events, settings.outbox_max_age
    )
    history = HistoryStore(state_dir / "history.sqlite3", settings.history_retention)
    # The writer's own connection, used only on its worker thread.
    history_writes = HistoryStore(state_dir / "history.sqlite3", settings.history_retention)
    recorder = HistoryWriter(history_writes)
    if len(outbox):
        log.info("resuming with %d events in the outbox", len(outbox))
    # What start-up made (modules, mappings, settings) lives as long as the process: out of
    # the collector's way, or every full collection walks it (20-30 ms pauses of the loop,
    # about three per 10 s at 1,000 messages/s). Frozen without a collection first: loading
    # makes no cycles, and with 10,000 rules that collection alone took 85 ms of start-up.
    gc.freeze()
    # A message allocates dozens of containers, nearly all freed by reference counting:
    # the default young-generation threshold (700) ran a collection every dozen messages.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    try:
        async with Connector(connector_config) as connector, anyio.create_task_group() as tg:
            sender = Sender(outbox, connector, settings.connector_inflight)
            adapter = Adapter(
                settings,
                mappings,
                connector,
                mqtt,
                outbox,
                sender,
                history,
                recorder,
                hand_written,
                discovery,
            )
            if settings.adapter_http is not None:
                # Imported only to serve (prometheus_client, h11).
                from adapter.api import Api

                token = settings.adapter_http_token
                api = Api(adapter, token.get() if token else None)
                sender.on_ack = api.metrics.latency.observe
                tg.start_soon(api.serve, *settings.adapter_http)
            tg.start_soon(sender.run)
            tg.start_soon(_expire, outbox)
            async with anyio.create_task_group() as intake:
                intake.start_soon(_stop_on_signal, intake)
                intake.start_soon(mqtt.run)
                intake.start_soon(adapter.forward)
                intake.start_soon(recorder.run)
                intake.start_soon(adapter.handle_commands, intake)
                intake.start_soon(adapter.watch_mappings)
                if discovery is not None:
                    intake.start_soon(adapter.watch_discovery)
                shown = ", ".join(mqtt.filters[:10]) or "-"
                more = f" and {len(mqtt.filters) - 10} more" if len(mqtt.filters) > 10 else ""
                log.info(
                    "adapter running: %d rules, %d command rules, subscribed to %s%s",
                    len(mappings.rules),
                    len(mappings.commands),
                    shown,
                    more,
                )
            # No more messages are taken; what is in flight gets a few seconds to finish.
            await sender.drain(SHUTDOWN_GRACE)
            log.info("stopped; %d events stay in the outbox for the next start", len(outbox))
            tg.cancel_scope.cancel()
    finally:
        outbox.close()
        history.close()
        history_writes.close()


FORWARD_BATCH = 256
GC_YOUNG_THRESHOLD = 5_000
FORWARD_SLICE = 32  # messages mapped, stored and acknowledged between looks at the websocket
UNMAPPED_TOPICS_KEPT = 1000
OWN_ECHO_WINDOW = 10.0  # seconds in which a message equal to one we published is ours
SHUTDOWN_GRACE = 5.0


async def _expire(outbox: Outbox) -> None:
    # The history's old readings are deleted by its writer (HistoryWriter).
    while True:
        outbox.expire()
        await anyio.sleep(60)


async def _stop_on_signal(tg: TaskGroup) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; stopping", signal.Signals(signum).name)
            tg.cancel_scope.cancel()
            return
