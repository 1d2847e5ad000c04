"""The pure SEPL protocol core: hash, envelope codec, messages, lookup, back-off, state.

The §4 example exchange of the protocol reference is replayed in four directions (client
encoders, server encoders, the sandbox platform core, client decoders), so a bug shared by
the client and the sandbox cannot hide behind their agreeing with each other.

No sockets, no sleeps: everything here is the sans-I/O core.
"""

# The §4 transcript is kept verbatim, one frame a line, so its lines are long.
# ruff: noqa: E501

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.mapping.eventparts import (
    PIECE,
    event_metadata,
    format_time,
    payload_text,
    payload_text_pieces,
)
from adapter.sandbox.store import SandboxStore
from adapter.sepl import envelope
from adapter.sepl.backoff import Backoff
from adapter.sepl.device import (
    EMPTY_GATEWAY_HASH,
    Device,
    gateway_hash,
    normalise_tag_text,
)
from adapter.sepl.envelope import (
    CLIENT_HANDLERS,
    CREDENTIALS_TOKEN,
    SERVER_HANDLERS,
    Envelope,
    ProtocolError,
    content_type_of,
    decode_client_frame,
    decode_credentials,
    decode_handshake_answer,
    decode_server_frame,
    encode_command,
    encode_credentials,
    encode_request,
    encode_response,
    encode_server_frame,
    go_json,
)
from adapter.sepl.lookup import (
    LookupError_,
    lookup_body,
    parse_lookup_body,
    registration_url,
)
from adapter.sepl.messages import (
    build_command,
    event_payload,
    parse_command,
    parse_event_payload,
    reply_payload,
)
from adapter.sepl.platform import Platform
from adapter.sepl.session import GatewaySession
from adapter.sepl.state import GatewayState
from adapter.statefile import write_atomically

# The team's protocol reference sits beside the checkout (../shared) where there is one.
PROTOCOL_DOC = Path(__file__).resolve().parents[3] / "shared" / "sepl-protocol.md"

# --- the worked example of §2.7 and §4 ---------------------------------------------------

D1_TYPE = "iot#40c41048-3910-468f-ae74-7425dde90963"
D2_TYPE = "iot#d66ec9bc-e37f-4f35-a788-027301aad6c2"
D1 = Device.create("3iguegr9hgh9", "Dummy Meter", D1_TYPE, {"type": "Smart Meter"})
D2 = Device.create("c98b2c1a-ba68", "Dummy Device 2", D2_TYPE)
D1_DIGEST = "77676304e7ff0aac763ac2d37badbdd23bc448c0"
D2_DIGEST = "edb1399f30ee55184df75f49406aade81a645816"
HASH_D1_D2 = "a688dbce54c7f1ea53cfc37e3c49bdf6908e3e0b"
HASH_D1 = "d6adf2993521bcca434b2c5c628985784d1713f2"

GID = "iot#5e1f2a9c-0d4b-4c1e-9a57-2f1c3b7d8e90"
DATA = '{"value": 93.786, "unit": "kWh"}'
TOKENS = {
    "clear": "997630d2-c93c-4f44-a9cf-a44b96ffd3c5",
    "put D1": "777e3644-3259-4e41-962f-efa257e24fbb",
    "put D2": "de56d898-6f02-4619-8aa0-a75f735f9066",
    "commit D1 D2": "da29ea6d-9111-4df9-a833-61f4a6008ed3",
    "event D1": "45eea52a-be28-4717-af3a-3d4bd088f86c",
    "response": "5cd0ef2e-bde3-4a73-a57d-8e0d13fcaaa3",
    "disconnect D2": "0cb1f756-acca-47c9-83b7-5a80f9f450a9",
    "commit D1": "dd2e2199-9527-4874-ae6e-4fb2ba80d7ad",
    "event D2": "b1d3c0de-0000-4000-8000-000000000001",
}
COMMAND = build_command(
    device_uri="3iguegr9hgh9",
    service_uri="sepl_get",
    data=None,
    task_id="59bd2465-6d48-11e7-9b84-02f1c81cd8d8",
    device_instance_id="iot#e17ac518-6068-4f0c-ad65-88796b020705",
    time=1500554317,
    worker_id="3de19f29-1d4f-483e-b4aa-4147e1c0db40",
    output_name="Task_1kmeuz3",
    service_name="sepl_get",
)
NOT_LISTENING_D2 = "error event: not listen to this device {c98b2c1a-ba68 sepl_get [{data 1}]}"

