"""Devices as the SEPL connector sees them, and the gateway hash (protocol Part 2 §2.7).

The hash algorithm reproduces the v3/v4 client exactly, quirks included: no separators
between fields (so ("ab", "c") and ("a", "bc") collide) and tag order matters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

RESERVED_TAG_KEYS = frozenset({"device_name", "device_type"})
EMPTY_GATEWAY_HASH = hashlib.sha1(b"").hexdigest()


def normalise_tag_text(text: str) -> str:
    """Tags travel as "key:value" and are stored joined by ';' — neither may appear (D11)."""
    return text.replace(":", "_").replace(";", "_").strip()


@dataclass(frozen=True, slots=True)  # slots: thousands of them live in caches
class Device:
    uri: str
    name: str
    device_type: str
    tags: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def create(
        cls, uri: str, name: str, device_type: str, tags: Mapping[str, str] | None = None
    ) -> Device:
        return cls(uri, name, device_type, tuple((tags or {}).items()))

    def validate(self) -> None:
        if not self.uri:
            raise ValueError("device uri must not be empty")
        for key, value in self.tags:
            for text in (key, value):
                if ":" in text or ";" in text:
                    raise ValueError(f"tag {key!r} of device {self.uri!r} contains ':' or ';'")
            if key in RESERVED_TAG_KEYS:
                raise ValueError(f"tag key {key!r} of device {self.uri!r} is reserved")

    @property
    def wire_tags(self) -> list[str]:
        return [f"{key}:{value}" for key, value in self.tags]

    def put_payload(self) -> dict[str, object]:
        return {
            "uri": self.uri,
            "name": self.name,
            "iot_type": self.device_type,
            "tags": self.wire_tags,
        }

    def digest(self) -> str:
        text = self.uri + self.device_type + self.name
        text += "".join(key + value for key, value in self.tags)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()


def gateway_hash(devices: Iterable[Device]) -> str:
    digests = sorted(device.digest() for device in devices)
    return hashlib.sha1("".join(digests).encode("utf-8")).hexdigest()
