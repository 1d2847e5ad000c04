"""The development broker: starts, relays messages, persists retained ones, stays on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.broker import (
    MOSQUITTO_MISSING,
    Broker,
    BrokerError,
    MqttProbe,
    find_mosquitto,
    render_config,
)


def test_publish_and_subscribe_through_broker(broker: Broker) -> None:
    with MqttProbe(broker.port) as sub, MqttProbe(broker.port) as pub:
        sub.subscribe("tele/+/SENSOR", qos=1)
        pub.publish("tele/kitchen/SENSOR", '{"ENERGY":{"Power":12}}', qos=1)
        msg = sub.expect("tele/kitchen/SENSOR")
        assert msg.json() == {"ENERGY": {"Power": 12}}
        assert msg.retain is False


def test_plain_paho_v2_client_connects(broker: Broker) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="plain")
    assert client.connect("127.0.0.1", broker.port) == mqtt.MQTT_ERR_SUCCESS
    client.loop_start()
    try:
        info = client.publish("x/y", "z", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_retained_message_survives_restart(broker: Broker) -> None:
    with MqttProbe(broker.port) as pub:
        pub.publish("tele/kitchen/LWT", "Online", qos=1, retain=True)
    old_pid = broker.pid
    broker.restart()
    assert broker.pid != old_pid
    with MqttProbe(broker.port) as sub:
        sub.subscribe("tele/+/LWT")
        msg = sub.expect("tele/kitchen/LWT", retain=True)
        assert msg.text == "Online"
    assert "Saving in-memory database" in broker.log_text()


def test_queued_qos0_message_reaches_persistent_session_after_restart(broker: Broker) -> None:
    # queue_qos0_messages: a reading published while the adapter is away is not lost,
    # not even across a broker restart.
    with MqttProbe(broker.port, client_id="adapter-like", clean_session=False) as c:
        c.subscribe("tele/#", qos=1)
    with MqttProbe(broker.port) as device, MqttProbe(broker.port) as witness:
        witness.subscribe("tele/#", qos=1)
        device.publish("tele/garage/SENSOR", "{}", qos=0)
        # QoS 0 has no acknowledgement; a live subscriber getting it proves that the broker
        # has also queued it for the offline session.
        witness.expect("tele/garage/SENSOR")
    broker.restart()
    with MqttProbe(broker.port, client_id="adapter-like", clean_session=False) as c:
        assert c.expect("tele/garage/SENSOR").payload == b"{}"


def test_log_shows_retained_publishes(broker: Broker) -> None:
    with MqttProbe(broker.port, client_id="retainer") as pub:
        pub.publish("stat/x/POWER", "ON", qos=1, retain=True)
    assert "Received PUBLISH from retainer (d0, q1, r1" in broker.log_text()


def test_listens_on_loopback_only(broker: Broker) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
        pass
    # Another loopback address reaches a 0.0.0.0 listener but not one bound to 127.0.0.1.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", broker.port), timeout=2).close()
    hex_port = f"{broker.port:04X}"
    listeners: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and local.endswith(":" + hex_port):  # 0A = LISTEN
                listeners.append(local)
    assert listeners == [f"0100007F:{hex_port}"]


def test_generated_config(tmp_path: Path) -> None:
    text = render_config(
        Broker(tmp_path).template,
        port=12345,
        data_dir=tmp_path / "d",
        log_file=tmp_path / "m.log",
        run_as_root=True,
    )
    lines = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    assert "listener 12345 127.0.0.1" in lines
    assert f"persistence_location {tmp_path}/d/" in lines
    assert f"log_dest file {tmp_path}/m.log" in lines
    for setting in (
        "allow_anonymous true",
        "persistence true",
        "max_queued_messages 100000",
        "queue_qos0_messages true",
        "persistent_client_expiration 1d",
        "log_type all",
        "user root",
    ):
        assert setting in lines
    assert "$" not in text.replace("$SYS", "")
    as_user = render_config(
        Broker(tmp_path).template,
        port=1,
        data_dir=tmp_path,
        log_file=tmp_path / "l",
        run_as_root=False,
    )
    assert "user root" not in [line.strip() for line in as_user.splitlines()]


def test_start_failure_reports_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("listener ${PORT} 127.0.0.1\nno_such_option ${DATA_DIR}${LOG_FILE}${LOG_TYPE}\n")
    b = Broker(tmp_path / "b", template=bad)
    with pytest.raises(BrokerError, match="exited with code"):
        b.start()


def test_missing_mosquitto_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(BrokerError) as info:
        find_mosquitto()
    assert str(info.value) == MOSQUITTO_MISSING
    assert MOSQUITTO_MISSING == "mosquitto not found: install it with 'apt-get install mosquitto'"