# Verbatim from the protocol reference, Part 2 §4.
TRANSCRIPT_TEXT = r"""
C> {"user": "alice", "pw": "s3cret", "gid": "", "token": "credentials"}
S> {"status":200,"handler":"response","token":"credentials","content_type":"map","payload":{"gid":"iot#5e1f2a9c-0d4b-4c1e-9a57-2f1c3b7d8e90","hash":""}}
C> {"status": 0, "handler": "clear", "token": "997630d2-c93c-4f44-a9cf-a44b96ffd3c5", "content_type": "", "payload": null}
S> {"status":200,"handler":"response","token":"997630d2-c93c-4f44-a9cf-a44b96ffd3c5","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "put", "token": "777e3644-3259-4e41-962f-efa257e24fbb", "content_type": "", "payload": {"uri": "3iguegr9hgh9", "name": "Dummy Meter", "iot_type": "iot#40c41048-3910-468f-ae74-7425dde90963", "tags": ["type:Smart Meter"]}}
S> {"status":200,"handler":"response","token":"777e3644-3259-4e41-962f-efa257e24fbb","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "put", "token": "de56d898-6f02-4619-8aa0-a75f735f9066", "content_type": "", "payload": {"uri": "c98b2c1a-ba68", "name": "Dummy Device 2", "iot_type": "iot#d66ec9bc-e37f-4f35-a788-027301aad6c2", "tags": []}}
S> {"status":200,"handler":"response","token":"de56d898-6f02-4619-8aa0-a75f735f9066","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "commit", "token": "da29ea6d-9111-4df9-a833-61f4a6008ed3", "content_type": "", "payload": "a688dbce54c7f1ea53cfc37e3c49bdf6908e3e0b"}
S> {"status":200,"handler":"response","token":"da29ea6d-9111-4df9-a833-61f4a6008ed3","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "event", "token": "45eea52a-be28-4717-af3a-3d4bd088f86c", "content_type": "", "payload": {"device_uri": "3iguegr9hgh9", "service_uri": "sepl_get", "value": [{"name": "metadata", "value": null}, {"name": "data", "value": "{\"value\": 93.786, \"unit\": \"kWh\"}"}]}}
S> {"status":200,"handler":"response","token":"45eea52a-be28-4717-af3a-3d4bd088f86c","content_type":"string","payload":"ok"}
S> {"status":0,"handler":"command","token":"","content_type":"map","payload":{"device_instance_id":"iot#e17ac518-6068-4f0c-ad65-88796b020705","device_url":"3iguegr9hgh9","output_name":"Task_1kmeuz3","protocol_parts":null,"service_name":"sepl_get","service_url":"sepl_get","task_id":"59bd2465-6d48-11e7-9b84-02f1c81cd8d8","time":"1500554317","worker_id":"3de19f29-1d4f-483e-b4aa-4147e1c0db40"}}
C> {"status": 0, "handler": "response", "token": "5cd0ef2e-bde3-4a73-a57d-8e0d13fcaaa3", "content_type": "map", "payload": {"device_instance_id": "iot#e17ac518-6068-4f0c-ad65-88796b020705", "device_url": "3iguegr9hgh9", "output_name": "Task_1kmeuz3", "protocol_parts": [{"name": "metadata", "value": null}, {"name": "data", "value": "{\"value\": 93.786, \"unit\": \"kWh\"}"}], "service_name": "sepl_get", "service_url": "sepl_get", "task_id": "59bd2465-6d48-11e7-9b84-02f1c81cd8d8", "time": "1500554317", "worker_id": "3de19f29-1d4f-483e-b4aa-4147e1c0db40"}}
S> {"status":200,"handler":"response","token":"5cd0ef2e-bde3-4a73-a57d-8e0d13fcaaa3","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "disconnect", "token": "0cb1f756-acca-47c9-83b7-5a80f9f450a9", "content_type": "", "payload": "c98b2c1a-ba68"}
S> {"status":200,"handler":"response","token":"0cb1f756-acca-47c9-83b7-5a80f9f450a9","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "commit", "token": "dd2e2199-9527-4874-ae6e-4fb2ba80d7ad", "content_type": "", "payload": "d6adf2993521bcca434b2c5c628985784d1713f2"}
S> {"status":200,"handler":"response","token":"dd2e2199-9527-4874-ae6e-4fb2ba80d7ad","content_type":"string","payload":"ok"}
C> {"status": 0, "handler": "event", "token": "b1d3c0de-0000-4000-8000-000000000001", "content_type": "", "payload": {"device_uri": "c98b2c1a-ba68", "service_uri": "sepl_get", "value": [{"name": "data", "value": "1"}]}}
S> {"status":400,"handler":"response","token":"b1d3c0de-0000-4000-8000-000000000001","content_type":"string","payload":"error event: not listen to this device {c98b2c1a-ba68 sepl_get [{data 1}]}"}
"""
TRANSCRIPT: list[tuple[str, str]] = [
    (line[:2], line[3:]) for line in TRANSCRIPT_TEXT.strip().splitlines()
]
CLIENT_LINES = [text for side, text in TRANSCRIPT if side == "C>"]
SERVER_LINES = [text for side, text in TRANSCRIPT if side == "S>"]


def _with_null_metadata(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """§4 shows `"value": null` for the metadata part: what v3/v4 send without metadata.
    Our encoders always send a string there (D10: `event_payload` and `reply_payload` take
    `str`), so the null is patched in after checking the part is the metadata part."""
    assert parts[0] == {"name": "metadata", "value": ""}
    return [{"name": "metadata", "value": None}, *parts[1:]]


def expected_client_frames() -> list[str]:
    """Every `C>` line of §4, produced by our client encoders."""
    event_d1 = event_payload(D1.uri, "sepl_get", DATA, "")
    event_d1["value"] = _with_null_metadata(event_d1["value"])
    reply = reply_payload(parse_command(COMMAND), DATA, "")
    reply["protocol_parts"] = _with_null_metadata(reply["protocol_parts"])
    # The last event carries only a data part; event_payload always sends metadata first,
    # so that frame is built by hand (what the v3/v4 client sends for metadata=None is
    # `null`, not an absent part — this line is the reference's own illustration).
    event_d2 = {
        "device_uri": D2.uri,
        "service_uri": "sepl_get",
        "value": [{"name": "data", "value": "1"}],
    }
    return [
        encode_credentials("alice", "s3cret", ""),
        encode_request("clear", TOKENS["clear"], None),
        encode_request("put", TOKENS["put D1"], D1.put_payload()),
        encode_request("put", TOKENS["put D2"], D2.put_payload()),
        encode_request("commit", TOKENS["commit D1 D2"], gateway_hash([D1, D2])),
        encode_request("event", TOKENS["event D1"], event_d1),
        encode_request("response", TOKENS["response"], reply, content_type="map"),
        encode_request("disconnect", TOKENS["disconnect D2"], D2.uri),
        encode_request("commit", TOKENS["commit D1"], gateway_hash([D1])),
        encode_request("event", TOKENS["event D2"], event_d2),
    ]


def expected_server_frames() -> list[str]:
    """Every `S>` line of §4, produced by our server encoders."""
    ok = [
        encode_response(200, TOKENS[name], "ok")
        for name in ("clear", "put D1", "put D2", "commit D1 D2", "event D1")
    ]
    later_ok = [
        encode_response(200, TOKENS[name], "ok")
        for name in ("response", "disconnect D2", "commit D1")
    ]
    return [
        encode_response(200, CREDENTIALS_TOKEN, {"gid": GID, "hash": ""}),
        *ok,
        encode_command(COMMAND),
        *later_ok,
        encode_response(400, TOKENS["event D2"], NOT_LISTENING_D2),
    ]


# --- 1. hash (§2.7) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "digest"),
    [(D1, D1_DIGEST), (D2, D2_DIGEST)],
    ids=["D1", "D2"],
)
def test_device_digest_of_the_worked_example(device: Device, digest: str) -> None:
    assert device.digest() == digest
    # The algorithm spelt out independently: id, type, name, then key+value, no separators.
    text = device.uri + device.device_type + device.name
    text += "".join(k + v for k, v in device.tags)
    assert hashlib.sha1(text.encode()).hexdigest() == digest


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([D1, D2], HASH_D1_D2),
        ([D2, D1], HASH_D1_D2),
        ([D1], HASH_D1),
        ([], EMPTY_GATEWAY_HASH),
    ],
    ids=["D1+D2", "D2+D1", "D1", "empty"],
)
def test_gateway_hash_of_the_worked_example(devices: list[Device], expected: str) -> None:
    assert gateway_hash(devices) == expected
    assert gateway_hash(iter(devices)) == expected  # any iterable, generators included


