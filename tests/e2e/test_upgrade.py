"""Upgrading from the state directory of commit ecd6b7c (before issue [12]): the split
devices (`shelly:<id>/relay/<n>`, `shelly:<id>/switch:0`, `esphome:<node>/<c>/<o>`) are
readings of their physical device now. tests/fixtures/state-ecd6b7c/ was written by that
commit's own code and mappings (make_state_ecd6b7c.py): 30 minutes of history and the last
round of events still queued in the outbox.

First the migrations on copies of the files, then the whole adapter on a copy of the
directory, against a real Mosquitto and the sandbox platform."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapter.history import HistoryStore, Query
from adapter.outbox import Outbox
from adapter.sepl.state import GatewayState
from adapter.stateupgrade import upgrade_state_dir
from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.peers import http_json
from tests.processes import AdapterProcess, wait_until

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state-ecd6b7c"
SWITCH25 = "shelly:shellyswitch25-ABC123"
PLUG_S = "shelly:shellyplug-s-C0FFEE"
PLUS1PM = "shelly:shellyplus1pm-a8032abe54dc"
NODE = "esphome:livingroom"
SPLIT = {
    f"{SWITCH25}/relay/0",
    f"{SWITCH25}/relay/1",
    f"{PLUG_S}/relay/0",
    f"{PLUS1PM}/switch:0",
    "esphome:livingroom/sensor/living_room_temperature",
    "esphome:livingroom/switch/my_relay",
    "esphome:livingroom/binary_sensor/motion",
}
EVERYTHING = Query(None, "all", None)
NOW = 1_800_000_000.0


@pytest.fixture
def state(tmp_path: Path) -> Path:
    copy = tmp_path / "adapter-state"
    shutil.copytree(FIXTURE, copy)
    return copy


def averages(store: HistoryStore, uri: str, name: str) -> tuple[float, int]:
    [row] = store.average(uri, Query(None, "all", name), now=NOW)
    return row["result"], row["data_points"]


def test_the_history_is_re_keyed_renamed_and_converted(state: Path) -> None:
    old = sqlite3.connect(state / "history.sqlite3")
    assert old.execute("PRAGMA user_version").fetchone() == (2,)
    rows_before = old.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    old.close()
    store = HistoryStore(state / "history.sqlite3")
    try:
        # Every reading kept: a row per reading then, a message of them now.
        (kept,) = store.db.execute(
            "SELECT SUM(json_array_length(vals)) FROM"
            " (SELECT vals FROM messages UNION ALL SELECT vals FROM messages_recent)"
        ).fetchone()
        assert kept == rows_before
        uris = {row["uri"] for row in store.devices()}
        assert uris == {SWITCH25, PLUG_S, PLUS1PM, NODE, "tasmota:kitchen"}
        # Shelly 2.5: relay 0 plain, relay 1 suffixed; energy counted in Wh is kWh now.
        assert averages(store, SWITCH25, "power") == (47.5, 30)
        assert averages(store, SWITCH25, "power_1") == (0.0, 30)
        assert averages(store, SWITCH25, "energy") == pytest.approx((0.01, 30))
        assert averages(store, SWITCH25, "energy_1") == pytest.approx((0.02, 30))
        assert averages(store, SWITCH25, "state_1") == (0.0, 30)
        assert averages(store, SWITCH25, "device_temperature") == pytest.approx((51.2, 30))
        assert averages(store, PLUS1PM, "energy") == pytest.approx((5.125, 30))
        assert averages(store, PLUS1PM, "device_temperature") == pytest.approx((25.3, 30))
        assert averages(store, NODE, "living_room_temperature") == (21.5, 30)
        assert averages(store, NODE, "state_my_relay") == (1.0, 30)
        assert averages(store, NODE, "motion") == (0.0, 30)
        assert averages(store, "tasmota:kitchen", "state") == (1.0, 30)
        assert averages(store, "tasmota:kitchen", "energy") == pytest.approx((6.294, 30))
        # The device's merged state, each reading with its unit.
        plug = store.device(SWITCH25)
        assert plug is not None
        assert (plug["name"], plug["primary"]) == ("Shelly shellyswitch25-ABC123", "power")
        assert plug["readings"]["energy_1"]["unit"] == "kWh"
        assert plug["readings"]["energy_1"]["value"] == pytest.approx(0.02)
        assert plug["readings"]["power"]["unit"] == "W"
        assert set(plug["readings"]) == {
            "state",
            "power",
            "energy",
            "state_1",
            "power_1",
            "energy_1",
            "device_temperature",
        }
        assert (
            averages(store, SWITCH25, "power")[0]
            == store.average(SWITCH25, EVERYTHING, NOW)[0]["result"]
        )
        node = store.device(NODE)
        assert node is not None and node["type"] == "iot#esphome-node"
    finally:
        store.close()


def test_queued_events_are_re_keyed_with_renamed_readings(state: Path) -> None:
    outbox = Outbox(state / "outbox.sqlite3")
    try:
        entries = outbox.after(0, 100)
        assert len(entries) == 15  # nothing lost
        uris = {e.device.uri for e in entries}
        assert not uris & SPLIT
        relay1 = [e for e in entries if json.loads(e.metadata)["topic"].endswith("/relay/1/energy")]
        [event] = relay1
        assert event.device.uri == SWITCH25
        assert event.device.name == "Shelly shellyswitch25-ABC123"
        assert event.data == "1200"  # the payload exactly as published (D10)
        metadata = json.loads(event.metadata)
        assert metadata["readings"] == {"energy_1": pytest.approx(0.02)}
        assert metadata["units"] == {"energy_1": "kWh"}
    finally:
        outbox.close()


def test_the_split_devices_leave_the_gateway_once(state: Path) -> None:
    assert upgrade_state_dir(state) == sorted(SPLIT)
    known = GatewayState(state / "connector").devices
    assert set(known) == {SWITCH25, "tasmota:kitchen"}
    assert upgrade_state_dir(state) == []  # once


def test_the_adapter_resumes_a_state_directory_of_ecd6b7c(
    broker: Broker, sandbox: SandboxProcess, state: Path, tmp_path: Path
) -> None:
    port = free_port()
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=state,
        log_path=tmp_path / "adapter.log",
        env={"ADAPTER_HTTP": f"127.0.0.1:{port}"},
    ).start()
    try:
        adapter.wait_for_log("upgrade: 7 devices of the earlier one-device-per-topic layout", 5)

        def delivered() -> dict[str, list[dict[str, Any]]] | None:
            found: dict[str, list[dict[str, Any]]] = {}
            for event in http_json(f"{sandbox.url}/events"):
                found.setdefault(event["device_uri"], []).append(event)
            return found if sum(len(v) for v in found.values()) >= 15 else None

        found = wait_until(delivered, 20, "the 15 queued events")
        assert isinstance(found, dict)
        assert set(found) == {SWITCH25, PLUG_S, PLUS1PM, NODE, "tasmota:kitchen"}
        devices = http_json(f"http://127.0.0.1:{port}/devices")
        uris = [d["uri"] for d in devices]
        assert sorted(uris) == sorted(set(uris))  # each device once
        assert not set(uris) & SPLIT
        plug = next(d for d in devices if d["uri"] == SWITCH25)
        assert plug["channels"] == {"state": True, "state_1": False}
        assert plug["readings"]["energy_1"]["unit"] == "kWh"
        assert {c["service"] for c in plug["commands"]} == {"on", "off", "toggle"}
        overview = http_json(f"http://127.0.0.1:{port}/api/overview")
        print("platform errors:", overview.get("platform", {}).get("errors"))
    finally:
        adapter.stop()
    log = adapter.log_text()
    assert "disconnecting" not in log  # an unattached device's disconnect is a 500 (D8)
    assert " 500" not in log
