"""The blocking facade from a plain (non-async) script against the real sandbox."""

from __future__ import annotations

import threading
from pathlib import Path

from adapter.sepl import BlockingConnector, ConnectorConfig
from sepl_dev.stack import SandboxProcess
from tests.integration.test_legacy import KITCHEN
from tests.peers import POW_SENSOR, events_of, http_json


def test_blocking_connector_basic_example(sandbox: SandboxProcess, tmp_path: Path) -> None:
    config = ConnectorConfig(url=sandbox.ws_url, state_dir=tmp_path / "state")
    with BlockingConnector(config) as connector:
        connector.wait_ready(10)
        connector.register([KITCHEN])
        connector.send_event(KITCHEN, "sepl_get", POW_SENSOR)
        assert [e["parts"]["data"] for e in events_of(sandbox, KITCHEN.uri)] == [POW_SENSOR]

        answers: list[object] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                http_json(f"{sandbox.url}/commands", {"device": KITCHEN.uri, "service": "on"})
            )
        )
        sender.start()
        command = connector.receive_command(timeout=10)
        assert command is not None and command.service_uri == "on"
        connector.respond(command, '{"POWER":"ON"}')
        sender.join(15)
        assert connector.receive_command(timeout=0.1) is None
    assert answers and isinstance(answers[0], dict)
    assert answers[0]["response"]["device_url"] == KITCHEN.uri
