"""`sepl-adapter check` and `explain` as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def test_check_passes_on_every_bundled_file(tmp_path: Path) -> None:
    result = cli("check", str(REPO / "mappings"))
    assert result.returncode == 0, result.stderr
    assert "device types and services" in result.stdout and result.stdout.endswith("ok\n")
    assert "is a placeholder" in result.stdout  # D11: placeholder types are warned about
    # The disabled files pass too, each on its own.
    for path in sorted((REPO / "mappings").glob("*.yaml")):
        one = tmp_path / path.stem
        one.mkdir()
        text = path.read_text().replace("enabled: false", "enabled: true")
        (one / path.name).write_text(text)
        result = cli("check", str(one))
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (
            "tele/pow1/SENSOR",
            '{"Time":"2018-02-15T17:37:10","ENERGY":{"Total":6.294,"Power":2635,"Voltage":227}}',
            ["device: tasmota:pow1", "power 2635 W", "energy 6.294 kWh"],
        ),
        ("livingroom/sensor/living_room_temperature/state", "23.5", ["esphome:", "23.5"]),
        ("shellies/shellyplug-s-ABC123/relay/0/power", "47.11", ["shelly:", "47.11"]),
        (
            "zigbee2mqtt/kitchen/floor_light",
            '{"temperature": 27.34, "humidity": 44.72}',
            ["z2m:kitchen/floor_light", "27.34"],
        ),
        (
            "home/OpenMQTTGateway/BTtoMQTT/4C33A6603C79",
            '{"hum":"52.6","tempc":"19.2","tempf":"66.56"}',
            ["omg:", "19.2"],
        ),
    ],
)
def test_explain_shows_device_and_readings(topic: str, payload: str, expected: list[str]) -> None:
    result = cli("explain", topic, payload)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout


def test_explain_and_check_show_a_device_merged_from_its_topics(tmp_path: Path) -> None:
    # A state directory of ecd6b7c: check names the split devices that become readings of
    # their physical device; explain shows the merged state a message updates.
    state = tmp_path / "state"
    shutil.copytree(Path(__file__).resolve().parents[1] / "fixtures" / "state-ecd6b7c", state)
    result = cli("check", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "note: shelly:shellyswitch25-ABC123/relay/1 is a part of shelly:shellyswitch25-ABC123"
        " now" in result.stdout
    )
    result = cli(
        "explain", "--state-dir", str(state), "shellies/shellyswitch25-ABC123/relay/1/power", "33.5"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "device: shelly:shellyswitch25-ABC123 " in result.stdout
    assert "readings: power_1 33.5 W" in result.stdout
    assert "    power_1 33.5 W (this message)" in result.stdout
    assert "    energy_1 0.02 kWh (2026-11-20T12:29:00.000Z)" in result.stdout
    assert "    state 1 (2026-11-20T12:29:00.000Z)" in result.stdout


def test_explain_says_why_nothing_matched() -> None:
    result = cli("explain", "tele/kitchen/SENSORX", "{}")
    assert result.returncode == 1
    assert "no rule takes" in result.stdout and "wants 'SENSOR'" in result.stdout


def test_check_points_at_the_broken_line(tmp_path: Path) -> None:
    broken = tmp_path / "mappings"
    broken.mkdir()
    shutil.copy(REPO / "mappings" / "tasmota.yaml", broken / "tasmota.yaml")
    (broken / "extra.yaml").write_text(
        'family: x\nrules:\n  - id: x1\n    topic: "a/#/b"\n    device: "x:{y}"\n'
    )
    result = cli("check", str(broken))
    assert result.returncode == 2  # as start-up
    assert f"{broken / 'extra.yaml'}:4:" in result.stderr, result.stderr
