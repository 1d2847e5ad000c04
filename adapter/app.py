"""The adapter process: builds the parts and wires them into one anyio task group.

A message's way: the MQTT link (mqtt.py) reads a batch and hands it to the pipeline
(pipeline.py), which maps it (mapping/), stores events in the outbox (outbox.py) and
acknowledges the batch to the broker; the sender (delivery.py) takes them to the SEPL
connector (sepl/). Commands come back through commands.py. SIGINT/SIGTERM stop the
intake; what is in flight gets a few seconds, then every task ends.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup

from adapter import config, statedir
from adapter.commands import CommandHandler
from adapter.config import Settings
from adapter.delivery import Sender
from adapter.discovery import DiscoverySource
from adapter.history import HistoryStore, HistoryWriter
from adapter.livemappings import LiveMappings
from adapter.mapping import MappingError, MappingSet, load_directory
from adapter.migrations import CorruptDatabase, move_aside
from adapter.mqtt import MqttLink, MqttTlsError, tls_context
from adapter.outbox import Outbox
from adapter.pipeline import DISK_RETRY, Pipeline, Replies
from adapter.sepl import Connector, ConnectorConfig, ConnectorError, Device
from adapter.sqlitedb import disk_full
from adapter.stateupgrade import upgrade_state_dir
from adapter.status import PlatformStatus, StatusBoard

T = TypeVar("T")
log = logging.getLogger("adapter")

GC_YOUNG_THRESHOLD = 5_000
SHUTDOWN_GRACE = 5.0


def setup_logging(level: str, fmt: str | None = None, instance: str = "") -> None:
    # stderr, text or JSON lines (LOGFORMAT), no colour off a terminal, websockets capped
    # at INFO (D3): see adapter/logs.py. `fmt` None = the LOGFORMAT environment variable.
    from adapter import logs

    logs.setup(level, fmt, instance=instance)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = config.load_for_command(args)
    if settings is None:
        return 2
    setup_logging(settings.loglevel, settings.logformat, settings.adapter_instance)
    if settings.mqtt_tls and settings.mqtt_tls_insecure:
        log.warning("MQTT_TLS_INSECURE is set: the broker's certificate is not checked")
    if settings.connector_tls_insecure:
        log.warning("CONNECTOR_TLS_INSECURE is set: the platform's certificate is not checked")
    # A client certificate that cannot work stops start-up with one line, as an invalid
    # setting does, instead of a traceback from inside the task group (issue [14]).
    try:
        tls_context(settings)
        ConnectorConfig.from_settings(settings).check_tls()
    except (MqttTlsError, ConnectorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        mappings = load_directory(
            settings.mappings_dir, settings.device_prefix, settings.mappings_max_bytes
        )
    except MappingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not mappings.rules:
        log.warning("no mapping rules in %s: nothing will be forwarded", settings.mappings_dir)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run, settings, mappings)
    return 0


def platform_status(connector: Connector) -> PlatformStatus:
    since, down = connector.ready_since, connector.down_since
    now = time.monotonic()
    return PlatformStatus(
        ready=connector.ready,
        up_for_s=None if since is None else round(now - since, 1),
        down_for_s=None if down is None else round(now - down, 1),
        gateway=connector.gid,
        last_error=connector.last_error,
        devices=connector.devices,
        attached=frozenset(connector.attached),
        quarantined=dict(connector.quarantined),
        connects=connector.stats.connects,
        malformed_frames=connector.stats.malformed_frames,
    )


async def run(settings: Settings, mappings: MappingSet) -> None:
    state_dir = settings.adapter_state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    with statedir.locked(state_dir):
        await _run_locked(settings, mappings, state_dir)


async def _run_locked(settings: Settings, mappings: MappingSet, state_dir: Path) -> None:
    # Versions up to 0.1.0 kept compiled mapping files here; nothing reads them any more.
    shutil.rmtree(state_dir / "mappings-cache", ignore_errors=True)
    await _when_disk_has_room("the state directory", lambda: upgrade_state_dir(state_dir))
    client_id = settings.mqtt_client_id
    if not client_id:
        client_id = await _when_disk_has_room(
            "the MQTT client id",
            lambda: statedir.client_id(state_dir, settings.adapter_instance),
        )
    discovery = None
    if any(
        prefix is not None
        for prefix in (
            settings.discovery_tasmota,
            settings.discovery_homeassistant,
            settings.discovery_zigbee2mqtt,
        )
    ):
        discovery = DiscoverySource(
            settings.discovery_tasmota,
            settings.discovery_homeassistant,
            state_dir,
            settings.discovery_settle,
            settings.discovery_zigbee2mqtt,
        )
    live = LiveMappings(
        settings.mappings_dir,
        settings.device_prefix,
        mappings,
        discovery,
        settings.mappings_max_bytes,
    )

    def wanted_filters() -> list[str]:
        return live.filters(settings.mqtt_topic_prefix, settings.mqtt_shared_group)

    mqtt = MqttLink(settings, client_id, wanted_filters(), state_dir=state_dir)
    outbox = await _when_disk_has_room(
        "the outbox",
        lambda: Outbox(
            state_dir / "outbox.sqlite3", settings.outbox_max_events, settings.outbox_max_age
        ),
    )
    history = await _when_disk_has_room(
        "the history",
        lambda: open_history(state_dir / "history.sqlite3", settings.history_retention),
    )
    # The writer's own connection, used only on its worker thread.
    history_writes = HistoryStore(
        state_dir / "history.sqlite3", settings.history_retention, settings.history_max_bytes
    )
    recorder = HistoryWriter(history_writes)
    if len(outbox):
        log.info("resuming with %d events in the outbox", len(outbox))
    # What start-up made (modules, mappings, settings) lives as long as the process: out of
    # the collector's way, or every full collection walks it (20-30 ms pauses of the loop,
    # about three per 10 s at 1,000 messages/s).
    gc.freeze()
    # A message allocates dozens of containers, nearly all freed by reference counting:
    # the default young-generation threshold (700) ran a collection every dozen messages.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    connector_config = ConnectorConfig.from_settings(settings, state_dir=state_dir / "connector")
    try:
        async with Connector(connector_config) as connector, anyio.create_task_group() as tg:
            sender = Sender(
                outbox,
                connector,
                settings.connector_inflight,
                event_max_bytes=settings.event_max_bytes,
            )
            replies = Replies()
            pipeline = Pipeline(
                mappings=live,
                outbox=outbox,
                offer=sender.offer,
                ack=mqtt.ack,
                history=recorder,
                replies=replies,
                status_topic=settings.mqtt_status_topic,
                forward_retained=settings.forward_retained,
                event_max_bytes=settings.event_max_bytes,
                on_disk_full=mqtt.hold,
                owns=None
                if settings.adapter_partition is None
                else settings.adapter_partition.owns,
            )
            commands = CommandHandler(
                commands=connector.commands,
                respond=connector.respond,
                publish=mqtt.publish,
                mappings=lambda: live.current,
                online=lambda uri: pipeline.online.get(uri),
                replies=replies,
                count=pipeline.count,
                device_type=lambda uri: _type_of(connector.devices.get(uri)),
                channels=lambda uri: history.channels(uri),
            )

            async def mappings_changed(new: MappingSet, removed: Sequence[str]) -> None:
                mqtt.set_filters(wanted_filters())
                await release_devices(connector, new, removed)

            live.on_change = mappings_changed
            if settings.adapter_http is not None:
                # Imported only to serve (prometheus_client, h11).
                from adapter.api import Api

                board = StatusBoard(
                    mqtt=mqtt.status,
                    pipeline=pipeline.status,
                    outbox=outbox.status,
                    delivery=sender.status,
                    platform=lambda: platform_status(connector),
                    mappings=live.status,
                    history=recorder.status,
                )
                token = settings.adapter_http_token
                api = Api(
                    board,
                    history,
                    lambda: live.current,
                    token.get() if token else None,
                    hosts=settings.adapter_http_hosts,
                )
                tg.start_soon(api.serve, *settings.adapter_http)
            tg.start_soon(sender.run)
            tg.start_soon(_expire, outbox)
            async with anyio.create_task_group() as intake:
                intake.start_soon(_stop_on_signal, intake)
                intake.start_soon(mqtt.run, pipeline.deliver)
                intake.start_soon(recorder.run)
                intake.start_soon(commands.run, intake)
                intake.start_soon(live.watch_files)
                intake.start_soon(live.watch_discovery)
                shown = ", ".join(mqtt.filters[:10]) or "-"
                more = f" and {len(mqtt.filters) - 10} more" if len(mqtt.filters) > 10 else ""
                log.info(
                    "adapter running: %d rules, %d command rules,%s subscribed to %s%s",
                    len(live.current.rules),
                    len(live.current.commands),
                    partition_words(settings),
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


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


async def _when_disk_has_room(what: str, open_file: Callable[[], T]) -> T:
    """`open_file()`, waiting while the disk is full (a line a minute) instead of exiting:
    under systemd an exit on a full disk was a crash loop (issue [14])."""
    logged = -60.0
    while True:
        try:
            return open_file()
        except (sqlite3.Error, OSError) as exc:
            if not (disk_full(exc) or getattr(exc, "errno", None) in _NO_ROOM):
                raise
            now = time.monotonic()
            if now - logged >= 60.0:
                logged = now
                log.warning("cannot open %s: the disk is full (%s); waiting for room", what, exc)
            await anyio.sleep(DISK_RETRY)


def partition_words(settings: Settings) -> str:
    """How a fleet's instance reads device topics, for the start-up line."""
    words = []
    if settings.mqtt_topic_prefix:
        words.append(f"device topics under {settings.mqtt_topic_prefix}")
    if settings.mqtt_shared_group:
        words.append(f"in shared group {settings.mqtt_shared_group}")
    if settings.adapter_partition is not None:
        words.append(f"forwarding the devices of partition {settings.adapter_partition}")
    return f" {' '.join(words)}," if words else ""