def test_empty_gateway_hash_is_sha1_of_nothing() -> None:
    assert EMPTY_GATEWAY_HASH == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert hashlib.sha1(b"").hexdigest() == EMPTY_GATEWAY_HASH


def test_gateway_hash_is_sha1_of_sorted_digests() -> None:
    joined = "".join(sorted([D1_DIGEST, D2_DIGEST]))
    assert hashlib.sha1(joined.encode()).hexdigest() == HASH_D1_D2


def test_tag_order_changes_the_hash() -> None:
    ab = Device.create("u", "n", "t", {"a": "1", "b": "2"})
    ba = Device.create("u", "n", "t", {"b": "2", "a": "1"})
    assert ab.tags != ba.tags
    assert ab.digest() != ba.digest()
    assert gateway_hash([ab]) != gateway_hash([ba])


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (Device("u", "n", "t", (("ab", "c"),)), Device("u", "n", "t", (("a", "bc"),))),
        (Device("u", "n", "t", (("a", "b"), ("c", "d"))), Device("u", "n", "t", (("abc", "d"),))),
        (Device("ab", "", "c"), Device("a", "", "bc")),  # uri|type boundary
        (Device("u", "me", "ty"), Device("u", "e", "tym")),  # type|name boundary
    ],
    ids=["tag key|value", "tag|tag", "uri|type", "type|name"],
)
def test_fields_without_separators_collide(left: Device, right: Device) -> None:
    assert left != right
    assert left.digest() == right.digest()


def test_device_order_does_not_matter() -> None:
    d3 = Device.create("zz", "Third", "iot#x", {"room": "kitchen", "floor": "1"})
    hashes = {gateway_hash(p) for p in itertools.permutations([D1, D2, d3])}
    assert len(hashes) == 1


def test_digest_is_utf8() -> None:
    device = Device.create("küche", "Wärme", "iot#t", {"ort": "Größe"})
    text = "küche" + "iot#t" + "Wärme" + "ort" + "Größe"
    assert device.digest() == hashlib.sha1(text.encode("utf-8")).hexdigest()


def test_wire_tags_keep_insertion_order() -> None:
    device = Device.create("u", "n", "t", {"z": "1", "a": "2"})
    assert device.wire_tags == ["z:1", "a:2"]
    assert device.put_payload() == {
        "uri": "u",
        "name": "n",
        "iot_type": "t",
        "tags": ["z:1", "a:2"],
    }


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (Device.create("", "n", "t"), "uri must not be empty"),
        (Device.create("u", "n", "t", {"a:b": "v"}), "contains ':' or ';'"),
        (Device.create("u", "n", "t", {"a;b": "v"}), "contains ':' or ';'"),
        (Device.create("u", "n", "t", {"k": "v:w"}), "contains ':' or ';'"),
        (Device.create("u", "n", "t", {"k": "v;w"}), "contains ':' or ';'"),
        (Device.create("u", "n", "t", {"device_name": "v"}), "reserved"),
        (Device.create("u", "n", "t", {"device_type": "v"}), "reserved"),
    ],
    ids=["empty uri", "key :", "key ;", "value :", "value ;", "device_name", "device_type"],
)
def test_validate_rejects(device: Device, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        device.validate()


@pytest.mark.parametrize("device", [D1, D2, Device.create("u:x", "na;me", "t", {"dev": "x"})])
def test_validate_accepts(device: Device) -> None:
    device.validate()  # ':' and ';' are only forbidden in tags


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("a:b;c", "a_b_c"), ("  kitchen  ", "kitchen"), ("plain", "plain"), (" :x; ", "_x_")],
)
def test_normalise_tag_text(raw: str, normalised: str) -> None:
    assert normalise_tag_text(raw) == normalised


# --- 2. golden replay of §4 ---------------------------------------------------------------


def test_transcript_is_the_one_of_the_protocol_reference() -> None:
    if not PROTOCOL_DOC.exists():
        pytest.skip(f"{PROTOCOL_DOC} not present")
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split("## 4. Complete example exchange", 1)[1]
    block = section.split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith(("C> ", "S> "))]
    assert lines == TRANSCRIPT_TEXT.strip().splitlines()


def test_transcript_shape() -> None:
    assert len(CLIENT_LINES) == 10
    assert len(SERVER_LINES) == 11


@pytest.mark.parametrize("index", range(10))
def test_client_encoders_produce_every_client_line(index: int) -> None:
    assert expected_client_frames()[index] == CLIENT_LINES[index]


@pytest.mark.parametrize("index", range(11))
def test_server_encoders_produce_every_server_line(index: int) -> None:
    assert expected_server_frames()[index] == SERVER_LINES[index]


def test_event_payload_differs_from_the_reference_only_in_the_null_metadata() -> None:
    sent = json.loads(CLIENT_LINES[5])["payload"]
    ours = event_payload(D1.uri, "sepl_get", DATA, "")
    assert sent["value"][0] == {"name": "metadata", "value": None}
    sent["value"][0]["value"] = ""
    assert ours == sent


def _token_of(client_line: str) -> str:
    token = json.loads(client_line)["token"]
    assert isinstance(token, str)
    return token


