"""The legacy dialect end to end against the real sandbox: lookup, discovery registration,
`update`, `change:` events, bare-JSON commands and `response:` replies (D1, D2, D4)."""

from __future__ import annotations

import json
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
    assert {p["name"]: p["value"] for p in response["protocol_parts"]}["data"] == (
        '{"POWER":"OFF"}'
    )
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
