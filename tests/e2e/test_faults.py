"""Faults found from outside (issue [14]), each reproduced with real processes: Mosquitto,
the sandbox platform, the adapter and its CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.peers import POW_SENSOR, events_of, publish
from tests.processes import REPO, AdapterProcess, adapter_cli, wait_until


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    text = body.decode(errors="replace")
    return status, json.loads(text) if text.startswith(("{", "[")) else text


def adapter_at(
    broker: Broker,
    sandbox: SandboxProcess,
    state: Path,
    log: Path,
    env: dict[str, str] | None = None,
) -> AdapterProcess:
    return AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=state,
        log_path=log,
        env=env,
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
    adapter = adapter_at(
        broker, sandbox, state, tmp_path / "adapter.log", {"ADAPTER_HTTP": f"127.0.0.1:{port}"}
    ).start()
    try:
        for n in range(3):  # not JSON: refused by the rule, kept as dead letters
            publish(broker.port, "tele/kitchen/SENSOR", f"not json {n}")
        wait_until(lambda: get(f"{api}/healthz")[1]["dead_letters"] == 3, 15, "3 dead letters")
        replayed = adapter_cli(state, "deadletters", "replay")
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
        # The history's disk budget (HISTORY_MAX_BYTES) is watched and counted.
        assert "sepl_adapter_history_dropped_for_space_total 0.0" in metrics
        assert re.search(r"sepl_adapter_history_bytes [1-9]", metrics)
    finally:
        code = adapter.stop()
    assert code == 0
    assert "Traceback" not in adapter.log_text()


# --- fault 5: unbounded mapping files ------------------------------------------------------

DEEP_RULE = """\
family: deep
device_type: "iot#tasmota-plug"
rules:
  - id: deep
    topic: "deep/{{n}}"
    device: {{uri: "deep:{{n}}", name: "Deep {{n}}"}}
    service: sepl_get
    payload: json
    readings: {{t: "{path}"}}
"""


def huge_mapping(path: Path, megabytes: int) -> None:
    """A valid-looking mapping file of `megabytes` MB (rules that all look alike)."""
    rule = (
        '  - id: r{n}\n    topic: "huge/{n}"\n    device: {{uri: "huge:{n}", name: "H"}}\n'
        '    service: sepl_get\n    payload: number\n    readings: {{v: "@"}}\n'
    )
    with path.open("w", encoding="utf-8") as out:
        out.write('family: huge\ndevice_type: "iot#tasmota-plug"\nrules:\n')
        n = 0
        while out.tell() < megabytes * 1_000_000:
            out.write("".join(rule.format(n=k) for k in range(n, n + 1000)))
            n += 1000


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", "check", str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_huge_or_deeply_nested_mapping_is_one_line_for_check(tmp_path: Path) -> None:
    """Before: a file of tens of MB took `check` minutes and gigabytes; a path nested
    thousands deep crashed with a RecursionError traceback thousands of lines long."""
    huge, deep = tmp_path / "huge", tmp_path / "deep"
    huge.mkdir()
    deep.mkdir()
    huge_mapping(huge / "huge.yaml", 20)
    (deep / "deep.yaml").write_text(DEEP_RULE.format(path="(" * 5000 + "a" + ")" * 5000))
    for directory, expected in (
        (huge, f"{huge / 'huge.yaml'}: 2"),  # "<file>: 20,xxx,xxx bytes, more than ..."
        (deep, f"{deep / 'deep.yaml'}:9:"),
    ):
        done = check(directory)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.startswith(f"error: {expected}"), done.stderr
    assert "MAPPINGS_MAX_BYTES" in check(huge).stderr
    assert "nested 5000 levels deep" in check(deep).stderr


def test_a_huge_mapping_at_start_up_and_in_a_hot_reload(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Start-up stops with one line; a hot reload logs one and keeps the mappings it had
    (before, the running adapter read and parsed the whole file, gigabytes of memory)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(REPO / "mappings" / "tasmota.yaml", mappings / "tasmota.yaml")
    huge_mapping(tmp_path / "huge.yaml", 9)  # just over the default 8 MiB
    env = {"MAPPINGS_DIR": str(mappings)}
    adapter = adapter_at(broker, sandbox, tmp_path / "state", tmp_path / "adapter.log", env).start()
    try:
        shutil.copy(tmp_path / "huge.yaml", mappings / "huge.yaml")
        adapter.wait_for_log("mapping change not applied", 10)
        assert "more than MAPPINGS_MAX_BYTES" in adapter.log_text()
        publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
        wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "an event after it")
    finally:
        assert adapter.stop() == 0
    again = adapter_at(broker, sandbox, tmp_path / "state2", tmp_path / "2.log", env).run_once()
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1, again.stderr[-2000:]
    assert f"{mappings / 'huge.yaml'}: " in again.stderr
    assert "more than MAPPINGS_MAX_BYTES" in again.stderr


# --- fault 6: damaged SQLite files ----------------------------------------------------------


def damage(path: Path) -> bytes:
    """Overwrite a database's pages after the header: SQLite reads the header, then finds
    its schema page damaged."""
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(len(data[100:4096]))
    path.write_bytes(bytes(data))
    return bytes(data)


def made_state(broker: Broker, sandbox: SandboxProcess, tmp_path: Path) -> Path:
    """A state directory of a real run (an event forwarded), stopped."""
    state = tmp_path / "state"
    adapter = adapter_at(broker, sandbox, state, tmp_path / "first.log").start()
    publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
    wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "the first event")
    assert adapter.stop() == 0
    return state


def test_a_damaged_outbox_stops_start_up_with_one_line_and_is_kept(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Before: a traceback that did not name the file."""
    state = made_state(broker, sandbox, tmp_path)
    outbox = state / "outbox.sqlite3"
    damaged = damage(outbox)
    done = adapter_at(broker, sandbox, state, tmp_path / "second.log").run_once()
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"outbox database {outbox} is damaged" in done.stderr
    assert "move it aside" in done.stderr and ".recover" in done.stderr
    assert outbox.read_bytes() == damaged  # undelivered events are never deleted silently
    health = adapter_cli(state, "check", str(REPO / "mappings"), "--state-dir", str(state))
    assert f"error: {outbox} is damaged" in health.stdout, health.stdout


