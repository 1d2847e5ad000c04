"""The adapter process: MQTT in, mappings, SEPL events out; SEPL commands in, MQTT out.

One anyio task group owns every task: the MQTT link, the forwarder and the command
handler. SIGINT/SIGTERM cancel the group, and each task cleans up on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from adapter import config
from adapter.mapping import MappingError, MappingSet, load_directory
from adapter.mqtt import Message, MqttLink, PublishRefused, stable_client_id
from adapter.sepl import Command, Connector, ConnectorConfig, ConnectorError, LinkDown
from adapter.sepl.messages import format_time
from adapter.topic import TopicPattern

log = logging.getLogger("adapter")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The websockets debug log prints whole frames, the credentials frame among them (D3).
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))


def main(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args)
    except config.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.loglevel)
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
    topic: str
    done: anyio.Event = field(default_factory=anyio.Event)
    message: Message | None = None


@dataclass
class Adapter:
    settings: Any
    mappings: MappingSet
    connector: Connector
    mqtt: MqttLink
    replies: list[ReplyWaiter] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def forward(self) -> None:
        async for message in self.mqtt.messages:
            self._resolve_replies(message)
            mapped = self.mappings.map(message.topic, message.payload, message.received)
            if mapped is None:
                self.count("unmapped")
                continue
            self.count("mapped")
            while True:
                try:
                    await self.connector.send_event(
                        mapped.device, mapped.service, mapped.data, mapped.metadata
                    )
                    self.count("acknowledged")
                    break
                except LinkDown as exc:
                    log.debug("event for %s waits for the link: %s", mapped.device.uri, exc)
                    await self.connector.wait_ready()
                except ConnectorError as exc:
                    self.count("rejected")
                    log.warning(
                        "event of %s from %s not delivered: %s",
                        mapped.device.uri,
                        message.topic,
                        exc,
                    )
                    break

    def _resolve_replies(self, message: Message) -> None:
        for waiter in self.replies:
            if waiter.message is None and waiter.topic == message.topic:
                waiter.message = message
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

    async def _execute(self, command: Command) -> tuple[str, str]:
        now = format_time(datetime.now(UTC))
        plan = self.mappings.plan_command(command.device_uri, command.service_uri, command.data)
        if plan is None:
            message = (
                f"no command rule for service {command.service_uri!r} of device "
                f"{command.device_uri!r}"
            )
            log.warning("%s", message)
            return json.dumps({"error": message}), json.dumps({"time": now})
        waiter = None
        if plan.reply_topic is not None:
            waiter = ReplyWaiter(plan.reply_topic)
            self.replies.append(waiter)
        try:
            try:
                await self.mqtt.publish(plan.topic, plan.payload, plan.rule.qos)
            except (ConnectionError, PublishRefused) as exc:
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
            with anyio.move_on_after(plan.rule.reply.timeout):
                await waiter.done.wait()
            if waiter.message is None:
                return (
                    json.dumps(
                        {
                            "error": f"no reply on {plan.reply_topic} within "
                            f"{plan.rule.reply.timeout:g} s",
                            "topic": plan.topic,
                        }
                    ),
                    json.dumps(meta),
                )
            meta.update(
                reply_topic=waiter.message.topic, reply_time=format_time(waiter.message.received)
            )
            return waiter.message.payload.decode("utf-8", "replace"), json.dumps(meta)
        finally:
            if waiter is not None:
                self.replies.remove(waiter)


def subscription_filters(mappings: MappingSet) -> list[str]:
    filters = set(mappings.filters)
    for command in mappings.commands:
        if command.reply is not None:
            filters.add(TopicPattern.compile(command.reply.topic).mqtt_filter)
    return sorted(filters)


async def run(settings: Any, mappings: MappingSet) -> None:
    state_dir = settings.adapter_state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    client_id = settings.mqtt_client_id or stable_client_id(state_dir)
    connector_config = ConnectorConfig.from_settings(settings, state_dir=state_dir / "connector")
    mqtt = MqttLink(settings, client_id, subscription_filters(mappings))
    async with Connector(connector_config) as connector, anyio.create_task_group() as tg:
        adapter = Adapter(settings, mappings, connector, mqtt)
        tg.start_soon(_stop_on_signal, tg)
        tg.start_soon(mqtt.run)
        tg.start_soon(adapter.forward)
        tg.start_soon(adapter.handle_commands, tg)
        log.info(
            "adapter running: %d rules, %d command rules, subscribed to %s",
            len(mappings.rules),
            len(mappings.commands),
            ", ".join(mqtt.filters) or "-",
        )


async def _stop_on_signal(tg: TaskGroup) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s; stopping", signal.Signals(signum).name)
            tg.cancel_scope.cancel()
            return
