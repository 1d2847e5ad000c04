"""The mapping set in force: the hand-written files, reloaded when they change (hot
reload), merged with the devices that Tasmota and Home Assistant discovery announce.
Whenever the set changes, `on_change` gets the new set and the device URIs discovery
removed, so the adapter can change its subscriptions and release devices no rule makes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio

from adapter.discovery import DiscoverySource
from adapter.mapping import (
    MAX_BYTES,
    MappingError,
    MappingSet,
    directory_signature,
    load_directory,
)
from adapter.status import MappingsStatus
from adapter.topic import TopicPattern, subscriptions

log = logging.getLogger("adapter")

POLL = 0.5  # seconds between looks at the mapping directory

OnChange = Callable[[MappingSet, Sequence[str]], Awaitable[None]]


class LiveMappings:
    def __init__(
        self,
        directory: Path,
        device_prefix: str,
        hand_written: MappingSet,
        discovery: DiscoverySource | None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.device_prefix = device_prefix
        self.hand_written = hand_written
        self.discovery = discovery
        self.current = self._merged()
        self.on_change: OnChange | None = None
        self.reloads = 0
        self.reload_errors = 0

    def status(self) -> MappingsStatus:
        current = self.current
        return MappingsStatus(
            len(current.rules), len(current.commands), self.reloads, self.reload_errors
        )

    def _merged(self) -> MappingSet:
        if self.discovery is None:
            return self.hand_written
        return self.discovery.merged(self.hand_written)

    def filters(self, prefix: str = "", group: str = "") -> list[str]:
        """Every subscription the set needs: its rules' topics and command reply topics
        (device topics: behind a fleet's partition `prefix`, in its shared `group`) and the
        discovery topics."""
        device = set(self.current.filters)
        for command in self.current.commands:
            if command.reply is not None:
                device.add(TopicPattern.compile(command.reply.topic).mqtt_filter)
        discovery = self.discovery.filters() if self.discovery is not None else []
        return subscriptions(device, discovery, prefix, group)

    # --- discovery (the pipeline hands over its messages) --------------------------------

    def owns(self, topic: str) -> bool:
        return self.discovery is not None and self.discovery.owns(topic)

    def take(self, topic: str, payload: bytes) -> bool:
        """A discovery config; True when it changed what discovery generates."""
        return self.discovery is not None and self.discovery.take(topic, payload)

    async def apply_discovery(self) -> None:
        assert self.discovery is not None
        await self._apply(self._merged(), self.discovery.take_removed())

    async def watch_discovery(self) -> None:
        """The settle time: configs of an earlier run not announced again are removed."""
        if self.discovery is None:
            return
        while not self.discovery.settle_due():
            await anyio.sleep(1.0)
        await self.apply_discovery()

    # --- the files -----------------------------------------------------------------------

    async def watch_files(self) -> None:
        """An edited mapping directory takes effect within about a second; an invalid
        edit is logged with its location and the previous mappings stay."""
        signature = directory_signature(self.directory)
        while True:
            await anyio.sleep(POLL)
            current = await anyio.to_thread.run_sync(directory_signature, self.directory)
            if current == signature:
                continue
            signature = current
            try:
                new = await anyio.to_thread.run_sync(
                    load_directory, self.directory, self.device_prefix, self.max_bytes
                )
            except MappingError as exc:
                self.reload_errors += 1
                log.error("mapping change not applied, the previous mappings stay: %s", exc)
                continue
            except Exception:
                # A loader bug must not stop a running adapter over an edited file.
                self.reload_errors += 1
                log.exception("mapping change not applied, the previous mappings stay")
                continue
            self.hand_written = new
            await self._apply(self._merged(), ())

    async def _apply(self, new: MappingSet, removed: Sequence[str]) -> None:
        self.current = new
        self.reloads += 1
        if self.on_change is not None:
            await self.on_change(new, removed)
        log.info("mappings reloaded: %d rules, %d command rules", len(new.rules), len(new.commands))
