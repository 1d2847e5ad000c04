"""`sepl-adapter simulate` against a real broker: Tasmota-like LWT, telemetry and commands."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sepl_dev.broker import Broker, MqttProbe, child_preexec, stop_process, tail
from sepl_dev.simulate import parse_power


@pytest.fixture
def probe(broker: Broker) -> Iterator[MqttProbe]:
    # Subscribed before the simulator starts, so nothing it publishes is missed.
    with MqttProbe(broker.port) as p:
        p.subscribe("tele/#", qos=1)
        p.subscribe("stat/#", qos=1)
        yield p


def start_simulator(broker: Broker, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [
        *(sys.executable, "-m", "adapter", "simulate"),
        *("--mqtt-port", str(broker.port), "--devices", "kitchen,garage"),
        *extra,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_preexec
        )


def test_simulator_behaves_like_tasmota(broker: Broker, probe: MqttProbe, tmp_path: Path) -> None:
    log = tmp_path / "simulate.log"
    sim = start_simulator(broker, log, "--interval", "1")
    try:
        probe.expect("tele/kitchen/LWT", payload="Online", timeout=15)
        sensor = probe.expect("tele/kitchen/SENSOR").json()
        assert isinstance(sensor["Time"], str) and "+" not in sensor["Time"]
        assert isinstance(sensor["ENERGY"]["Power"], int | float)
        assert sensor["ENERGY"]["Power"] > 0  # the relay starts ON
        assert probe.expect("tele/garage/STATE").json()["POWER"] == "ON"

        # The LWT is retained: a client that subscribes later gets it.
        with MqttProbe(broker.port) as late:
            late.subscribe("tele/kitchen/LWT")
            assert late.expect("tele/kitchen/LWT", retain=True).text == "Online"

        mark = probe.mark()
        probe.publish("cmnd/kitchen/POWER", "OFF", qos=1)
        assert probe.expect("stat/kitchen/RESULT", since=mark).json() == {"POWER": "OFF"}
        power = probe.expect("stat/kitchen/POWER", since=mark)
        assert (power.text, power.retain) == ("OFF", False)
        # The next reading reflects the relay.
        after = probe.expect("tele/kitchen/SENSOR", since=probe.mark()).json()
        assert after["ENERGY"]["Power"] == 0

        mark = probe.mark()
        probe.publish("cmnd/kitchen/Dimmer", "40")
        assert probe.expect("stat/kitchen/RESULT", since=mark).json() == {
            "POWER": "ON",
            "Dimmer": 40,
        }
        mark = probe.mark()
        probe.publish("cmnd/kitchen/Bogus", "1")
        assert probe.expect("stat/kitchen/RESULT", since=mark).json() == {"Command": "Unknown"}
        mark = probe.mark()
        probe.publish("cmnd/kitchen/POWER", "")  # empty payload = query
        assert probe.expect("stat/kitchen/RESULT", since=mark).json() == {"POWER": "ON"}

        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=15) == 0, tail(log)
    finally:
        stop_process(sim)

    with MqttProbe(broker.port) as late:
        late.subscribe("tele/+/LWT")
        assert late.expect("tele/kitchen/LWT", retain=True).text == "Offline"
        assert late.expect("tele/garage/LWT", retain=True).text == "Offline"
    text = log.read_text()
    assert "kitchen: POWER 'OFF'" in text  # one log line per command
    # The simulator must never publish retained commands (device-conventions §3.4.2).
    assert ", r1, m" not in "".join(
        line for line in broker.log_text().splitlines() if "'cmnd/" in line
    )


def test_killed_simulator_leaves_offline_will(
    broker: Broker, probe: MqttProbe, tmp_path: Path
) -> None:
    log = tmp_path / "simulate.log"
    sim = start_simulator(broker, log)
    try:
        probe.expect("tele/garage/LWT", payload="Online", timeout=15)
        mark = probe.mark()
        sim.kill()  # no chance to say goodbye: the broker sends the Will
        sim.wait()
        probe.expect("tele/garage/LWT", payload="Offline", since=mark)
    finally:
        stop_process(sim)


@pytest.mark.parametrize(
    ("param", "current", "expected"),
    [
        ("ON", False, True),
        ("on", False, True),
        ("1", False, True),
        ("true", False, True),
        ("OFF", True, False),
        ("0", True, False),
        ("false", True, False),
        ("off", True, False),
        ("TOGGLE", True, False),
        ("2", False, True),
        ("", True, True),
        ("?", False, False),
        ("nonsense", True, True),
    ],
)
def test_power_parameters(param: str, current: bool, expected: bool) -> None:
    assert parse_power(param, current) is expected


def test_simulator_reconnects_after_broker_restart(broker: Broker, tmp_path: Path) -> None:
    log = tmp_path / "simulate.log"
    sim = start_simulator(broker, log, "--interval", "1")
    try:
        with MqttProbe(broker.port) as before:
            before.subscribe("tele/kitchen/SENSOR")
            before.expect("tele/kitchen/SENSOR", timeout=15)
        broker.restart()
        # SENSOR is not retained: receiving one after the restart proves the reconnect.
        with MqttProbe(broker.port) as after:
            after.subscribe("tele/+/SENSOR")
            after.expect("tele/kitchen/SENSOR", timeout=15)
            after.subscribe("tele/+/LWT")
            assert after.expect("tele/kitchen/LWT", retain=True).text == "Online"
    finally:
        stop_process(sim)
    assert "reconnecting" in log.read_text()