def test_a_damaged_history_is_moved_aside_and_forwarding_goes_on(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Before: the history, which only serves averages, stopped start-up and so blocked
    forwarding."""
    state = made_state(broker, sandbox, tmp_path)
    history = state / "history.sqlite3"
    damaged = damage(history)
    adapter = adapter_at(broker, sandbox, state, tmp_path / "second.log").start()
    try:
        publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)
        wait_until(lambda: len(events_of(sandbox, "tasmota:kitchen")) == 2, 15, "an event")
    finally:
        assert adapter.stop() == 0
    log = adapter.log_text()
    assert f"history database {history} is damaged" in log and "moved to" in log
    (aside,) = state.glob("history.sqlite3.damaged-*[0-9Z]")
    assert aside.read_bytes() == damaged and aside.name in log
    health = adapter_cli(state, "check", str(REPO / "mappings"), "--state-dir", str(state))
    assert f"{history}: ok" in health.stdout and f"{state / 'outbox.sqlite3'}: ok" in health.stdout


# --- fault 4: retained messages published while the adapter was away -------------------------


def test_a_retained_reading_published_while_away_is_forwarded_once(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """The session queues the reading (QoS 1) while the adapter is away. Before, the
    adapter subscribed again at every connect, so the broker also sent the retained copy:
    two events of one reading, with the default FORWARD_RETAINED=changed."""
    state = tmp_path / "state"

    def start(name: str) -> AdapterProcess:
        return adapter_at(broker, sandbox, state, tmp_path / f"{name}.log").start()

    first = start("first")
    assert first.stop() == 0
    publish(broker.port, "tele/away/SENSOR", POW_SENSOR, retain=True)
    second = start("second")
    try:
        wait_until(lambda: events_of(sandbox, "tasmota:away"), 15, "the queued reading")
        publish(broker.port, "tele/kitchen/SENSOR", POW_SENSOR)  # later than any copy
        wait_until(lambda: events_of(sandbox, "tasmota:kitchen"), 15, "a later reading")
        assert len(events_of(sandbox, "tasmota:away")) == 1
        assert "kept with the session" in second.log_text()
    finally:
        assert second.stop() == 0
    # A new session (as when the broker lost its state) subscribes and gets retained state.
    fresh = adapter_at(broker, sandbox, tmp_path / "fresh", tmp_path / "fresh.log").start()
    try:
        wait_until(lambda: len(events_of(sandbox, "tasmota:away")) == 2, 15, "the retained copy")
    finally:
        assert fresh.stop() == 0


# --- fault 1: an event larger than the platform takes ---------------------------------------


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_oversized_payload_is_a_dead_letter_and_the_link_stays_up(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Before: an event larger than the platform takes (here over the sandbox's 16 MiB
    frame limit) closed the link at every try, the events behind it never arrived, and
    the process held the payload many times over. Now: dead-lettered unsent (default
    EVENT_MAX_BYTES 1 MiB), never parsed; the next reading arrives on the same session."""
    state = tmp_path / "state"
    adapter = adapter_at(broker, sandbox, state, tmp_path / "adapter.log").start()
    try:
        assert adapter.process is not None
        pid = adapter.process.pid
        publish(broker.port, "tele/before/SENSOR", POW_SENSOR)
        wait_until(lambda: events_of(sandbox, "tasmota:before"), 15, "the first reading")
        baseline = current_rss_mb(pid)
        size = 64 * 2**20  # large enough that the copies, not the noise, decide
        huge = '{"ENERGY":{"Power":1},"pad":"' + "x" * size + '"}'
        publish(broker.port, "tele/huge/SENSOR", huge)
        publish(broker.port, "tele/after/SENSOR", POW_SENSOR)
        wait_until(lambda: events_of(sandbox, "tasmota:after"), 30, "the reading after it")
        peak = peak_rss_mb(pid)
        letters = adapter_cli(state, "deadletters", "list", "--json").stdout.splitlines()
        sessions = get(f"{sandbox.url}/sessions")[1]
    finally:
        assert adapter.stop() == 0
    (letter,) = [json.loads(line) for line in letters]
    print(f"RSS {baseline:.0f} MB before, peak {peak:.0f} MB with a {size >> 20} MiB payload")
    assert letter["device_uri"] == "" or letter["rule"] == ""  # kept as it came, unmapped
    assert "more than EVENT_MAX_BYTES" in letter["reason"]
    assert len(letter["data"]) == len(huge)
    assert events_of(sandbox, "tasmota:huge") == []
    assert sessions["opened"] == 1
    # The adapter holds the payload once: paho's message payload, written to SQLite in
    # pieces. The peak is paho's decoding of the packet (its read buffer and two slices of
    # it: 3 sizes, library code we do not control), plus a few MB of pieces and allocator
    # slack (3.15-3.3 sizes measured); before, writing the dead letter added the text and
    # SQLite's two copies on top of the payload (4.1 sizes).
    assert peak - baseline < 3.5 * size / 2**20


def test_an_event_whose_frame_grows_past_the_limit_is_never_sent(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """A payload under EVENT_MAX_BYTES whose event frame is over it (JSON escapes every
    quote of the data): dead-lettered at the sender, measured exactly."""
    state = tmp_path / "state"
    adapter = adapter_at(
        broker, sandbox, state, tmp_path / "adapter.log", {"EVENT_MAX_BYTES": "64KiB"}
    ).start()
    try:
        quoted = '{"ENERGY":{"Power":5},"note":"' + '\\"' * 20_000 + '"}'  # 40 KB
        publish(broker.port, "tele/quotes/SENSOR", quoted)
        publish(broker.port, "tele/after/SENSOR", POW_SENSOR)
        wait_until(lambda: events_of(sandbox, "tasmota:after"), 15, "the reading after it")
        wait_until(
            lambda: adapter_cli(state, "deadletters", "list", "--json").stdout.strip(),
            15,
            "a letter",
        )
        letters = adapter_cli(state, "deadletters", "list", "--json").stdout.splitlines()
    finally:
        assert adapter.stop() == 0
    (letter,) = [json.loads(line) for line in letters]
    assert letter["device_uri"] == "tasmota:quotes"
    assert re.search(
        r"its frame is [\d,]+ bytes, more than EVENT_MAX_BYTES \(65,536\)", letter["reason"]
    )
    assert events_of(sandbox, "tasmota:quotes") == []


# --- fault 2: the disk full ------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (root only: CI runs as root)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """A file that takes every byte left on `disk`."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):  # big chunks, then the bytes left
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def publish_all(port: int, topics: list[tuple[str, int]]) -> None:
    """POW_SENSOR on each (topic, qos) over one connection, then a QoS 1 marker whose
    acknowledgement says the broker took every QoS 0 message before it (a client per
    message, each with one id, could lose a QoS 0 message to the next one's take-over)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-faults-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, qos in topics:
            client.publish(topic, POW_SENSOR, qos=qos)
        client.publish("test/marker", "done", qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize(
    "full_for", [0.0, 50.0], ids=["briefly", "past the broker's keep-alive of 45 s"]
)
def test_a_full_disk_holds_messages_at_the_broker_and_forwarding_resumes_by_itself(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path, full_for: float
) -> None:
    """Fault 2: before, the adapter crashed (exit 1, `database or disk is full`) and every
    restart on the full disk failed again: a crash loop. Now it stops taking messages, says
    so on /healthz and in a metric, and resumes when the disk has room: every message
    published meanwhile, QoS 0 and QoS 1, arrives, with no restart."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with small_disk(tmp_path / "disk", "6m") as disk:
        adapter = adapter_at(
            broker,
            sandbox,
            disk / "state",
            tmp_path / "adapter.log",
            {"ADAPTER_HTTP": f"127.0.0.1:{port}"},
        ).start()
        try:
            assert adapter.process is not None
            pid = adapter.process.pid
            publish(broker.port, "tele/first/SENSOR", POW_SENSOR)
            wait_until(lambda: events_of(sandbox, "tasmota:first"), 15, "the first event")
            filler = fill(disk)
            publish_all(
                broker.port,
                [(f"tele/full{qos}n{n}/SENSOR", qos) for n in range(20) for qos in (0, 1)],
            )
            wait_until(lambda: get(f"{api}/healthz")[0] == 503, 30, "/healthz to say so")
            body = get(f"{api}/healthz")[1]
            assert body["disk_full_for_s"] is not None
            assert re.search(r"sepl_adapter_disk_full 1\.0", get(f"{api}/metrics")[1])
            # Long enough, the broker gives up on the silent client (1.5 x its keep-alive)
            # and queues for the session; what it sent before is read after.
            time.sleep(full_for)
            publish_all(broker.port, [(f"tele/full0n{n}/SENSOR", 0) for n in range(20, 25)])
            filler.unlink()

            def all_arrived() -> bool:
                return all(
                    events_of(sandbox, f"tasmota:full{qos}n{n}")
                    for qos in (0, 1)
                    for n in range(25 if qos == 0 else 20)
                )

            wait_until(all_arrived, 60, "every message published while the disk was full")
            wait_until(lambda: get(f"{api}/healthz")[0] == 200, 15, "/healthz healthy again")
            assert adapter.process.pid == pid and adapter.process.poll() is None
        finally:
            code = adapter.stop()
        log = adapter.log_text()
    assert code == 0
    assert "Traceback" not in log
    assert "messages wait at the broker until the disk has room" in log
    assert "the disk has room again" in log


def test_start_up_on_a_full_disk_waits_for_room_instead_of_exiting(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Before: each start on the full disk failed (`disk I/O error`), a crash loop under
    systemd. Now start-up waits, a line a minute, and goes on when the disk has room."""
    with small_disk(tmp_path / "disk", "2m") as disk:
        (disk / "state").mkdir()
        filler = fill(disk)
        adapter = adapter_at(broker, sandbox, disk / "state", tmp_path / "adapter.log").start(
            wait_subscribed=False
        )
        try:
            adapter.wait_for_log("the disk is full", 15)
            time.sleep(3)  # it waits, alive
            assert adapter.process is not None and adapter.process.poll() is None
            filler.unlink()
            adapter.wait_for_log("broker confirmed", 20)
            publish(broker.port, "tele/late/SENSOR", POW_SENSOR)
            wait_until(lambda: events_of(sandbox, "tasmota:late"), 15, "an event")
        finally:
            code = adapter.stop()
    assert code == 0
    assert "Traceback" not in adapter.log_text()