def test_client_decoders_read_every_server_line() -> None:
    assert decode_handshake_answer(SERVER_LINES[0]) == (GID, "")
    handshake = decode_server_frame(SERVER_LINES[0])
    assert handshake == Envelope(200, "response", "credentials", "map", {"gid": GID, "hash": ""})

    # Responses answer the client lines in order, command frame excluded.
    responses = [line for line in SERVER_LINES[1:] if '"handler":"command"' not in line]
    for client_line, server_line in zip(CLIENT_LINES[1:], responses, strict=True):
        env = decode_server_frame(server_line)
        expected_status = 400 if client_line is CLIENT_LINES[-1] else 200
        expected_payload = NOT_LISTENING_D2 if expected_status == 400 else "ok"
        assert env == Envelope(
            expected_status, "response", _token_of(client_line), "string", expected_payload
        )
        with pytest.raises(ProtocolError, match="token 'credentials'"):
            decode_handshake_answer(server_line)

    command_env = decode_server_frame(SERVER_LINES[6])
    assert command_env == Envelope(0, "command", "", "map", COMMAND)
    command = parse_command(command_env.payload)
    assert command.device_uri == "3iguegr9hgh9"
    assert command.service_uri == "sepl_get"
    assert command.parts == {}
    assert command.data == ""
    assert command.task_id == "59bd2465-6d48-11e7-9b84-02f1c81cd8d8"
    assert command.raw == COMMAND
    assert list(command.raw) == sorted(command.raw)  # alphabetical, as Go wrote it
    # The reply built from the *decoded* command is the reference's reply line.
    reply = reply_payload(command, DATA, "")
    reply["protocol_parts"] = _with_null_metadata(reply["protocol_parts"])
    assert encode_request("response", TOKENS["response"], reply, "map") == CLIENT_LINES[6]


def test_sandbox_core_answers_every_client_line() -> None:
    """Each `C>` line through the sandbox platform; its answers against the `S>` lines."""
    platform = Platform(
        SandboxStore(":memory:"),
        device_types={D1_TYPE: frozenset({"sepl_get"}), D2_TYPE: frozenset({"sepl_get"})},
        users={"alice": "s3cret"},
    )
    pushed: list[str] = []
    session = platform.open_session(decode_credentials(CLIENT_LINES[0]), pushed.append)

    # Handshake: the gid is the sandbox's own, so compare the structure.
    answer = json.loads(session.handshake_answer())
    reference = json.loads(SERVER_LINES[0])
    assert list(answer) == list(reference)
    assert {k: v for k, v in answer.items() if k != "payload"} == {
        k: v for k, v in reference.items() if k != "payload"
    }
    assert list(answer["payload"]) == ["gid", "hash"]
    assert answer["payload"]["hash"] == ""
    assert re.fullmatch(r"iot#[0-9a-f-]{36}", answer["payload"]["gid"])
    gid = answer["payload"]["gid"]

    server_lines = iter(SERVER_LINES[1:])
    for client_line in CLIENT_LINES[1:]:
        expected = next(server_lines)
        if '"handler":"command"' in expected:
            # The platform pushes the command; ids and times are the sandbox's own.
            record = platform.send_command(D1.uri, "sepl_get", None)
            assert len(pushed) == 1
            got, ref = json.loads(pushed[0]), json.loads(expected)
            assert {k: v for k, v in got.items() if k != "payload"} == {
                k: v for k, v in ref.items() if k != "payload"
            }
            assert list(got["payload"]) == list(ref["payload"])  # same keys, same order
            same = ("device_url", "protocol_parts", "service_name", "service_url")
            assert {k: got["payload"][k] for k in same} == {k: ref["payload"][k] for k in same}
            assert got["payload"]["task_id"] == record.task_id
            assert got["payload"]["device_instance_id"] == session.attached[D1.uri]
            assert re.fullmatch(r"\d+", got["payload"]["time"])
            expected = next(server_lines)
        # Answers echo the client's token, so they match byte for byte.
        assert session.handle(client_line) == [expected], client_line
    assert next(server_lines, None) is None

    # What the exchange left behind on the platform.
    gateway = platform.store.gateway(gid)
    assert gateway is not None
    assert gateway.hash == HASH_D1
    assert gateway.devices == [session.attached[D1.uri]]
    events = platform.store.events()
    assert [(e["device_uri"], e["service_uri"], e["parts"]) for e in events] == [
        (D1.uri, "sepl_get", {"metadata": "", "data": DATA})  # null decodes as "" (§2.9)
    ]
    assert session.errors_in_row == 1
    assert session.close_reason is None

    # "On the next connection the client would send gid … and expect hash d6adf299…".
    again = platform.open_session(
        decode_credentials(encode_credentials("alice", "s3cret", gid)), pushed.append
    )
    assert decode_handshake_answer(again.handshake_answer()) == (gid, HASH_D1)
    assert set(again.attached) == {D1.uri}


def test_sandbox_command_round_trip_with_client_codec() -> None:
    platform = Platform(SandboxStore(":memory:"), device_types={D1_TYPE: frozenset({"sepl_get"})})
    pushed: list[str] = []
    responses: list[Any] = []
    platform.on_response.append(lambda record: responses.append(record.response))
    session = platform.open_session(decode_credentials(CLIENT_LINES[0]), pushed.append)
    assert session.handle(encode_request("put", "t1", D1.put_payload())) == [
        encode_response(200, "t1", "ok")
    ]
    record = platform.send_command(D1.uri, "sepl_get", "on")
    env = decode_server_frame(pushed[0])
    command = parse_command(env.payload)
    assert command.data == "on"
    reply = reply_payload(command, "done", '{"t":1}')
    assert session.handle(encode_request("response", "t2", reply, "map")) == [
        encode_response(200, "t2", "ok")
    ]
    stored = platform.store.command(record.task_id)
    assert stored is not None
    assert stored["response"] == reply
    assert responses == [reply]


# --- 3. envelope codec: properties ----------------------------------------------------------

SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | SAFE_TEXT
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(SAFE_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    handler=st.sampled_from(sorted(CLIENT_HANDLERS)) | SAFE_TEXT,
    token=SAFE_TEXT,
    payload=JSON_VALUES,
    content_type=SAFE_TEXT,
)
def test_request_round_trip(handler: str, token: str, payload: Any, content_type: str) -> None:
    frame = encode_request(handler, token, payload, content_type)
    expected = Envelope(0, handler, token, "", payload)
    assert decode_client_frame(frame) == expected
    assert decode_client_frame(frame.encode("utf-8")) == expected
    obj = json.loads(frame)
    assert list(obj) == ["status", "handler", "token", "content_type", "payload"]
    assert obj["status"] == 0
    assert obj["content_type"] == content_type


