"""What the SEPL session reports to its caller when a request does not end in a 200."""

from __future__ import annotations

NOT_LISTENING = "not listen to this device"  # the platform's 400 for an unattached device


class ConnectorError(Exception):
    """Base of the errors the connector raises to its caller."""


class LinkDown(ConnectorError):
    """The link dropped (or timed out) before the platform answered; try again later."""


class NotListening(LinkDown):
    """The platform does not listen to the device (the device sets diverged): it is put
    again and the event sent again, once (D8)."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(f"platform does not listen to {uri}")
        self.message = message


class EventRejected(ConnectorError):
    """The platform answered an event (or a response) with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"platform answered {status}: {message}")
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status >= 500


class HandshakeFailed(ConnectorError):
    """The platform did not accept the credentials frame."""


class DeviceQuarantined(ConnectorError):
    """The platform refused to `put` this device (D8); no event is sent for it."""
