"""Reconnect back-off (decision D6): exponential with full jitter, pure."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    minimum: float = 1.0
    maximum: float = 120.0
    # A session must stay ready this long before the back-off forgets earlier failures, so
    # a sync that fails right after a good handshake cannot cause a tight loop.
    stable_after: float = 60.0
    rand: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0

    def ceiling(self) -> float:
        # The exponent is bounded: 2.0**1024 raises OverflowError (1024 failed attempts, a
        # day or so of outage), and 2**64 is past any sensible cap anyway.
        return min(self.maximum, self.minimum * (2.0 ** min(self.attempt + 1, 64)))

    def next_delay(self) -> float:
        """The wait before the next attempt: uniform in [minimum, ceiling]; the first
        ceiling is already twice the minimum so that restarting fleets spread out."""
        ceiling = self.ceiling()
        self.attempt += 1
        return self.minimum + (ceiling - self.minimum) * self.rand()

    def session_ended(self, ready_for: float | None) -> None:
        """Report how long the last session was ready (None: it never became ready)."""
        if ready_for is not None and ready_for >= self.stable_after:
            self.attempt = 0