@FAST
@given(
    status=st.integers(min_value=-(2**31), max_value=2**31),
    handler=st.sampled_from(sorted(SERVER_HANDLERS)),
    token=SAFE_TEXT,
    payload=JSON_VALUES,
)
def test_server_frame_round_trip(status: int, handler: str, token: str, payload: Any) -> None:
    frame = encode_server_frame(status, handler, token, payload)
    env = decode_server_frame(frame.encode("utf-8"))
    assert env == Envelope(status, handler, token, content_type_of(payload), payload)
    assert list(json.loads(frame)) == ["status", "handler", "token", "content_type", "payload"]


def _keys_sorted(value: Any) -> bool:
    if isinstance(value, dict):
        return list(value) == sorted(value) and all(_keys_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_sorted(v) for v in value)
    return True


HTML_TEXT = st.text(st.sampled_from('<>&\u2028\u2029a"\\\n\x00é😀'), max_size=12)


@FAST
@given(value=JSON_VALUES | HTML_TEXT | st.dictionaries(HTML_TEXT, HTML_TEXT, max_size=3))
def test_go_json_parses_back_and_escapes_html(value: Any) -> None:
    text = go_json(value)
    assert json.loads(text) == value
    assert _keys_sorted(json.loads(text))
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in text
    text.encode("utf-8")  # always sendable


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("ok", '"ok"'),
        ({"b": 1, "a": [True, None]}, '{"a":[true,null],"b":1}'),
        ("<a&b>", '"\\u003ca\\u0026b\\u003e"'),
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ("é😀", '"é😀"'),  # Go writes UTF-8, not \u escapes
        ("\ud800x", '"\ufffdx"'),  # a lone surrogate becomes U+FFFD, as Go decodes it
    ],
)
def test_go_json_exact(value: Any, text: str) -> None:
    assert go_json(value) == text


def test_server_echo_of_a_lone_surrogate_is_sendable() -> None:
    token = json.loads('"\\udc00tok"')
    frame = encode_response(400, token, "x")
    frame.encode("utf-8")
    assert decode_server_frame(frame).token == "\ufffdtok"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ("ok", "string"),
        ("", "string"),
        ({"gid": "x"}, "map"),
        ({}, "map"),
        ([1, 2], "slice"),
        ([], "slice"),
        (True, "bool"),
        (False, "bool"),
        (0, "float64"),
        (42, "float64"),  # never int64 (§2.5, §8.2)
        (1.5, "float64"),
        (None, ""),  # the real server sends no JSON at all here; no handler triggers it
    ],
)
def test_content_type_of(payload: Any, kind: str) -> None:
    assert content_type_of(payload) == kind


DECODERS: list[Callable[[str | bytes], object]] = [
    decode_server_frame,
    decode_handshake_answer,
    decode_client_frame,
    decode_credentials,
]
DECODER_IDS = ["server_frame", "handshake_answer", "client_frame", "credentials"]


