"""The hand-written event frame equals the generic encoder's, byte for byte."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from adapter.sepl.envelope import encode_event_request, encode_request
from adapter.sepl.messages import event_payload

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@given(text, text, text, text, text)
def test_event_frame_equals_the_generic_encoding(
    token: str, device: str, service: str, data: str, metadata: str
) -> None:
    fast = encode_event_request(token, device, service, data, metadata)
    generic = encode_request("event", token, event_payload(device, service, data, metadata))
    assert fast == generic


def test_event_frame_of_a_tasmota_reading() -> None:
    data = '{"Time":"2026-11-23T10:00:00","ENERGY":{"Power":42,"Name":"Küche \\"1\\"\\n"}}'
    metadata = json.dumps({"time": "2026-11-23T10:00:00.000Z", "readings": {"power": 42.0}})
    frame = encode_event_request("t-1", "tasmota:küche", "sepl_get", data, metadata)
    assert frame == encode_request(
        "event", "t-1", event_payload("tasmota:küche", "sepl_get", data, metadata)
    )
    assert json.loads(frame)["payload"]["value"][1]["value"] == data
