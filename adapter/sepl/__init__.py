"""SEPL connector client library: pure protocol core plus a websocket transport shell."""

from adapter.sepl.blocking import BlockingConnector
from adapter.sepl.client import (
    Connector,
    ConnectorConfig,
    ConnectorError,
    DeviceQuarantined,
    EventRejected,
    HandshakeFailed,
    LinkDown,
)
from adapter.sepl.device import Device, gateway_hash
from adapter.sepl.envelope import ProtocolError
from adapter.sepl.messages import Command

__all__ = [
    "BlockingConnector",
    "Command",
    "Connector",
    "ConnectorConfig",
    "ConnectorError",
    "Device",
    "DeviceQuarantined",
    "EventRejected",
    "HandshakeFailed",
    "LinkDown",
    "ProtocolError",
    "gateway_hash",
]