def _only_protocol_errors(decode: Callable[[str | bytes], object], data: str | bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


@pytest.mark.parametrize("decode", DECODERS, ids=DECODER_IDS)
@FAST
@given(data=st.text(max_size=200) | st.binary(max_size=200))
def test_decoders_raise_only_protocol_errors_on_junk(
    decode: Callable[[str | bytes], object], data: str | bytes
) -> None:
    _only_protocol_errors(decode, data)


FRAME_KEYS = st.sampled_from(
    ["status", "handler", "token", "content_type", "payload", "user", "pw", "gid"]
)
ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@pytest.mark.parametrize("decode", DECODERS, ids=DECODER_IDS)
@FAST
@given(
    obj=st.dictionaries(
        FRAME_KEYS,
        ANY_JSON | st.sampled_from(["response", "command", "credentials", 200]),
        max_size=6,
    )
)
def test_decoders_raise_only_protocol_errors_on_odd_objects(
    decode: Callable[[str | bytes], object], obj: dict[str, Any]
) -> None:
    _only_protocol_errors(decode, json.dumps(obj))


MIB = 1 << 20
JUNK: list[str | bytes] = [
    "",
    " ",
    "null",
    "[]",
    '"text"',
    "42",
    "{",
    "NaN",
    b"\xff\xfe\xfd",
    b'{"handler": "\xff"}',
    b"\xc3\x28",
    random.Random(0).randbytes(MIB),
    "x" * MIB,
    "[" * MIB,  # deeper than the interpreter's recursion limit
    '{"a":' * (MIB // 5),
    "{" + '"a":1,' * (MIB // 6) + '"b":2}',  # big but valid: must still be handled
    '{"status": 1' + "0" * 5000 + "}",  # more digits than int() accepts
    '{"status": 1e400, "handler": "response"}',
    '{"status": true, "handler": "response"}',
    '{"status": 200, "handler": "response", "token": 7}',
    '{"status": 200, "handler": "response", "token": "credentials", "payload": []}',
    '{"status": 200, "handler": "response", "token": "credentials", "payload": {"gid": 1}}',
    '{"status": 200, "handler": "response", "token": "credentials", "payload": {"gid": "g", "hash": 5}}',
    '{"user": 5}',
    '{"pw": []}',
]


@pytest.mark.parametrize("decode", DECODERS, ids=DECODER_IDS)
@pytest.mark.parametrize("data", JUNK, ids=[f"junk{i}" for i in range(len(JUNK))])
def test_decoders_raise_only_protocol_errors_on_known_junk(
    decode: Callable[[str | bytes], object], data: str | bytes
) -> None:
    _only_protocol_errors(decode, data)


@FAST
@given(payload=ANY_JSON)
def test_payload_parsers_raise_only_protocol_errors(payload: Any) -> None:
    for parse in (parse_command, parse_event_payload):
        with contextlib.suppress(ProtocolError):
            parse(payload)


@pytest.mark.parametrize(
    "text",
    [
        '{"handler": "response", "token": "x", "status": "200"}',
        '{"handler": "event", "token": "x"}',  # a client handler from the server
        '{"status": 200, "token": "x"}',
        '{"status": 200, "handler": "response", "content_type": 1}',
    ],
)
def test_decode_server_frame_rejects(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_server_frame(text)


def test_decode_server_frame_skips_falsy_values() -> None:
    """§2.2: a falsy value keeps the local default (null token → "", 0 content_type → "")."""
    env = decode_server_frame('{"handler": "command", "token": null, "content_type": 0}')
    assert env == Envelope(0, "command", "", "", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (encode_response(500, CREDENTIALS_TOKEN, "boom"), "refused with status 500"),
        (encode_response(200, "other", {"gid": "g", "hash": ""}), "token 'credentials'"),
        (encode_command({"x": 1}), "token 'credentials'"),
        (encode_response(200, CREDENTIALS_TOKEN, "ok"), "must be an object"),
        (encode_response(200, CREDENTIALS_TOKEN, {"gid": "", "hash": ""}), "non-empty string"),
        (encode_response(200, CREDENTIALS_TOKEN, {"hash": ""}), "non-empty string"),
        (encode_response(200, CREDENTIALS_TOKEN, {"gid": "g", "hash": 3}), "hash must be"),
    ],
)
def test_decode_handshake_answer_rejects(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode_handshake_answer(text)


def test_decode_handshake_answer_null_hash_is_empty() -> None:
    text = encode_response(200, CREDENTIALS_TOKEN, {"gid": "g", "hash": None})
    assert decode_handshake_answer(text) == ("g", "")


def test_decode_credentials_defaults_and_nulls() -> None:
    creds = decode_credentials('{"user": "u", "pw": null}')
    assert creds == envelope.Credentials("u", "", "", "")
    assert decode_credentials(encode_credentials("a", "b", "c")) == envelope.Credentials(
        "a", "b", "c", CREDENTIALS_TOKEN
    )


def test_decode_client_frame_tolerates_missing_and_odd_fields() -> None:
    assert decode_client_frame('{"handler": 5, "token": null}') == Envelope(0, "", "", "", None)
    assert decode_client_frame("{}") == Envelope(0, "", "", "", None)


# --- 5. client-side pure pieces -------------------------------------------------------------


def test_parse_command_keeps_raw_and_order() -> None:
    payload = build_command(
        device_uri="d",
        service_uri="s",
        data="42",
        task_id="t",
        device_instance_id="iot#d",
        time=7,
    )
    command = parse_command(payload)
    assert list(command.raw) == sorted(payload)
    assert command.raw == payload
    assert command.raw is not payload  # a copy: the caller's dict can change freely
    assert command.parts == {"data": "42"}
    assert command.data == "42"
    assert command.task_id == "t"


@pytest.mark.parametrize(
    ("data", "metadata", "parts"),
    [
        (None, None, None),
        ("x", None, [{"name": "metadata", "value": ""}, {"name": "data", "value": "x"}]),
        (None, "m", [{"name": "metadata", "value": "m"}, {"name": "data", "value": ""}]),
        ("x", "m", [{"name": "metadata", "value": "m"}, {"name": "data", "value": "x"}]),
        ("", "", [{"name": "metadata", "value": ""}, {"name": "data", "value": ""}]),
    ],
)
def test_reply_payload_changes_only_protocol_parts(
    data: str | None, metadata: str | None, parts: Any
) -> None:
    command = parse_command(COMMAND)
    reply = reply_payload(command, data, metadata)
    assert reply["protocol_parts"] == parts
    assert list(reply) == list(COMMAND)  # every field, in the order received
    assert {k: v for k, v in reply.items() if k != "protocol_parts"} == {
        k: v for k, v in COMMAND.items() if k != "protocol_parts"
    }
    assert command.raw == COMMAND  # the command itself is untouched


def test_reply_payload_keeps_unknown_fields() -> None:
    raw = {**COMMAND, "zz_extra": {"n": 1}, "protocol_parts": [{"name": "body", "value": "b"}]}
    command = parse_command(raw)
    assert command.data == "b"  # 2017 part name as a fallback
    reply = reply_payload(command, None, None)
    assert reply["zz_extra"] == {"n": 1}
    assert reply["protocol_parts"] is None


@pytest.mark.parametrize(
    ("payload", "parts"),
    [
        ({"device_url": "d", "service_url": "s"}, {}),
        ({"device_url": "d", "service_url": "s", "protocol_parts": None}, {}),
        ({"device_url": "d", "service_url": "s", "protocol_parts": []}, {}),
        (
            {
                "device_url": "d",
                "service_url": "s",
                "protocol_parts": [
                    {"name": "data", "value": 5},
                    {"name": 3, "value": "x"},
                    "junk",
                    {"name": "metadata", "value": None},
                ],
            },
            {"data": "", "metadata": ""},
        ),
    ],
)
def test_parse_command_parts(payload: dict[str, Any], parts: dict[str, str]) -> None:
    assert parse_command(payload).parts == parts


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "x",
        [],
        {},
        {"device_url": "", "service_url": "s"},
        {"device_url": 5, "service_url": "s"},
        {"device_url": "d"},
        {"device_url": "d", "service_url": 1},
        {"device_url": "d", "service_url": "s", "protocol_parts": "x"},
        {"device_url": "d", "service_url": "s", "protocol_parts": {"name": "data"}},
    ],
)
def test_parse_command_rejects(payload: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_command(payload)


def test_build_command_defaults() -> None:
    cmd = build_command(
        device_uri="d", service_uri="s", data="x", task_id="t", device_instance_id="i", time=3
    )
    assert list(cmd) == sorted(cmd)
    assert cmd["service_name"] == "s"
    assert cmd["time"] == "3"
    assert cmd["protocol_parts"] == [{"name": "data", "value": "x"}]


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 23, 20, 14, 4, 123456, tzinfo=UTC), "2026-11-23T20:14:04.123Z"),
        (
            datetime(2026, 11, 23, 21, 14, 4, 999999, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-23T20:14:04.999Z",  # truncated, never rounded up into the next second
        ),
        (
            datetime(2026, 1, 1, 0, 30, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2025-12-31T19:00:00.000Z",
        ),
        (
            datetime(2026, 6, 1, 1, 2, 3, 4000, tzinfo=timezone(-timedelta(hours=7))),
            "2026-06-01T08:02:03.004Z",
        ),
    ],
)
def test_format_time(moment: datetime, text: str) -> None:
    assert format_time(moment) == text


def test_event_metadata_exact() -> None:
    moment = datetime(2026, 11, 23, 21, 14, 4, 123000, tzinfo=timezone(timedelta(hours=1)))
    text = event_metadata(
        time=moment,
        topic="tele/kitchen/SENSOR",
        readings={"temperature": 21.5},
        primary="temperature",
    )
    assert text == (
        '{"time":"2026-11-23T20:14:04.123Z","topic":"tele/kitchen/SENSOR",'
        '"readings":{"temperature":21.5},"primary":"temperature"}'
    )
    encoded = json.loads(
        event_metadata(time=moment, topic="t/ü", readings={}, primary=None, encoding="base64")
    )
    assert encoded == {
        "time": "2026-11-23T20:14:04.123Z",
        "topic": "t/ü",
        "readings": {},
        "primary": None,
        "encoding": "base64",
    }


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", ("", None)),
        (b'{"POWER": "ON"}', ('{"POWER": "ON"}', None)),
        ("Größe 😀".encode(), ("Größe 😀", None)),
        (b"\xff\x00\x01", (base64.b64encode(b"\xff\x00\x01").decode(), "base64")),
        (b"\xc3\x28", ("wyg=", "base64")),
        (b"\xed\xa0\x80", ("7aCA", "base64")),  # an encoded surrogate is not valid UTF-8
    ],
)
def test_payload_text(payload: bytes, expected: tuple[str, str | None]) -> None:
    assert payload_text(payload) == expected
    text, encoding = payload_text(payload)
    if encoding == "base64":
        assert base64.b64decode(text) == payload


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"x" * PIECE,
        b"x" * (PIECE - 1) + "é".encode(),  # a character across two pieces
        "€".encode() * (PIECE // 3 + 5),
        b"x" * (2 * PIECE + 7),
        b"x" * (PIECE + 3) + b"\xc3",  # cut off in its last character: not UTF-8
        b"\xff" + b"x" * (PIECE + 1),
        bytes(range(256)) * (PIECE // 128),
    ],
    ids=lambda payload: f"{len(payload)}:{payload[-2:]!r}",
)
def test_payload_text_in_pieces_is_payload_text(payload: bytes) -> None:
    text, encoding = payload_text(payload)
    pieces = payload_text_pieces(payload)
    written = b"".join(bytes(piece) for piece in pieces.pieces)
    assert (written.decode(), pieces.encoding) == (text, encoding)
    assert pieces.length == len(written)


