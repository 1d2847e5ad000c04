"""Faults found from outside (issue [14]), each reproduced with real processes: Mosquitto,
the sandbox platform, the adapter and its CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.peers import events_of, publish
from tests.processes import REPO, AdapterProcess, wait_until


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    text = body.decode()
    return status, json.loads(text) if text.startswith(("{", "[")) else text


def cli(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *argv],
        cwd=REPO,
        env={**os.environ, "ADAPTER_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_dead_letter_replay_from_the_cli_keeps_the_running_adapters_counts(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Fault 9: the replayed events were delivered and deleted by the running adapter,
    whose count of waiting events knew nothing of them: it went below zero, /healthz,
    /metrics and the status page answered 500 until a restart, and SIGTERM ended in a
    traceback."""
    state, port = tmp_path / "state", free_port()
    api = f"http://127.0.0.1:{port}"
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=state,
        log_path=tmp_path / "adapter.log",
        env={"ADAPTER_HTTP": f"127.0.0.1:{port}"},
    ).start()
    try:
        for n in range(3):  # not JSON: refused by the rule, kept as dead letters
            publish(broker.port, "tele/kitchen/SENSOR", f"not json {n}")
        wait_until(lambda: get(f"{api}/healthz")[1]["dead_letters"] == 3, 15, "3 dead letters")
        replayed = cli(state, "deadletters", "replay")
        assert replayed.returncode == 0, replayed.stderr
        # Sent again as they are (the platform takes an event whatever its data).
        wait_until(lambda: len(events_of(sandbox, "tasmota:kitchen")) == 3, 15, "the replay")

        def settled() -> bool:
            status, body = get(f"{api}/healthz")
            return status == 200 and body["outbox_depth"] == 0 and body["dead_letters"] == 0

        wait_until(settled, 15, "/healthz with an empty outbox")
        for path in ("/metrics", "/api/overview", "/"):
            assert get(api + path)[0] == 200, path
        metrics = get(f"{api}/metrics")[1]
        assert "sepl_adapter_outbox_depth 0.0" in metrics
    finally:
        code = adapter.stop()
    assert code == 0
    assert "Traceback" not in adapter.log_text()
