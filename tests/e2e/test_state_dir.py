"""The state directory's identity with real processes (issue [14], faults 3 and 8): one
running adapter per directory, and an MQTT client id that is never silently replaced.

Before: a second `run` on the same directory started, and the two adapters, with one
client id, threw each other off the broker every second; an empty `mqtt-client-id` file
made a new identity without a word (orphaning the QoS 1 messages the broker kept for the
old session) and a file that is not UTF-8 crashed start-up with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sepl_dev.broker import Broker
from sepl_dev.stack import SandboxProcess
from tests.peers import POW_SENSOR, events_of, publish
from tests.processes import AdapterProcess, adapter_cli, wait_until


def adapter(broker: Broker, sandbox: SandboxProcess, state: Path, log: Path) -> AdapterProcess:
    return AdapterProcess(
        mqtt_port=broker.port, connector_url=sandbox.ws_url, state_dir=state, log_path=log
    )


def test_a_second_adapter_on_the_same_state_dir_stops_with_one_line(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = adapter(broker, sandbox, state, tmp_path / "first.log").start()
    try:
        second = adapter(broker, sandbox, state, state.parent / "once.log").run_once()
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr  # one line, no traceback
        assert f"{state} is in use by another sepl-adapter" in second.stderr
        assert f"pid {first.process.pid if first.process else '?'}" in second.stderr
        # The first one was never thrown off the broker: its one session goes on.
        publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
        wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "the event")
        assert first.log_text().count("broker confirmed") == 1
        # Commands that only read the state work beside the running adapter.
        for argv in (["deadletters", "list"], ["query", "tasmota:kitchen"]):
            done = adapter_cli(state, *argv)
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
    finally:
        first.stop()
    # The lock went with the process: the directory can be used again at once.
    again = adapter(broker, sandbox, state, tmp_path / "again.log").start()
    again.stop()


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b"  \n", "is empty"), (b"\xff\xfe\x00id", "is not UTF-8 text")],
    ids=["empty", "blank", "not utf-8"],
)
def test_a_broken_client_id_file_stops_start_up_and_is_left_alone(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path, content: bytes, problem: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "mqtt-client-id"
    path.write_bytes(content)
    done = adapter(broker, sandbox, state, state.parent / "once.log").run_once()
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{path} {problem}" in done.stderr
    assert "delete it to start a new session" in done.stderr
    assert path.read_bytes() == content  # no new identity made


def test_a_missing_client_id_file_is_created_and_then_kept(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = adapter(broker, sandbox, state, tmp_path / "a.log").start()
    first.stop()
    made = (state / "mqtt-client-id").read_text(encoding="utf-8").strip()
    assert made.startswith("sepl-adapter-")
    second = adapter(broker, sandbox, state, tmp_path / "b.log").start()
    second.stop()
    assert (state / "mqtt-client-id").read_text(encoding="utf-8").strip() == made
