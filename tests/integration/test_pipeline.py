"""The pipeline (adapter/pipeline.py) with a real outbox file: each slice is stored before
it is acknowledged, and the acknowledgements go out in the order the messages arrived,
dead-lettered, unmapped, skipped and undecodable ones included (MQTT 3.1.1 §4.6)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from adapter.history import Reading
from adapter.livemappings import LiveMappings
from adapter.mapping import load_directory
from adapter.mqtt import Message
from adapter.outbox import Entry, Outbox
from adapter.pipeline import Pipeline, Replies

MAPPING = """
family: test
device_type: "iot#test"
rules:
  - id: reading
    topic: "test/{d}/json"
    device: {uri: "test:{d}", name: "Test {d}"}
    payload: json
    readings: {power: power}
    primary: power
"""
STATUS = "sepl-adapter/status"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class History:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def put(self, readings: list[Reading]) -> None:
        self.readings += readings


def messages(count: int) -> list[Message]:
    """A mix: good readings, payloads that are not JSON, topics no rule takes, the
    adapter's own status, and a topic that was not UTF-8 (the link hands it on as "")."""
    now = datetime.now(UTC)
    out = []
    for n in range(count):
        kind = n % 5
        topic, payload = f"test/d{n % 7}/json", json.dumps({"power": n, "n": n}).encode()
        if kind == 1:
            payload = b"{not json"
        elif kind == 2:
            topic = f"other/{n}"
        elif kind == 3 and n % 10 == 3:
            topic, payload = STATUS, b"online"
        elif kind == 4 and n % 20 == 4:
            topic = ""
        out.append(Message(topic, payload, 1, False, now, n + 1))
    return out


@pytest.mark.anyio
async def test_slices_are_stored_then_acknowledged_in_the_order_received(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "test.yaml").write_text(MAPPING)
    live = LiveMappings(tmp_path / "m", "", load_directory(tmp_path / "m"), None)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    offered: list[Entry] = []
    acked: list[int] = []
    stored_at_ack: list[int] = []

    def ack(batch: Sequence[Message]) -> None:
        stored_at_ack.append(len(outbox) + outbox.dead_letter_count())
        acked.extend(m.mid for m in batch)

    history = History()
    pipeline = Pipeline(
        mappings=live,
        outbox=outbox,
        offer=offered.extend,
        ack=ack,
        history=history,
        replies=Replies(),
        status_topic=STATUS,
        forward_retained="all",
    )
    sent = messages(300)
    with anyio.fail_after(10):
        for start in range(0, len(sent), 100):
            await pipeline.deliver(sent[start : start + 100])

    assert acked == [m.mid for m in sent]  # every message, in order, once
    good = [m for m in sent if m.topic.endswith("/json") and m.payload != b"{not json"]
    bad = [m for m in sent if m.payload == b"{not json" and m.topic.endswith("/json")]
    assert len(outbox) == len(offered) == len(good)
    assert [json.loads(e.data)["n"] for e in offered] == [json.loads(m.payload)["n"] for m in good]
    assert outbox.dead_letter_count() == len(bad)
    # Each slice's rows were in the outbox before its acknowledgement: the count seen at
    # every ack grows, and the last one saw everything.
    assert stored_at_ack == sorted(stored_at_ack)
    assert stored_at_ack[-1] == len(good) + len(bad)
    assert [r.values["power"] for r in history.readings] == [
        json.loads(m.payload)["power"] for m in good
    ]
    counts = pipeline.status().counts
    assert counts["mapped"] == len(good) and counts["rejected"] == len(bad)
    assert counts["own_skipped"] == sum(m.topic == STATUS for m in sent)
    assert counts["unmapped"] == sum(m.topic.startswith("other/") for m in sent)
    outbox.close()
