"""Shared fixtures: a real Mosquitto (`broker`), the real sandbox platform (`sandbox`), ports.

Tests that need Mosquitto (they use `broker` or carry the `mosquitto` marker) fail the
whole run at collection with one clear message when it is not installed, instead of each
erroring on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sepl_dev.broker import MOSQUITTO_MISSING, Broker, BrokerError, find_mosquitto
from sepl_dev.broker import free_port as _free_port
from sepl_dev.stack import SandboxProcess

REPO = Path(__file__).resolve().parents[1]
NEEDS_MOSQUITTO = {"broker"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mosquitto: needs the mosquitto binary (started by the test itself)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needing = [
        item
        for item in items
        if item.get_closest_marker("mosquitto") is not None
        or NEEDS_MOSQUITTO.intersection(getattr(item, "fixturenames", ()))
    ]
    if not needing:
        return
    try:
        find_mosquitto()
    except BrokerError:
        raise pytest.UsageError(
            f"{len(needing)} selected tests need a real broker, but {MOSQUITTO_MISSING} "
            "(or run `make test`, which installs it when run as root)"
        ) from None


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 each time it is called."""
    return _free_port


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A started Mosquitto on a free loopback port, files in tmp_path/mosquitto."""
    b = Broker(tmp_path / "mosquitto").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """A started sandbox platform on a free port; state and log in tmp_path."""
    s = SandboxProcess(_free_port(), tmp_path / "sandbox-state", tmp_path / "sandbox.log", cwd=REPO)
    try:
        yield s.start()
    finally:
        s.stop()
