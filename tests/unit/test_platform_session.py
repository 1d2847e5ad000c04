"""The platform's side of a session (adapter/sepl/platform.py): every status path of
the protocol reference §2.6, §2.9, §2.11, §3.1 and decision D11, without sockets.

Frames go in through `PlatformSession.handle` as the client encoders write them and the
answers are read back with the client decoders, so both ends of the codec are in the loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.sandbox.server import describe_event
from adapter.sandbox.store import SandboxStore
from adapter.sepl.device import Device, gateway_hash
from adapter.sepl.envelope import (
    CLIENT_HANDLERS,
    Credentials,
    Envelope,
    decode_handshake_answer,
    decode_server_frame,
    encode_request,
)
from adapter.sepl.messages import event_payload, parse_command, reply_payload
from adapter.sepl.platform import (
    CommandRecord,
    Gateway,
    Keepalive,
    NotAttached,
    Platform,
    PlatformDevice,
    PlatformSession,
    Refused,
    open_legacy_session,
    register,
)

METER = "iot#type-meter"
SWITCH = "iot#type-switch"
TYPES = {METER: frozenset({"sepl_get"}), SWITCH: frozenset({"on", "off"})}
USERS = {"alice": "pw-a", "bob": "pw-b"}

KITCHEN = Device.create("tasmota:kitchen", "Kitchen", METER, {"room": "kitchen"})
LAMP = Device.create("shelly:lamp", "Lamp", SWITCH)

SandboxPlatform = Platform[SandboxStore]


@dataclass
class Client:
    """One gateway session seen from the client side of the codec."""

    platform: SandboxPlatform
    session: PlatformSession
    pushed: list[str] = field(default_factory=list)
    counter: int = 0

    @property
    def gid(self) -> str:
        return self.session.gateway.id

    def frames(self, handler: str, payload: Any) -> list[Envelope]:
        self.counter += 1
        token = f"tok-{self.counter}"
        answers = self.session.handle(encode_request(handler, token, payload))
        envs = [decode_server_frame(answer) for answer in answers]
        for env in envs:
            assert env.handler == "response"
            assert env.token == token
            assert env.content_type == "string"
        return envs

    def call(self, handler: str, payload: Any) -> tuple[int, Any]:
        (env,) = self.frames(handler, payload)
        return env.status, env.payload

    def put(self, device: Device) -> tuple[int, Any]:
        return self.call("put", device.put_payload())

    def event(self, uri: str, service: str, data: str = "1") -> tuple[int, Any]:
        return self.call("event", event_payload(uri, service, data, "{}"))


def connect(platform: SandboxPlatform, user: str = "alice", gid: str = "") -> Client:
    pushed: list[str] = []
    credentials = Credentials(user, USERS.get(user, "x"), gid, "credentials")
    session = platform.open_session(credentials, pushed.append)
    return Client(platform, session, pushed)


@pytest.fixture
def store() -> Iterator[SandboxStore]:
    s = SandboxStore(":memory:")
    yield s
    s.close()


@pytest.fixture
def platform(store: SandboxStore) -> SandboxPlatform:
    return Platform(store, device_types=TYPES)


@pytest.fixture
def client(platform: SandboxPlatform) -> Client:
    return connect(platform)


OK = (200, "ok")


# --- handshake (§2.6) ---------------------------------------------------------------------


def test_new_gateway_on_empty_gid(platform: SandboxPlatform, client: Client) -> None:
    gid, hash_ = decode_handshake_answer(client.session.handshake_answer())
    assert gid == client.gid
    assert re.fullmatch(r"iot#[0-9a-f-]{36}", gid)
    assert hash_ == ""
    gateway = platform.store.gateway(gid)
    assert gateway is not None
    assert gateway.owner == "alice"
    assert re.fullmatch(r"new-gateway-[0-9a-z]+", gateway.name)
    assert client.session.attached == {}
    assert platform.sessions == [client.session]


def test_handshake_answer_frame(client: Client) -> None:
    env = decode_server_frame(client.session.handshake_answer())
    assert env == Envelope(200, "response", "credentials", "map", {"gid": client.gid, "hash": ""})


def test_unknown_gid_gets_a_new_gateway(platform: SandboxPlatform) -> None:
    client = connect(platform, gid="iot#does-not-exist")
    assert client.gid != "iot#does-not-exist"
    assert platform.store.gateway("iot#does-not-exist") is None


def test_gid_of_another_user_gets_a_new_gateway(platform: SandboxPlatform) -> None:
    alice = connect(platform, "alice")
    assert alice.put(KITCHEN) == OK
    assert alice.call("commit", "h-alice") == OK
    bob = connect(platform, "bob", gid=alice.gid)
    assert bob.gid != alice.gid
    assert decode_handshake_answer(bob.session.handshake_answer()) == (bob.gid, "")
    assert bob.session.attached == {}  # alice's devices are not handed to bob
    foreign = platform.store.gateway(alice.gid)
    assert foreign is not None
    assert (foreign.owner, foreign.hash) == ("alice", "h-alice")  # untouched


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "wrong"), ("alice", ""), ("mallory", "pw-a"), ("", "")],
)
def test_wrong_credentials_are_refused(store: SandboxStore, user: str, password: str) -> None:
    platform = Platform(store, device_types=TYPES, users=USERS)
    with pytest.raises(Refused):
        platform.open_session(Credentials(user, password, "", "credentials"), lambda _: None)
    assert platform.sessions == []
    assert store.gateways() == []


def test_right_credentials_with_users_set(store: SandboxStore) -> None:
    platform = Platform(store, device_types=TYPES, users=USERS)
    session = platform.open_session(Credentials("bob", "pw-b", "", "t"), lambda _: None)
    assert session.user == "bob"


def test_any_credentials_without_users(platform: SandboxPlatform) -> None:
    assert connect(platform, "anyone").session.user == "anyone"


# --- clear ----------------------------------------------------------------------------------


def test_clear_resets_gateway_and_detaches(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    assert client.call("commit", "h1") == OK
    assert client.call("clear", None) == OK
    assert client.session.attached == {}
    gateway = platform.store.gateway(client.gid)
    assert gateway is not None
    assert (gateway.hash, gateway.devices) == ("", [])
    assert len(platform.store.devices_by_uri("alice", KITCHEN.uri)) == 1  # device kept
    with pytest.raises(NotAttached):
        platform.send_command(KITCHEN.uri, "sepl_get", None)
    status, text = client.event(KITCHEN.uri, "sepl_get")
    assert status == 400
    assert "not listen to this device" in text
    again = connect(platform, gid=client.gid)
    assert decode_handshake_answer(again.session.handshake_answer()) == (client.gid, "")


@pytest.mark.parametrize("payload", [None, "x", 5, {"a": 1}])
def test_clear_ignores_its_payload(client: Client, payload: Any) -> None:
    assert client.call("clear", payload) == OK


# --- put --------------------------------------------------------------------------------------


def test_put_creates_and_attaches(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    (device,) = platform.store.devices_by_uri("alice", KITCHEN.uri)
    assert (device.owner, device.name, device.type) == ("alice", "Kitchen", METER)
    assert device.tags == {"room": "kitchen"}
    assert re.fullmatch(r"iot#[0-9a-f-]{36}", device.id)
    assert client.session.attached == {KITCHEN.uri: device.id}


def test_put_twice_keeps_one_device(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    assert client.put(KITCHEN) == OK
    assert len(platform.store.all_devices()) == 1


@pytest.mark.parametrize(
    ("tags", "stored"),
    [
        ([], {}),
        (["a:1", "b:2"], {"a": "1", "b": "2"}),
        (["flag"], {}),  # no ":": ignored, the put still answered 200 (§2.9)
        (["url:http://x"], {"url": "http://x"}),  # split at the first ':' only
        (["a:1", "a:2"], {"a": "2"}),
        (None, {}),
    ],
)
def test_put_tag_parsing(
    platform: SandboxPlatform, client: Client, tags: list[str] | None, stored: dict[str, str]
) -> None:
    assert client.call("put", {"uri": "u", "name": "n", "iot_type": METER, "tags": tags}) == OK
    (device,) = platform.store.devices_by_uri("alice", "u")
    assert device.tags == stored


@pytest.mark.parametrize("iot_type", ["iot#unknown", "sepl_get", METER.upper()])
def test_put_unknown_type_is_500(platform: SandboxPlatform, client: Client, iot_type: str) -> None:
    status, text = client.call("put", {"uri": "u", "name": "n", "iot_type": iot_type, "tags": []})
    assert status == 500
    assert "unknown device type" in text
    assert client.session.attached == {}
    assert platform.store.all_devices() == []


@pytest.mark.parametrize(
    "payload",
    [{"uri": "u", "name": "n", "iot_type": "", "tags": []}, {"uri": "u", "name": "n"}],
    ids=["empty", "missing"],
)
def test_put_empty_iot_type_is_500(
    platform: SandboxPlatform, client: Client, payload: dict[str, Any]
) -> None:
    assert client.call("put", payload) == (500, "empty iot_type")
    assert client.session.attached == {}
    assert platform.store.all_devices() == []


def test_put_any_type_without_registry(store: SandboxStore) -> None:
    client = connect(Platform(store, device_types=None))
    assert client.call("put", {"uri": "u", "name": "n", "iot_type": "iot#whatever"}) == OK
    assert client.call("put", {"uri": "v", "name": "n", "iot_type": ""}) == (500, "empty iot_type")


def test_put_update_merges_tags_and_keeps_platform_keys(
    platform: SandboxPlatform, client: Client
) -> None:
    assert (
        client.call("put", {"uri": "u", "name": "Old", "iot_type": METER, "tags": ["a:1", "b:2"]})
        == OK
    )
    (device,) = platform.store.devices_by_uri("alice", "u")
    device.tags["platform_only"] = "x"  # a key the user set on the platform
    platform.store.save_device(device)

    # Update: new name, one tag changed, "b" removed locally, type changed (ignored).
    assert (
        client.call("put", {"uri": "u", "name": "New", "iot_type": SWITCH, "tags": ["a:9"]}) == OK
    )
    (updated,) = platform.store.devices_by_uri("alice", "u")
    assert updated.id == device.id
    assert updated.name == "New"
    assert updated.type == METER
    assert updated.tags == {"a": "9", "b": "2", "platform_only": "x"}  # merged, never removed

    # The Go connector sets the name whenever it differs, even to an empty one (§2.9).
    assert client.call("put", {"uri": "u", "name": "", "iot_type": METER, "tags": []}) == OK
    (emptied,) = platform.store.devices_by_uri("alice", "u")
    assert emptied.name == ""


def test_put_ignores_a_tag_without_colon_and_still_answers_200(
    platform: SandboxPlatform, client: Client
) -> None:
    """Go logs "wrong tag syntax" and leaves the tag out, on creation and on update (§2.9)."""
    put = {"uri": "u", "name": "n", "iot_type": METER, "tags": ["a:1", "bare", "b:x:y"]}
    assert client.call("put", put) == OK
    (created,) = platform.store.devices_by_uri("alice", "u")
    assert created.tags == {"a": "1", "b": "x:y"}
    assert client.call("put", {**put, "tags": ["alone", "a:2"]}) == OK
    (updated,) = platform.store.devices_by_uri("alice", "u")
    assert updated.tags == {"a": "2", "b": "x:y"}
    assert client.session.errors_in_row == 0


def test_put_update_of_a_device_with_an_unknown_type_still_works(
    platform: SandboxPlatform, client: Client
) -> None:
    """Only creation checks the type; an existing device is updated as it is (§2.9)."""
    platform.store.save_device(PlatformDevice("iot#old", "alice", "u", "n", "iot#retired"))
    assert client.call("put", {"uri": "u", "name": "n", "iot_type": "iot#retired"}) == OK
    assert client.session.attached == {"u": "iot#old"}


def test_put_duplicate_uris_is_400(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    assert client.call("disconnect", KITCHEN.uri) == OK
    platform.store.save_device(PlatformDevice("iot#second", "alice", KITCHEN.uri, "Copy", METER))
    status, text = client.put(KITCHEN)
    assert status == 400
    assert "more than one device" in text
    assert client.session.attached == {}


def test_put_same_uri_of_another_owner_is_not_a_duplicate(
    platform: SandboxPlatform, client: Client
) -> None:
    platform.store.save_device(PlatformDevice("iot#bobs", "bob", KITCHEN.uri, "Bob's", METER))
    assert client.put(KITCHEN) == OK
    assert client.session.attached[KITCHEN.uri] != "iot#bobs"
    assert len(platform.store.devices_by_uri("alice", KITCHEN.uri)) == 1


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "tasmota:kitchen",
        ["u"],
        5,
        {},
        {"uri": 5, "iot_type": METER},
        {"uri": "u", "name": 5, "iot_type": METER},
        {"uri": "u", "iot_type": 5},
        {"uri": "u", "iot_type": ["x"]},
        {"uri": "u", "iot_type": METER, "tags": "a:b"},
        {"uri": "u", "iot_type": METER, "tags": {"a": "b"}},
        {"uri": "u", "iot_type": METER, "tags": [1]},
        {"uri": "u", "iot_type": METER, "tags": ["a:b", None]},
    ],
)
def test_put_malformed_payload_is_400(
    platform: SandboxPlatform, client: Client, payload: Any
) -> None:
    status, text = client.call("put", payload)
    assert status == 400
    assert isinstance(text, str)
    assert text
    assert client.session.attached == {}
    assert platform.store.all_devices() == []


# --- disconnect / delete ----------------------------------------------------------------------


def test_disconnect(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    assert client.call("disconnect", KITCHEN.uri) == OK
    assert client.session.attached == {}
    assert len(platform.store.devices_by_uri("alice", KITCHEN.uri)) == 1  # device kept
    status, text = client.event(KITCHEN.uri, "sepl_get")
    assert (status, "not listen to this device" in text) == (400, True)
    with pytest.raises(NotAttached):
        platform.send_command(KITCHEN.uri, "sepl_get", None)


def test_disconnect_unattached_is_500(client: Client) -> None:
    status, text = client.call("disconnect", "tasmota:nowhere")
    assert status == 500  # a client error reported as a server error (§8.5)
    assert "not attached" in text


@pytest.mark.parametrize("handler", ["disconnect", "delete"])
@pytest.mark.parametrize("payload", [None, 5, ["u"], {"uri": "u"}, True])
def test_uri_handlers_reject_non_strings(client: Client, handler: str, payload: Any) -> None:
    assert client.put(KITCHEN) == OK
    status, text = client.call(handler, payload)
    assert status == 400
    assert "must be a string" in text
    assert KITCHEN.uri in client.session.attached


def test_delete_attached_device(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    assert client.call("delete", KITCHEN.uri) == OK
    assert client.session.attached == {}
    assert platform.store.devices_by_uri("alice", KITCHEN.uri) == []


def test_delete_unattached_but_existing_device(platform: SandboxPlatform, client: Client) -> None:
    platform.store.save_device(PlatformDevice("iot#d", "alice", "u", "n", METER))
    assert client.call("delete", "u") == OK
    assert platform.store.device("iot#d") is None


def test_delete_unknown_device_is_500(client: Client) -> None:
    status, text = client.call("delete", "nothing")
    assert status == 500
    assert "found 0" in text


def test_delete_duplicate_is_500_but_detaches(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    platform.store.save_device(PlatformDevice("iot#copy", "alice", KITCHEN.uri, "Copy", METER))
    status, text = client.call("delete", KITCHEN.uri)
    assert status == 500
    assert "found 2" in text
    assert client.session.attached == {}
    assert len(platform.store.devices_by_uri("alice", KITCHEN.uri)) == 2


# --- commit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [None, 5, ["h"], {"hash": "h"}, False])
def test_commit_non_string_is_400(platform: SandboxPlatform, client: Client, payload: Any) -> None:
    status, text = client.call("commit", payload)
    assert status == 400
    assert "must be a string" in text
    gateway = platform.store.gateway(client.gid)
    assert gateway is not None
    assert gateway.hash == ""


def test_commit_stores_hash_and_attached_devices(platform: SandboxPlatform, client: Client) -> None:
    local_hash = gateway_hash([KITCHEN, LAMP])
    assert client.put(KITCHEN) == OK
    assert client.put(LAMP) == OK
    assert client.call("commit", local_hash) == OK
    gateway = platform.store.gateway(client.gid)
    assert gateway is not None
    assert gateway.hash == local_hash  # never checked, only stored (§2.7)
    assert sorted(gateway.devices) == sorted(client.session.attached.values())
    assert len(gateway.devices) == 2


def test_commit_covers_what_is_attached_not_what_the_client_says(
    platform: SandboxPlatform, client: Client
) -> None:
    assert client.put(KITCHEN) == OK
    assert client.put(LAMP) == OK
    assert client.call("disconnect", LAMP.uri) == OK
    assert client.call("commit", gateway_hash([KITCHEN, LAMP])) == OK  # client still lists LAMP
    gateway = platform.store.gateway(client.gid)
    assert gateway is not None
    assert gateway.devices == [client.session.attached[KITCHEN.uri]]


def test_new_session_restores_committed_devices(platform: SandboxPlatform, client: Client) -> None:
    assert client.put(KITCHEN) == OK
    assert client.put(LAMP) == OK
    assert client.call("commit", "the-hash") == OK
    attached = dict(client.session.attached)
    platform.close_session(client.session)
    assert platform.sessions == []

    again = connect(platform, gid=client.gid)
    assert again.gid == client.gid
    assert decode_handshake_answer(again.session.handshake_answer()) == (client.gid, "the-hash")
    assert again.session.attached == attached
    # Restored devices work before any put: events accepted, commands routed (§2.6 step 5).
    assert again.event(KITCHEN.uri, "sepl_get") == OK
    platform.send_command(LAMP.uri, "on", "1")
    assert len(again.pushed) == 1


def test_restore_skips_devices_deleted_since_the_commit(
    platform: SandboxPlatform, client: Client
) -> None:
    assert client.put(KITCHEN) == OK
    assert client.put(LAMP) == OK
    assert client.call("commit", "h") == OK
    (lamp,) = platform.store.devices_by_uri("alice", LAMP.uri)
    platform.store.delete_device(lamp.id)
    again = connect(platform, gid=client.gid)
    assert set(again.session.attached) == {KITCHEN.uri}


# --- event --------------------------------------------------------------------------------------


def test_event_stored_and_announced(platform: SandboxPlatform, client: Client) -> None:
    seen: list[dict[str, Any]] = []
    platform.on_event.append(seen.append)
    assert client.put(KITCHEN) == OK
    assert client.call("event", event_payload(KITCHEN.uri, "sepl_get", "21.5", '{"m":1}')) == OK
    (event,) = platform.store.events()
    assert event["gateway"] == client.gid
    assert (event["device_uri"], event["service_uri"]) == (KITCHEN.uri, "sepl_get")
    assert event["parts"] == {"metadata": '{"m":1}', "data": "21.5"}
    assert seen == [
        {
            "seq": event["seq"],
            "device_uri": KITCHEN.uri,
            "service_uri": "sepl_get",
            "parts": {"metadata": '{"m":1}', "data": "21.5"},
        }
    ]
    assert describe_event(seen[0]) == f"event {KITCHEN.uri} sepl_get data=21.5"


def test_event_unattached_is_400(platform: SandboxPlatform, client: Client) -> None:
    payload = {"device_uri": "d", "service_uri": "s", "value": [{"name": "data", "value": "1"}]}
    assert client.call("event", payload) == (
        400,
        "error event: not listen to this device {d s [{data 1}]}",
    )
    assert platform.store.event_count() == 0


def test_event_of_a_device_attached_elsewhere_is_400(
    platform: SandboxPlatform, client: Client
) -> None:
    other = connect(platform)
    assert other.put(KITCHEN) == OK
    status, text = client.event(KITCHEN.uri, "sepl_get")
    assert status == 400
    assert "not listen to this device" in text


@pytest.mark.parametrize(
    ("device", "service"),
    [(KITCHEN, "on"), (KITCHEN, ""), (LAMP, "sepl_get"), (LAMP, "ON")],
)
def test_event_unknown_service_is_400(
    platform: SandboxPlatform, client: Client, device: Device, service: str
) -> None:
    assert client.put(device) == OK
    status, text = client.event(device.uri, service)
    assert status == 400
    assert "no service" in text
    assert platform.store.event_count() == 0


def test_event_any_service_without_registry(store: SandboxStore) -> None:
    client = connect(Platform(store, device_types=None))
    assert client.call("put", {"uri": "u", "name": "n", "iot_type": "iot#t"}) == OK
    assert client.event("u", "anything") == OK


@pytest.mark.parametrize("value", [5, 1.5, True, {"a": 1}, ["x"]])
def test_event_non_string_part_is_400(
    platform: SandboxPlatform, client: Client, value: Any
) -> None:
    assert client.put(KITCHEN) == OK
    payload = {
        "device_uri": KITCHEN.uri,
        "service_uri": "sepl_get",
        "value": [{"name": "metadata", "value": None}, {"name": "data", "value": value}],
    }
    status, text = client.call("event", payload)
    assert status == 400
    assert "must be a string" in text
    assert platform.store.event_count() == 0


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        (
            [{"name": "metadata", "value": None}, {"name": "data", "value": "x"}],
            {"metadata": "", "data": "x"},
        ),
        ([{"name": "data"}], {"data": ""}),
        ([], {}),
        (None, {}),
        # The 2017 names are read as data and metadata (D10 as amended).
        (
            [{"name": "header", "value": "h"}, {"name": "body", "value": "b"}],
            {"metadata": "h", "data": "b"},
        ),
        ([{"name": "body", "value": "b"}], {"data": "b"}),
        # Both names of one part: the standard name wins.
        (
            [{"name": "data", "value": "d"}, {"name": "body", "value": "b"}],
            {"data": "d"},
        ),
        (
            [{"name": "rssi", "value": "-60"}, {"name": "body", "value": "b"}],
            {"rssi": "-60", "data": "b"},
        ),
    ],
    ids=[
        "null metadata",
        "missing value",
        "no parts",
        "null value list",
        "2017 names",
        "2017 body only",
        "both names",
        "other parts kept",
    ],
)
def test_event_tolerated_shapes(
    platform: SandboxPlatform, client: Client, value: Any, parts: dict[str, str]
) -> None:
    assert client.put(KITCHEN) == OK
    payload = {"device_uri": KITCHEN.uri, "service_uri": "sepl_get", "value": value}
    assert client.call("event", payload) == OK
    (event,) = platform.store.events()
    assert event["parts"] == parts


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "x",
        [],
        {},
        {"device_uri": KITCHEN.uri},
        {"device_uri": KITCHEN.uri, "service_uri": 5},
        {"device_uri": 5, "service_uri": "sepl_get"},
        {"device_uri": KITCHEN.uri, "service_uri": "sepl_get", "value": "data"},
        {"device_uri": KITCHEN.uri, "service_uri": "sepl_get", "value": {"name": "data"}},
        {"device_uri": KITCHEN.uri, "service_uri": "sepl_get", "value": ["data"]},
        {"device_uri": KITCHEN.uri, "service_uri": "sepl_get", "value": [{"value": "x"}]},
        {"device_uri": KITCHEN.uri, "service_uri": "sepl_get", "value": [{"name": 1}]},
    ],
)
def test_event_malformed_payload_is_400(
    platform: SandboxPlatform, client: Client, payload: Any
) -> None:
    assert client.put(KITCHEN) == OK
    status, _ = client.call("event", payload)
    assert status == 400
    assert platform.store.event_count() == 0


# --- commands and responses (§3) ------------------------------------------------------------------


def test_command_reaches_only_the_attaching_session(platform: SandboxPlatform) -> None:
    first, second = connect(platform), connect(platform)
    assert first.put(KITCHEN) == OK
    assert second.put(LAMP) == OK
    record = platform.send_command(KITCHEN.uri, "sepl_get", None)
    assert second.pushed == []
    (frame,) = first.pushed
    env = decode_server_frame(frame)
    assert (env.status, env.handler, env.token, env.content_type) == (0, "command", "", "map")
    command = parse_command(env.payload)
    assert command.raw == record.request
    assert list(command.raw) == sorted(command.raw)
    assert command.device_uri == KITCHEN.uri
    assert command.service_uri == "sepl_get"
    assert command.raw["protocol_parts"] is None
    assert command.raw["device_instance_id"] == first.session.attached[KITCHEN.uri]
    assert command.task_id == record.task_id
    stored = platform.store.command(record.task_id)
    assert stored is not None
    assert (stored["request"], stored["response"]) == (record.request, None)
    assert platform.pending == {record.task_id: record}


def test_command_to_every_session_that_attached_the_device(platform: SandboxPlatform) -> None:
    first, second = connect(platform), connect(platform)
    assert first.put(KITCHEN) == OK
    assert second.put(KITCHEN) == OK
    platform.send_command(KITCHEN.uri, "sepl_get", "x")
    assert len(first.pushed) == len(second.pushed) == 1
    assert first.pushed == second.pushed


def test_command_not_attached(platform: SandboxPlatform, client: Client) -> None:
    with pytest.raises(NotAttached):
        platform.send_command("nobody", "s", None)
    assert client.put(KITCHEN) == OK
    with pytest.raises(NotAttached):
        platform.send_command(KITCHEN.uri, "sepl_get", None, owner="bob")
    platform.send_command(KITCHEN.uri, "sepl_get", None, owner="alice")
    platform.close_session(client.session)
    platform.close_session(client.session)  # twice is harmless
    with pytest.raises(NotAttached):
        platform.send_command(KITCHEN.uri, "sepl_get", None)
    assert client.pushed and len(client.pushed) == 1


def test_response_records_command_answer(platform: SandboxPlatform, client: Client) -> None:
    answered: list[CommandRecord] = []
    platform.on_response.append(answered.append)
    assert client.put(LAMP) == OK
    record = platform.send_command(LAMP.uri, "on", "1")
    command = parse_command(decode_server_frame(client.pushed[0]).payload)
    assert command.data == "1"
    reply = reply_payload(command, "done", None)
    assert client.call("response", reply) == OK
    assert answered == [record]
    assert record.response == reply
    stored = platform.store.command(record.task_id)
    assert stored is not None
    assert stored["response"] == reply
    assert stored["answered"] is not None
    assert platform.pending == {}
    # A second answer for the same task: 200, recorded, no second callback.
    assert client.call("response", reply_payload(command, "again", None)) == OK
    assert len(answered) == 1


@pytest.mark.parametrize("payload", [None, "x", {}, {"task_id": 5}, {"task_id": "unknown"}])
def test_response_without_a_known_task_is_still_200(
    platform: SandboxPlatform, client: Client, payload: Any
) -> None:
    answered: list[CommandRecord] = []
    platform.on_response.append(answered.append)
    assert client.call("response", payload) == OK
    assert answered == []


# --- unknown handlers, unparsable frames, error budget (§2.9, §2.11) --------------------------


@pytest.mark.parametrize(
    "handler", ["remove", "mute", "command", "update", "", "PUT", "__init__", "uri_payload"]
)
def test_unknown_handler_is_400(client: Client, handler: str) -> None:
    status, text = client.call(handler, None)
    assert status == 400
    assert text.startswith("unknown handler in request (")


def test_missing_handler_is_400(client: Client) -> None:
    (answer,) = client.session.handle('{"token": "t", "payload": null}')
    assert decode_server_frame(answer) == Envelope(
        400,
        "response",
        "t",
        "string",
        'unknown handler in request ({"token": "t", "payload": null})',
    )


@pytest.mark.parametrize(
    "text",
    ["not json", "", "[1, 2]", '"put"', "null", "{", "[" * 100_000, b"\xff".decode("latin-1")],
)
def test_unparsable_frame_gets_two_400s_with_empty_token(client: Client, text: str) -> None:
    answers = client.session.handle(text)
    assert len(answers) == 2
    first, second = (decode_server_frame(a) for a in answers)
    assert (first.status, first.token, first.handler) == (400, "", "response")
    assert (second.status, second.token, second.handler) == (400, "", "response")
    assert first.payload.startswith("unable to parse request")
    assert second.payload.startswith("unknown handler in request (")
    assert client.session.errors_in_row == 2


def test_sixth_error_in_a_row_closes(client: Client) -> None:
    for n in range(1, 6):
        assert client.call("commit", None)[0] == 400
        assert client.session.errors_in_row == n
        assert client.session.close_reason is None
    assert client.call("disconnect", "nothing")[0] == 500  # 500s count too
    assert client.session.close_reason is not None
    assert "too many errors" in client.session.close_reason


def test_a_200_resets_the_error_count(client: Client) -> None:
    for _ in range(5):
        assert client.call("commit", None)[0] == 400
    assert client.call("clear", None) == OK
    assert client.session.errors_in_row == 0
    for _ in range(5):
        assert client.call("commit", None)[0] == 400
    assert client.session.close_reason is None
    assert client.call("commit", None)[0] == 400
    assert client.session.close_reason is not None


def test_unparsable_frames_count_twice(client: Client) -> None:
    client.session.handle("junk")
    client.session.handle("junk")
    assert client.session.close_reason is None
    client.session.handle("junk")
    assert client.session.errors_in_row == 6
    assert client.session.close_reason is not None


def test_close_reason_is_kept_once_set(client: Client) -> None:
    for _ in range(6):
        client.call("commit", None)
    reason = client.session.close_reason
    client.call("commit", None)
    assert client.session.close_reason == reason


@pytest.mark.parametrize("limit", [0, 1, 3])
def test_max_errors_setting(store: SandboxStore, limit: int) -> None:
    client = connect(Platform(store, device_types=TYPES, max_errors=limit))
    for _ in range(limit):
        client.call("commit", None)
    assert client.session.close_reason is None
    client.call("commit", None)
    assert client.session.close_reason is not None


def test_handled_counts_handlers(client: Client) -> None:
    client.call("clear", None)
    client.call("clear", None)
    client.call("put", None)
    assert client.session.handled == {"clear": 2, "put": 1}


# --- the whole core never breaks on arbitrary input -------------------------------------------

ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
FRAMES = st.fixed_dictionaries(
    {},
    optional={
        "status": ANY_JSON,
        "handler": st.sampled_from(sorted(CLIENT_HANDLERS)) | ANY_JSON,
        "token": st.text(max_size=8) | ANY_JSON,
        "payload": ANY_JSON
        | st.fixed_dictionaries(
            {},
            optional={
                "uri": ANY_JSON | st.just(KITCHEN.uri),
                "device_uri": ANY_JSON | st.just(KITCHEN.uri),
                "service_uri": ANY_JSON | st.just("sepl_get"),
                "iot_type": ANY_JSON | st.just(METER),
                "name": ANY_JSON,
                "tags": ANY_JSON | st.lists(st.text(max_size=6), max_size=3),
                "value": ANY_JSON,
                "task_id": ANY_JSON,
            },
        ),
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAMES.map(json.dumps) | st.text(max_size=40), min_size=1, max_size=4))
def test_handle_never_raises_and_answers_decode(frames: list[str]) -> None:
    store = SandboxStore(":memory:")
    platform = Platform(store, device_types=TYPES)
    client = connect(platform)
    assert client.put(KITCHEN) == OK
    for text in frames:
        answers = client.session.handle(text)
        assert len(answers) in (1, 2)
        for answer in answers:
            answer.encode("utf-8")  # sendable, even when the client echoed lone surrogates
            env = decode_server_frame(answer)
            assert env.handler == "response"
            assert env.status in (200, 400, 500)
    store.close()


def test_echoed_lone_surrogates_are_sendable(client: Client) -> None:
    text = (
        '{"handler": "event", "token": "\\ud800",'
        ' "payload": {"device_uri": "\\udfff", "service_uri": "s"}}'
    )
    (answer,) = client.session.handle(text)
    answer.encode("utf-8")
    env = decode_server_frame(answer)
    assert env.token == "\ufffd"
    assert env.status == 400


# --- store ----------------------------------------------------------------------------------------


def test_store_round_trips(store: SandboxStore) -> None:
    gateway = Gateway("iot#g", "alice", "gw", "h", ["iot#a", "iot#b"])
    store.save_gateway(gateway)
    assert store.gateway("iot#g") == gateway
    assert store.gateways() == [gateway]
    assert store.gateway("missing") is None

    device = PlatformDevice("iot#a", "alice", "u", "n", METER, {"k": "v"})
    store.save_device(device)
    assert store.device("iot#a") == device
    assert store.devices_by_uri("alice", "u") == [device]
    assert store.devices_by_uri("bob", "u") == []
    store.delete_device("iot#a")
    assert store.all_devices() == []

    seqs = [
        store.add_event(float(i), "iot#g", f"d{i % 2}", "s", {"data": str(i)}) for i in range(5)
    ]
    assert seqs == sorted(seqs)
    assert store.event_count() == 5
    assert [e["parts"]["data"] for e in store.events("d0")] == ["0", "2", "4"]
    assert [e["parts"]["data"] for e in store.events(after=seqs[2])] == ["3", "4"]
    assert [e["parts"]["data"] for e in store.events(limit=2)] == ["0", "1"]

    store.add_command("t", "u", "s", 1.0, {"task_id": "t"})
    assert store.answer_command("t", 2.0, {"ok": True})
    assert not store.answer_command("other", 2.0, {})
    assert store.command("t") == {
        "task_id": "t",
        "device_uri": "u",
        "service_uri": "s",
        "sent": 1.0,
        "request": {"task_id": "t"},
        "response": {"ok": True},
        "answered": 2.0,
    }
    assert store.command("other") is None


def test_store_on_disk_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "sandbox.db"
    first = SandboxStore(path)
    client = connect(Platform(first, device_types=TYPES))
    assert client.put(KITCHEN) == OK
    assert client.call("commit", "h") == OK
    first.close()
    second = SandboxStore(str(path))
    again = connect(Platform(second, device_types=TYPES), gid=client.gid)
    assert decode_handshake_answer(again.session.handshake_answer()) == (client.gid, "h")
    assert set(again.session.attached) == {KITCHEN.uri}
    second.close()


# --- keep-alive (§2.10) ----------------------------------------------------------------


def keepalive_platform(store: SandboxStore) -> SandboxPlatform:
    return Platform(store, device_types=TYPES, ping_period=20.0, read_timeout=40.0)


def test_the_platform_pings_every_period_until_the_client_pings(store: SandboxStore) -> None:
    client = connect(keepalive_platform(store))
    session = client.session
    assert session.keepalive(100.0) is Keepalive.NOTHING  # the clock starts here
    seen = []
    for now in range(101, 200):
        session.heard(float(now))  # the client keeps talking: no deadline
        seen.append(session.keepalive(float(now)))
    assert [n for n, a in zip(range(101, 200), seen, strict=True) if a is Keepalive.PING] == [
        120,
        140,
        160,
        180,
    ]
    session.heard(200.0, ping=True)  # the client's first ping: the server stops for good
    assert all(session.keepalive(float(now)) is not Keepalive.PING for now in range(200, 230))
    assert session.client_pings


@pytest.mark.parametrize("frame_at", [10.0, 39.9])
def test_any_frame_pushes_the_read_deadline_and_silence_closes(
    store: SandboxStore, frame_at: float
) -> None:
    client = connect(keepalive_platform(store))
    session = client.session
    session.heard(0.0)
    session.heard(frame_at)
    assert session.keepalive(frame_at + 39.9) is not Keepalive.CLOSE
    assert session.close_reason is None
    assert session.keepalive(frame_at + 40.0) is Keepalive.CLOSE
    assert session.close_reason == "silent for 40 s"


# --- the legacy dialect's server side (Part 2 §1; D4, D10 as amended; issue [13] 2) -------


def legacy_change(uri: str, service: str, parts: list[dict[str, str]]) -> str:
    body = {"device_url": uri, "service_url": service, "protocol_parts": parts}
    return "change:" + json.dumps(body)


def test_a_legacy_session_listens_to_the_users_registered_devices_from_its_start(
    platform: SandboxPlatform,
) -> None:
    """A 2017 client registers and sends `update` once; after a reconnect it sends only
    its credentials, and its devices must still be heard (and commanded)."""
    body = {
        "credentials": {"user": "", "pw": ""},
        "devices": [{"id": KITCHEN.uri, "zway_type": METER, "title": "Kitchen"}],
    }
    assert register(platform, body) == 1
    pushed: list[str] = []
    first = open_legacy_session(platform, '{"user": "", "pw": ""}', pushed.append)
    assert set(first.attached) == {KITCHEN.uri}
    platform.close_session(first)
    again = open_legacy_session(platform, '{"user": "", "pw": ""}', pushed.append)
    parts = [{"name": "header", "value": '{"readings": {"power": 1.5}}'}]
    parts.append({"name": "body", "value": "1.5"})
    assert again.handle(legacy_change(KITCHEN.uri, "sepl_get", parts)) == []
    (event,) = platform.store.events()
    assert event["parts"] == {"metadata": '{"readings": {"power": 1.5}}', "data": "1.5"}
    platform.send_command(KITCHEN.uri, "off", "1")
    (command,) = pushed
    assert json.loads(command)["protocol_parts"] == [{"name": "body", "value": "1"}]
    # A device registered later is heard after the next `update`.
    register(platform, {**body, "devices": [{"id": "u2", "zway_type": METER, "title": ""}]})
    assert "u2" not in again.attached
    again.handle("update")
    assert "u2" in again.attached


def test_a_legacy_event_without_service_is_taken_for_the_devices_own(
    platform: SandboxPlatform,
) -> None:
    """The 2017 client's service setter raises, so its events name the service "": taken.
    A service named and unknown to the type is refused as in the envelope dialect."""
    register(
        platform,
        {"credentials": {"user": "", "pw": ""}, "devices": [{"id": "m", "zway_type": METER}]},
    )
    session = open_legacy_session(platform, '{"user": "", "pw": ""}', lambda text: None)
    body = [{"name": "body", "value": "7"}]
    session.handle(legacy_change("m", "", body))
    session.handle(legacy_change("m", "no-such-service", body))
    assert [(e["service_uri"], e["parts"]) for e in platform.store.events()] == [
        ("", {"data": "7"})
    ]
    assert session.rejected == 1
