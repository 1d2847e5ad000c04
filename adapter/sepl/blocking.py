"""A blocking facade over `Connector` for plain scripts (the origin document's Basic
Example style): the async connector runs in a portal thread."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from adapter.sepl.client import Connector, ConnectorConfig
from adapter.sepl.device import Device
from adapter.sepl.messages import Command


class BlockingConnector:
    """`with BlockingConnector() as c: c.register([...]); c.send_event(...)`."""

    def __init__(self, config: ConnectorConfig | None = None) -> None:
        self._config = config if config is not None else ConnectorConfig.from_env()
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None
        self._connector: Connector | None = None
        self._commands: AsyncIterator[Command] | None = None

    def __enter__(self) -> BlockingConnector:
        self._portal = self._stack.enter_context(start_blocking_portal("asyncio"))
        self._connector = self._stack.enter_context(
            self._portal.wrap_async_context_manager(Connector(self._config))
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def _call(self, func: Any, *args: Any) -> Any:
        if self._portal is None or self._connector is None:
            raise RuntimeError("use BlockingConnector in a with-statement")
        return self._portal.call(func, *args)

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            raise RuntimeError("use BlockingConnector in a with-statement")
        return self._connector

    def wait_ready(self, timeout: float | None = None) -> None:
        self._call(self.connector.wait_ready, timeout)

    def register(self, devices: Iterable[Device]) -> None:
        self._call(self.connector.register, list(devices))

    def unregister(self, devices: Iterable[Device | str]) -> None:
        self._call(self.connector.unregister, list(devices))

    def send_event(
        self, device: Device | str, service: str, data: str, metadata: str | None = None
    ) -> None:
        self._call(self.connector.send_event, device, service, data, metadata)

    def receive_command(self, timeout: float | None = None) -> Command | None:
        """The next command, or None when none arrives within `timeout` seconds."""
        return self._call(self._next_command, timeout)  # type: ignore[no-any-return]

    async def _next_command(self, timeout: float | None) -> Command | None:
        if self._commands is None:
            self._commands = self.connector.commands()
        with anyio.move_on_after(timeout):
            return await anext(self._commands)
        return None

    def respond(self, command: Command, data: str | None, metadata: str | None = None) -> None:
        self._call(self.connector.respond, command, data, metadata)
