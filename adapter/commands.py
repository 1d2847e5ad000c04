"""The way back: a platform command becomes an MQTT publish (never retained), the
device's reply (matched by the pipeline's `Replies`) becomes the command's response.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup

from adapter.mapping import MappingSet
from adapter.mapping.eventparts import format_time
from adapter.mapping.rules import CommandRefused
from adapter.mqtt import PublishRefused
from adapter.pipeline import Replies
from adapter.sepl import Command, ConnectorError

log = logging.getLogger("adapter")


Publish = Callable[[str, str, int], Awaitable[None]]
Respond = Callable[[Command, str | None, str | None], Awaitable[None]]


class CommandHandler:
    def __init__(
        self,
        *,
        commands: Callable[[], AsyncIterator[Command]],
        respond: Respond,
        publish: Publish,
        mappings: Callable[[], MappingSet],
        online: Callable[[str], bool | None],
        replies: Replies,
        count: Callable[[str], None],
        device_type: Callable[[str], str | None] = lambda uri: None,
        channels: Callable[[str], Sequence[str]] = lambda uri: (),
    ) -> None:
        self.commands = commands
        self.respond = respond
        self.publish = publish
        self.mappings = mappings
        self.online = online
        self.replies = replies
        self.count = count
        self.device_type = device_type
        self.channels = channels
        self._next_id = 0

    async def run(self, tg: TaskGroup) -> None:
        """Every command in a task of its own (a slow device must not hold the others)."""
        async for command in self.commands():
            tg.start_soon(self._handle, command)

    async def _handle(self, command: Command) -> None:
        self.count("commands")
        data, metadata = await self.execute(command)
        try:
            await self.respond(command, data, metadata)
        except ConnectorError as exc:
            log.warning("response to the command for %s not delivered: %s", command.device_uri, exc)

    def _correlation(self) -> dict[str, str]:
        self._next_id += 1
        return {"id": str(self._next_id), "transaction": secrets.token_hex(4)}

    async def execute(self, command: Command) -> tuple[str, str]:
        """The response's data and metadata: the device's reply, or what went wrong."""
        now = format_time(datetime.now(UTC))
        try:
            plan = self.mappings().plan_command(
                command.device_uri,
                command.service_uri,
                command.data,
                self._correlation(),
                self.device_type(command.device_uri),
                self.channels(command.device_uri),
            )
        except CommandRefused as exc:
            message = f"command {command.service_uri!r} for {command.device_uri!r}: {exc}"
            log.warning("%s", message)
            return json.dumps({"error": message}), json.dumps({"time": now})
        if plan is None:
            message = (
                f"no command rule for service {command.service_uri!r} of device "
                f"{command.device_uri!r}"
            )
            log.warning("%s", message)
            return json.dumps({"error": message}), json.dumps({"time": now})
        if self.online(command.device_uri) is False:
            message = f"device {command.device_uri!r} is offline"
            return json.dumps({"error": message}), json.dumps({"time": now})
        waiter = self.replies.expect(plan) if plan.reply_topic is not None else None
        try:
            try:
                self.replies.published(plan.topic, plan.payload)
                await self.publish(plan.topic, plan.payload, plan.rule.qos)
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
            if waiter.received is None or waiter.data is None:
                self.count("command_timeouts")
                error = f"no reply on {plan.reply_topic} within {timeout:g} s"
                return json.dumps({"error": error, "topic": plan.topic}), json.dumps(meta)
            meta.update(reply_topic=waiter.topic, reply_time=format_time(waiter.received))
            return waiter.data, json.dumps(meta)
        finally:
            if waiter is not None:
                self.replies.forget(waiter)