def test_event_payload_order_and_types() -> None:
    payload = event_payload("d", "s", "data", "meta")
    assert payload == {
        "device_uri": "d",
        "service_uri": "s",
        "value": [{"name": "metadata", "value": "meta"}, {"name": "data", "value": "data"}],
    }
    assert parse_event_payload(payload).parts == {"metadata": "meta", "data": "data"}


@pytest.mark.parametrize(
    ("body", "https", "url"),
    [
        ("ws://connector.example:8093", False, "ws://connector.example:8093/"),  # Era A
        ("ws://10.0.0.5:8093\n", False, "ws://10.0.0.5:8093/"),
        ("  ws://host:8093/  \r\n", False, "ws://host:8093/"),
        ("ws://host:8093/connector/ws", False, "ws://host:8093/connector/ws"),
        ("wss://host:443/x?y=1", False, "wss://host:443/x?y=1"),
        ("ws://host", False, "ws://host/"),
        ("ws://host:8093", True, "wss://host:8093/"),
        ("wss://host:8093", True, "wss://host:8093/"),
        ('{"url": "ws://host:8093"}', False, "ws://host:8093/"),
        (' {"url": " ws://host:9000/p ", "other": 1}\n', True, "wss://host:9000/p"),
        ("ws://[::1]:8093", False, "ws://[::1]:8093/"),
        ("ws://user@host:1/#frag", False, "ws://user@host:1/"),
    ],
)
def test_parse_lookup_body(body: str, https: bool, url: str) -> None:
    assert parse_lookup_body(body, https=https) == url


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   \n",
        "host:8093",
        "http://host:8093",
        "https://host:8093",
        "ws://",
        "ws://:8093",
        "ws://host:port",
        "ws://host:99999",
        "ws://host:8093:8094",
        "ws://[::1",
        "ws://[zz]:80",
        "{",
        "{not json}",
        "{}",
        '{"url": 5}',
        '{"url": null}',
        '{"url": "http://x:1"}',
        '["ws://host:8093"]',
        '"ws://host:8093"',
        "see ws://host:8093 for details",
    ],
)
def test_parse_lookup_body_rejects(body: str) -> None:
    with pytest.raises(LookupError_):
        parse_lookup_body(body, https=False)


@FAST
@given(body=st.text(max_size=60))
def test_parse_lookup_body_raises_only_lookup_errors(body: str) -> None:
    try:
        url = parse_lookup_body(body, https=False)
    except LookupError_:
        return
    assert url.startswith(("ws://", "wss://"))


def split_like_2017(body: str) -> tuple[str, str]:
    """The 2017 client's reading of a lookup body (Part 2 §1.2): after the first `ws://`,
    HOST up to the next `:`, PORT up to the following `:` or the end, nothing trimmed."""
    rest = body.split("ws://", 1)[1]
    host, _, after = rest.partition(":")
    return host, after.split(":", 1)[0]


@pytest.mark.parametrize(
    ("host", "port", "secure", "body"),
    [
        ("127.0.0.1:8093", 9, False, "ws://127.0.0.1:8093"),
        ("localhost", 8093, False, "ws://localhost:8093"),
        ("", 8093, False, "ws://127.0.0.1:8093"),
        ("connector.example:443", 8093, True, "wss://connector.example:443"),
        ("[::1]:8093", 1, False, "ws://[::1]:8093"),
        ("[::1]", 8093, False, "ws://[::1]:8093"),
        ("bad host:x", 8093, False, "ws://127.0.0.1:8093"),
    ],
)
def test_lookup_body_is_exactly_scheme_host_and_port(
    host: str, port: int, secure: bool, body: str
) -> None:
    assert lookup_body(host, port, secure=secure) == body
    # Both readers get the same address: this project's parser and the 2017 client's split.
    assert parse_lookup_body(body, https=False) == body + "/"
    if not secure and "[" not in body:
        assert split_like_2017(body) == tuple(body.removeprefix("ws://").split(":"))


@pytest.mark.parametrize(
    ("ws_url", "path", "https", "url"),
    [
        ("ws://host:8093/", "discovery", False, "http://host:8093/discovery"),
        ("ws://host:8093", "/discovery", False, "http://host:8093/discovery"),
        ("ws://host:8093/ws/path", "reg/devices", False, "http://host:8093/reg/devices"),
        ("wss://host:8093/", "discovery", False, "https://host:8093/discovery"),
        ("ws://host:8093/", "discovery", True, "https://host:8093/discovery"),
        ("ws://[::1]:1/", "d", False, "http://[::1]:1/d"),
    ],
)
def test_registration_url(ws_url: str, path: str, https: bool, url: str) -> None:
    assert registration_url(ws_url, path, https=https) == url