def open_history(path: Path, retention: float) -> HistoryStore:
    """The history; a damaged one is moved aside and a new one started: it only serves
    averages and device state, and must not keep events from being forwarded."""
    try:
        return HistoryStore(path, retention)
    except CorruptDatabase as exc:
        aside = move_aside(path)
        log.error("%s: moved to %s; a new history starts, forwarding goes on", exc, aside)
        return HistoryStore(path, retention)


async def release_devices(connector: Connector, new: MappingSet, removed: Sequence[str]) -> None:
    """Devices no rule makes any more (and those discovery removed) leave the gateway."""
    gone = [uri for uri in connector.devices if not new.produces(uri)]
    gone += [uri for uri in removed if uri in connector.devices and uri not in gone]
    if not gone:
        return
    log.info("no rule makes %s any more: disconnecting", ", ".join(sorted(gone)))
    try:
        await connector.unregister(gone)
    except ConnectorError as exc:
        log.warning("disconnecting %s failed: %s", ", ".join(gone), exc)


async def _expire(outbox: Outbox) -> None:
    # The history's old readings are deleted by its writer (HistoryWriter).
    while True:
        try:
            outbox.expire()
        except sqlite3.Error as exc:
            if not disk_full(exc):
                raise  # a full disk: the next round deletes them
        await anyio.sleep(60)


async def _stop_on_signal(tg: TaskGroup) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; stopping", signal.Signals(signum).name)
            tg.cancel_scope.cancel()
            return


def _type_of(device: Device | None) -> str | None:
    return None if device is None else device.device_type
