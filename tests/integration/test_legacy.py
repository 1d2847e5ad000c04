"""The legacy dialect end to end against the real sandbox: lookup, discovery registration,
`update`, `change:` events, bare-JSON commands and `response:` replies (D1, D2, D4)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapter.sepl import Connector, ConnectorConfig, Device
from adapter.sepl.state import GatewayState
from sepl_dev.stack import SandboxProcess
from tests.peers import POW_SENSOR


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as answer:
        return json.load(answer)


KITCHEN = Device.create("tasmota:kitchen", "Tasmota kitchen", "iot#tasmota-plug", {"a": "b"})


@pytest.mark.anyio
async def test_legacy_dialect_end_to_end(sandbox: SandboxProcess, tmp_path: Path) -> None:
    config = ConnectorConfig(
        lookup_url=f"{sandbox.url}/lookup",
        protocol="legacy",
        user="alice",
        password="s3cret",
        reconnect_min=0.1,
        reconnect_max=1,
        state_dir=tmp_path / "state",
    )
    async with Connector(config) as connector:
        await connector.wait_ready(10)
        await connector.send_event(KITCHEN, "sepl_get", POW_SENSOR, '{"readings": {}}')

        events = await anyio.to_thread.run_sync(get_json, f"{sandbox.url}/events")
        assert [(e["device_uri"], e["parts"]["data"]) for e in events] == [
            ("tasmota:kitchen", POW_SENSOR)
        ]

        async def answer_one_command() -> None:
            async for command in connector.commands():
                assert command.device_uri == "tasmota:kitchen"
                await connector.respond(command, '{"POWER":"OFF"}', "{}")
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_one_command)
            answer = await anyio.to_thread.run_sync(
                post_json,
                f"{sandbox.url}/commands",
                {"device": "tasmota:kitchen", "service": "off"},
            )
    request, response = answer["request"], answer["response"]
    assert {k: v for k, v in response.items() if k != "protocol_parts"} == {
        k: v for k, v in request.items() if k != "protocol_parts"
    }
    # On the wire as the 2017 client wrote a reply (D10 as amended), read by the sandbox.
    assert response["protocol_parts"] == [
        {"name": "header", "value": "{}"},
        {"name": "body", "value": '{"POWER":"OFF"}'},
    ]
    assert (answer["data"], answer["metadata"]) == ('{"POWER":"OFF"}', "{}")
    log = sandbox.log_text()
    assert "legacy registration of 1 devices for user 'alice'" in log
    sessions = get_json(f"{sandbox.url}/sessions")
    assert sessions["opened"] == 1


@pytest.mark.anyio
async def test_legacy_registration_with_wrong_password_is_refused(tmp_path: Path) -> None:
    from sepl_dev.broker import free_port

    sandbox = SandboxProcess(free_port(), tmp_path / "sb", tmp_path / "sb.log")
    sandbox.argv = lambda: [  # type: ignore[method-assign]
        *SandboxProcess.argv(sandbox),
        "--users",
        "alice:right",
    ]
    sandbox.start()
    try:
        config = ConnectorConfig(
            url=sandbox.ws_url,
            protocol="legacy",
            user="alice",
            password="wrong",
            reconnect_min=0.1,
            reconnect_max=0.5,
            state_dir=tmp_path / "state",
        )
        config_ok = ConnectorConfig(
            url=sandbox.ws_url,
            protocol="legacy",
            user="alice",
            password="right",
            reconnect_min=0.1,
            reconnect_max=0.5,
            state_dir=tmp_path / "state2",
        )
        status = await anyio.to_thread.run_sync(
            _post_status,
            f"{sandbox.url}/discovery",
            {"credentials": {"user": "alice", "pw": "wrong"}, "devices": []},
        )
        assert status == 401
        status = await anyio.to_thread.run_sync(
            _post_status, f"{sandbox.url}/discovery", {"credentials": "x"}
        )
        assert status == 400
        # A client with a device to register learns of the refusal from the registration
        # (the websocket itself never answers in this dialect) and never becomes ready.
        GatewayState(tmp_path / "state").set_devices({KITCHEN.uri: KITCHEN})
        async with Connector(config) as connector:
            with pytest.raises(TimeoutError):
                await connector.wait_ready(1.5)
            assert "refused the credentials" in connector.last_error
        async with Connector(config_ok) as connector:
            await connector.wait_ready(10)
            await connector.register([KITCHEN])
            assert "tasmota:kitchen" in connector.attached
    finally:
        sandbox.stop()


def _post_status(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --- the 2017 client's wire, frame by frame (Part 2 §1; issue [13] 1 and 2) ---------------
#
# Written from the protocol reference's account of the 2017 client, not from its code: how
# it reads the lookup body, what it posts, the frames it writes and the command it reads.


def split_like_2017(body: str) -> tuple[str, str]:
    """HOST after the first `ws://` up to the next `:`, PORT up to the following `:` or the
    end, nothing trimmed (§1.2)."""
    rest = body.split("ws://", 1)[1]
    host, _, after = rest.partition(":")
    return host, after.split(":", 1)[0]


def change_2017(uri: str, service: str, header: str, body: str) -> str:
    parts = [{"name": n, "value": v} for n, v in (("header", header), ("body", body)) if v]
    return "change:" + json.dumps(
        {
            "device_url": uri,
            "service_url": service,
            "service_name": service,
            "time": "1500554317",
            "task_id": "",
            "protocol_parts": parts,
            "device_instance_id": "",
            "worker_id": "",
            "output_name": "",
        }
    )


def client_2017(sandbox: SandboxProcess) -> dict[str, Any]:
    from websockets.sync.client import connect

    with urllib.request.urlopen(f"{sandbox.url}/lookup", timeout=3) as answer:
        body = answer.read().decode()
    host, port = split_like_2017(body)
    registered = post_json(
        f"http://{host}:{port}/discovery",
        {
            "credentials": {"user": "", "pw": ""},
            "devices": [{"id": "zway:meter", "zway_type": "iot#tasmota-plug", "title": "Meter"}],
        },
    )
    metadata = json.dumps(
        {"time": "2017-07-20T12:00:00.000Z", "topic": "t", "readings": {"power": 42.5}}
    )
    with connect(f"ws://{host}:{port}", open_timeout=5) as ws:
        ws.send(json.dumps({"user": "", "pw": ""}))
        ws.send("update")
        ws.send(change_2017("zway:meter", "sepl_get", metadata, '{"power": 42.5}'))
        ws.send(change_2017("zway:meter", "sepl_get", "", '{"power": 43}'))  # no header
        command_url = f"{sandbox.url}/commands"
        post_json(command_url, {"device": "zway:meter", "service": "off", "data": "1", "wait": 0})
        command = json.loads(ws.recv(timeout=10))
        parts = {p["name"]: p["value"] for p in command["protocol_parts"]}
        reply = {**command, "protocol_parts": [{"name": "body", "value": "done " + parts["body"]}]}
        ws.send("response:" + json.dumps(reply))
        for _ in range(100):
            answered = get_json(f"{sandbox.url}/commands/{command['task_id']}")
            if answered.get("response"):
                break
            time.sleep(0.05)
    return {
        "lookup": body,
        "split": (host, port),
        "registered": registered,
        "command": command,
        "answered": answered,
    }


@pytest.mark.anyio
async def test_the_2017_client_wire_against_the_sandbox(sandbox: SandboxProcess) -> None:
    seen = await anyio.to_thread.run_sync(client_2017, sandbox)
    assert seen["lookup"] == f"ws://127.0.0.1:{sandbox.port}"  # no path, no line end
    assert seen["split"] == ("127.0.0.1", str(sandbox.port))
    assert seen["registered"] == {"registered": 1}
    # header and body are the event's metadata and data; a missing header is no metadata.
    events = await anyio.to_thread.run_sync(get_json, f"{sandbox.url}/events?device=zway:meter")
    assert [e["parts"] for e in events] == [
        {
            "metadata": json.dumps(
                {"time": "2017-07-20T12:00:00.000Z", "topic": "t", "readings": {"power": 42.5}}
            ),
            "data": '{"power": 42.5}',
        },
        {"data": '{"power": 43}'},
    ]
    average = await anyio.to_thread.run_sync(
        get_json, f"{sandbox.url}/devices/zway:meter/average?measurement=power"
    )
    assert [row["result"] for row in average] == [42.5]
    # The command's payload in `body`, where the 2017 client reads it; its reply in `body`.
    assert seen["command"]["protocol_parts"] == [{"name": "body", "value": "1"}]
    assert seen["answered"]["response"]["protocol_parts"] == [{"name": "body", "value": "done 1"}]
