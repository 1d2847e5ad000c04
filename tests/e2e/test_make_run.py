"""`make run` end to end: the whole stack comes up, an event reaches the sandbox, Ctrl-C
stops every process and the exit code is 0.

Ports and state are private to the test (DEVSTACK_* overrides), so a developer's own
`make run` on the fixed ports is not disturbed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sepl_dev.broker import port_accepts
from sepl_dev.stack import SandboxProcess

REPO = Path(__file__).resolve().parents[2]
# Everything before the stack is up, including a first `pip install` by make's set-up.
STARTUP_TIMEOUT = 90.0
EVENT_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0
STARTED = re.compile(r"^\[devstack\] started (\S+) \(pid (\d+)\)")
STACK_UP = re.compile(r"^\[devstack\] stack is up")
# The sandbox logs `event <device uri> <service> data=…` for every event it receives.
SANDBOX_EVENT = re.compile(r"^\[sandbox\] .*\bevent \S+:\S+ ")


def ignore_sigint() -> None:
    # GNU make re-raises SIGINT on itself after its recipe ends, so `make run` interrupted
    # from a terminal reports "Interrupt" whatever devstack returned; make leaves a SIGINT
    # that was ignored at its start alone, so devstack's own exit code comes through.
    # devstack installs its SIGINT handler explicitly and still gets the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lines:
    """The stack's output, read by a thread; `wait_for` blocks on the next line, no sleeping."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            self._queue.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout:g} s\n{self.text()}") from None
            if line is None:
                raise AssertionError(f"output ended before {what}\n{self.text()}")
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match

    def drain(self, timeout: float) -> None:
        self._thread.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.seen.append(line)

    def text(self) -> str:
        return "\n".join(self.seen[-80:])


@pytest.mark.mosquitto
@pytest.mark.slow
def test_make_run_delivers_events_and_stops_cleanly_on_ctrl_c(
    free_port: Callable[[], int], tmp_path: Path
) -> None:
    env = dict(os.environ)
    env.update(
        DEVSTACK_MQTT_PORT=str(free_port()),
        DEVSTACK_SANDBOX_PORT=str(free_port()),
        DEVSTACK_API_PORT=str(free_port()),
        DEVSTACK_STATE_DIR=str(tmp_path / "state"),
        # Readings every 2 s: several chances for an event within EVENT_TIMEOUT even if the
        # adapter subscribes after the simulator's first reading.
        DEVSTACK_SIM_INTERVAL="2",
        PYTHONUNBUFFERED="1",
    )
    # A make that runs this test (`make test`) must not hand its jobserver to the inner one.
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    make = shutil.which("make")
    argv = (
        [make, "--no-print-directory", "-C", str(REPO), "run"]
        if make
        else [sys.executable, "-m", "sepl_dev.stack"]
    )
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,  # like a terminal's foreground job: Ctrl-C goes to the group
        preexec_fn=ignore_sigint,
    )
    lines = Lines(proc)
    children: dict[str, int] = {}
    try:
        while True:
            match = lines.wait_for(
                re.compile(f"{STARTED.pattern}|{STACK_UP.pattern}"),
                STARTUP_TIMEOUT,
                "'stack is up' line",
            )
            if match.group(1) is None:
                break
            children[match.group(1)] = int(match.group(2))
        assert set(children) == {"mosquitto", "sandbox", "adapter", "sim"}, lines.text()

        lines.wait_for(SANDBOX_EVENT, EVENT_TIMEOUT, "event line from the sandbox")
        run_the_readme_client_example(int(env["DEVSTACK_SANDBOX_PORT"]), tmp_path)

        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=STOP_TIMEOUT)
        lines.drain(5.0)
        assert code == 0, lines.text()
        for name, pid in children.items():
            # Each child leads its own process group; an empty group means the child and
            # anything it started are gone.
            assert not group_alive(pid), f"{name} (pid {pid}) still running\n{lines.text()}"
        assert not group_alive(proc.pid), lines.text()
        stopped = [line for line in lines.seen if line.startswith("[devstack] stopped ")]
        assert [line.split()[2] for line in stopped] == ["sim", "adapter", "sandbox", "mosquitto"]
    finally:
        for pgid in [proc.pid, *children.values()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def readme_blocking_example() -> str:
    """The README's client example for a plain script, as a user would copy it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (example,) = [str(block) for block in blocks if "BlockingConnector()" in block]
    return example


def run_the_readme_client_example(sandbox_port: int, tmp_path: Path) -> None:
    """Issue [13] 4: the example runs as written against the sandbox of `make run`: its
    device is put (its type is one the mappings define), its event taken, and the command
    it waits for answered."""
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    env = {
        **os.environ,
        "CONNECTOR_URL": f"ws://127.0.0.1:{sandbox_port}/",
        "XDG_STATE_HOME": str(tmp_path / "client-state"),
    }
    client = subprocess.Popen(
        [sys.executable, "-c", readme_blocking_example()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while not sandbox_json(f"{sandbox}/events?device=meter-1"):
            assert client.poll() is None, client.communicate()[0].decode()
            assert time.monotonic() < deadline, "no event from the README's example"
            time.sleep(0.1)
        request = urllib.request.Request(
            f"{sandbox}/commands",
            data=b'{"device": "meter-1", "service": "sepl_get", "timeout": 20}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answered = json.load(answer)
        assert answered["data"] == '{"status": "done"}'
        output = client.communicate(timeout=20)[0].decode()
        assert client.returncode == 0, output
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    (event,) = sandbox_json(f"{sandbox}/events?device=meter-1")
    assert event["parts"]["data"] == '{"value": 93.786, "unit": "kWh"}'


def sandbox_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


@pytest.mark.slow
def test_sandbox_fixture_serves_and_restarts_on_same_port(sandbox: SandboxProcess) -> None:
    with urllib.request.urlopen(f"{sandbox.url}/lookup", timeout=5) as answer:
        assert answer.status == 200
    assert sandbox.ws_url == f"ws://127.0.0.1:{sandbox.port}/"
    assert sandbox.stop() == 0
    assert not port_accepts(sandbox.port)
    sandbox.start()
    assert sandbox.process.poll() is None
    with urllib.request.urlopen(f"{sandbox.url}/lookup", timeout=5) as answer:
        assert answer.status == 200
    assert "listening" in sandbox.log_text()
