"""Hand-off of MQTT messages from paho's network thread to the event loop.

One `anyio.from_thread.run` per message (a future, a lock and a thread wake-up each) cost
more than mapping the message. Here the thread appends to a deque and wakes the loop only
when the loop is waiting; the loop takes whole batches. A bound holds the network thread
when the loop falls behind, so a slow platform pushes back on the broker, not on memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._space = threading.Event()
        self._space.set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    def bind(self) -> None:
        """Called in the event loop before the producer thread starts."""
        self._loop = asyncio.get_running_loop()

    def put(self, item: T) -> bool:
        """From the producer thread: False once the inbox is closed (shutting down)."""
        while len(self._items) >= self.capacity and not self._closed:
            self._space.clear()
            if len(self._items) >= self.capacity:  # the loop may have drained meanwhile
                self._space.wait(0.5)
        if self._closed:
            return False
        self._items.append(item)
        if self._waiter is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed
                return False
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_batch(self, limit: int) -> list[T]:
        """At least one item (waits for it), at most `limit`; EndOfStream once closed."""
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                if not self._items and not self._closed:  # re-check: no lost wake-up
                    await self._waiter
            finally:
                self._waiter = None
        count = min(limit, len(self._items))
        batch = [self._items.popleft() for _ in range(count)]
        # The producer waits at a full inbox; wake it only once half is free, so that it
        # runs a long burst per wake-up instead of taking the GIL back for every batch.
        if not self._space.is_set() and len(self._items) <= self.capacity // 2:
            self._space.set()
        return batch

    def close(self) -> None:
        """Stop taking items; releases a producer held by the bound."""
        self._closed = True
        self._space.set()
        if self._loop is not None and self._waiter is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)

    def __len__(self) -> int:
        return len(self._items)