def test_backoff_ceiling_doubles_to_the_cap_and_stays() -> None:
    backoff = Backoff(minimum=1.0, maximum=120.0, rand=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays == [2, 4, 8, 16, 32, 64, 120, 120, 120, 120]


def test_backoff_stays_at_cap_for_ever() -> None:
    backoff = Backoff(minimum=1.0, maximum=120.0, rand=lambda: 1.0)
    for _ in range(5000):  # days of outage; 2.0**1024 used to raise OverflowError
        delay = backoff.next_delay()
    assert delay == 120.0


@pytest.mark.parametrize("rand_value", [0.0, 1e-12, 0.5, 0.999999])
def test_backoff_never_below_minimum(rand_value: float) -> None:
    backoff = Backoff(minimum=2.5, maximum=60.0, rand=lambda: rand_value)
    for _ in range(20):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 2.5 <= delay <= ceiling
    assert Backoff(minimum=2.5, maximum=60.0, rand=lambda: 0.0).next_delay() == 2.5


def test_backoff_deterministic_with_injected_rand() -> None:
    first = Backoff(rand=random.Random(7).random)
    second = Backoff(rand=random.Random(7).random)
    a = [first.next_delay() for _ in range(15)]
    b = [second.next_delay() for _ in range(15)]
    assert a == b
    assert len(set(a)) > 5  # jittered, not constant
    assert all(1.0 <= d <= 120.0 for d in a)


@pytest.mark.parametrize(
    ("ready_for", "resets"),
    [(None, False), (0.0, False), (59.999, False), (60.0, True), (3600.0, True)],
)
def test_backoff_resets_only_after_a_stable_session(ready_for: float | None, resets: bool) -> None:
    backoff = Backoff(minimum=1.0, maximum=120.0, stable_after=60.0, rand=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.session_ended(ready_for)
    assert backoff.next_delay() == (2.0 if resets else 64.0)


def test_gateway_state_in_memory_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    state = GatewayState(None)
    state.set_gid("iot#1")
    state.set_devices({D1.uri: D1})
    assert state.gid == "iot#1"
    assert state.devices == {D1.uri: D1}
    assert list(tmp_path.iterdir()) == []


def test_gateway_state_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "nested"  # created on first write
    ordered = Device("zeta", "Z", "iot#z", (("z", "1"), ("a", "2"), ("m", "ü")))
    state = GatewayState(directory)
    assert (state.gid, state.devices) == ("", {})
    state.set_gid(GID)
    devices = {d.uri: d for d in (D2, ordered, D1)}
    state.set_devices(devices)
    devices["other"] = D1  # the state keeps its own copy
    assert set(state.devices) == {D1.uri, D2.uri, "zeta"}

    again = GatewayState(directory)
    assert again.gid == GID
    assert again.devices == {d.uri: d for d in (D1, D2, ordered)}
    assert again.devices["zeta"].tags == (("z", "1"), ("a", "2"), ("m", "ü"))  # order kept
    assert gateway_hash(again.devices.values()) == gateway_hash([D1, D2, ordered])
    assert sorted(p.name for p in directory.iterdir()) == ["devices.json", "gid"]


def test_gateway_state_overwrites_a_different_gid(tmp_path: Path) -> None:
    state = GatewayState(tmp_path)
    state.set_gid("iot#old")
    state.set_gid("iot#new")
    assert (tmp_path / "gid").read_text() == "iot#new\n"
    assert GatewayState(tmp_path).gid == "iot#new"
    state.set_devices({})
    assert GatewayState(tmp_path).devices == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devices.json", "gid"]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"",
        b"{}",
        b"5",
        b"null",
        b'["x"]',
        b'[{"uri": "a"}]',
        b'[{"uri": "a", "name": "n", "type": "t", "tags": [["k"]]}]',
        b'[{"uri": "a", "name": "n", "type": "t", "tags": 5}]',
        b'[{"uri": "a", "name": "n", "type": "t"}, {"uri": "b"}]',  # all or nothing
        b"\xff\xfe\x00junk",
    ],
)
def test_gateway_state_ignores_a_damaged_devices_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "gid").write_text("iot#kept\n")
    (tmp_path / "devices.json").write_bytes(content)
    state = GatewayState(tmp_path)
    assert state.gid == "iot#kept"
    assert state.devices == {}


def test_write_atomically_cleans_up_after_a_failed_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "gid"
    write_atomically(target, "old\n")

    def fail(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        write_atomically(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["gid"]


def test_request_tokens_are_distinct_uuid4_strings() -> None:
    session = GatewaySession(devices={})
    made = [session.new_token() for _ in range(5000)]
    assert len(set(made)) == len(made)
    for token in made:
        parsed = uuid.UUID(token)
        assert str(parsed) == token
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


# --- EVENT_MAX_BYTES (issue [14], fault 1) --------------------------------------------------


@FAST
@given(
    data=st.text(max_size=300),
    metadata=st.text(max_size=100),
    max_bytes=st.integers(0, 3000),
)
def test_event_frame_fits_is_exactly_the_frame_size_test(
    data: str, metadata: str, max_bytes: int
) -> None:
    from adapter.sepl.envelope import encode_event_request, event_frame_fits, event_frame_size

    size = event_frame_size("tasmota:küche", "sepl_get", data, metadata)
    assert size == len(
        encode_event_request("0" * 36, "tasmota:küche", "sepl_get", data, metadata).encode(
            "utf-8", "surrogatepass"
        )
    )
    assert event_frame_fits("tasmota:küche", "sepl_get", data, metadata, max_bytes) == (
        size <= max_bytes
    )


def test_event_frame_size_counts_escapes() -> None:
    from adapter.sepl.envelope import event_frame_size

    plain = event_frame_size("d", "s", "x" * 1000, "")
    assert event_frame_size("d", "s", '"' * 1000, "") == plain + 1000  # \"
    assert event_frame_size("d", "s", "\x01" * 1000, "") == plain + 5000  # \u0001
    assert event_frame_size("d", "s", "€" * 1000, "") == plain + 2000  # 3 bytes in UTF-8
