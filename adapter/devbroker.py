"""A real Mosquitto for development and tests, plus a small synchronous MQTT probe.

`Broker` renders `mosquitto/mosquitto.conf` (see the README there) into a working
directory and runs `mosquitto -c <file>` as a child process on a loopback port.
`MqttProbe` is a blocking paho-mqtt client for tests: connect, subscribe, publish and wait
for a matching message with a timeout instead of sleeping.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "mosquitto" / "mosquitto.conf"
MOSQUITTO_MISSING = "mosquitto not found: install it with 'apt-get install mosquitto'"
LOOPBACK = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be found, configured or started."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary: PATH first, then /usr/sbin (not in a user's PATH on Debian)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(MOSQUITTO_MISSING)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_prctl() -> Callable[..., int] | None:
    # Looked up once here: dlopen/dlsym between fork and exec could deadlock.
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Runs in a forked child before exec: die with the parent, take SIGINT normally.

    PR_SET_PDEATHSIG (Linux) makes an orphaned broker or service go away when the test
    runner or `make run` is killed hard, instead of holding its port; it fires when the
    *thread* that started the child ends, so start children from a long-lived thread.
    SIGINT is reset because a parent started with SIGINT ignored would pass that on.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def stop_process(process: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    return process.returncode


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def render_config(
    template: Path,
    *,
    port: int,
    data_dir: Path,
    log_file: Path,
    log_type: str = "all",
    run_as_root: bool | None = None,
) -> str:
    """The template with its placeholders filled; `user root` appended when running as root."""
    text = string.Template(template.read_text(encoding="utf-8")).substitute(
        PORT=str(port),
        # Mosquitto concatenates persistence_location and persistence_file: needs the slash.
        DATA_DIR=str(data_dir).rstrip("/") + "/",
        LOG_FILE=str(log_file),
        LOG_TYPE=log_type,
    )
    if run_as_root is None:
        run_as_root = os.geteuid() == 0
    if run_as_root:
        # Mosquitto started as root switches to user `mosquitto` and would lose write access
        # to a root-owned data directory.
        text += "\n# added by adapter/devbroker.py: started as root\nuser root\n"
    return text


class Broker:
    """One Mosquitto process on 127.0.0.1:`port`, configured from the template.

    Files in `directory`: `mosquitto.conf` (generated), `mosquitto.log` (the broker's log),
    `mosquitto.stderr` (output before logging starts, e.g. config errors) and `data/`
    (persistence) unless `data_dir` is given. `restart()` keeps port and data directory.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        data_dir: Path | None = None,
        log_file: Path | None = None,
        template: Path | None = None,
        executable: str | None = None,
        log_type: str = "all",
        start_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK
        self.data_dir = Path(data_dir) if data_dir is not None else self.directory / "data"
        self.log_file = Path(log_file) if log_file is not None else self.directory / "mosquitto.log"
        self.stderr_file = self.directory / "mosquitto.stderr"
        self.config_file = self.directory / "mosquitto.conf"
        self.template = Path(template) if template is not None else DEFAULT_TEMPLATE
        self.executable = executable
        self.log_type = log_type
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Broker({self.host}:{self.port}, dir={str(self.directory)!r})"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                self.template,
                port=self.port,
                data_dir=self.data_dir.resolve(),
                log_file=self.log_file.resolve(),
                log_type=self.log_type,
            ),
            encoding="utf-8",
        )
        return self.config_file

    def start(self) -> Broker:
        """Start and wait until the port accepts connections; BrokerError if it does not."""
        if self.is_running():
            return self
        executable = self.executable or find_mosquitto()
        self.write_config()
        if port_accepts(self.port, self.host):
            raise BrokerError(
                f"cannot start mosquitto: port {self.host}:{self.port} is already in use"
            )
        with self.stderr_file.open("ab") as err:
            self.process = subprocess.Popen(
                [executable, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C meant for `make run` must not reach the broker
                # before the clients are stopped.
                process_group=0,
                preexec_fn=child_preexec,
            )
        deadline = time.monotonic() + self.start_timeout
        while not port_accepts(self.port, self.host):
            code = self.process.poll()
            if code is not None:
                raise BrokerError(
                    f"mosquitto exited with code {code} during start-up on port {self.port}:\n"
                    + self._log_tails()
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self.start_timeout:g} s:\n" + self._log_tails()
                )
            time.sleep(0.02)  # polling a port: there is no event to wait on
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (Mosquitto saves its database), then SIGKILL after `timeout` seconds."""
        if self.process is None:
            return None
        return stop_process(self.process, timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash, nothing saved since the last autosave."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        return self.process.wait()

    def restart(self, timeout: float = 5.0) -> Broker:
        """Stop and start again on the same port with the same data directory."""
        self.stop(timeout)
        return self.start()

    def log_text(self) -> str:
        """The broker log so far (and any output from before logging started)."""
        parts = []
        for path in (self.stderr_file, self.log_file):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- {path} ---\n{tail(path)}"
            for path in (self.stderr_file, self.log_file)
            if path.exists()
        )

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttProbe:
    """A blocking MQTT 3.1.1 test client: every call waits for the broker's answer.

    All messages received are kept in order; `expect` waits for one that matches, looking
    at messages from index `since` on (`mark()` gives the current index).
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = LOOPBACK,
        client_id: str = "",
        clean_session: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.timeout = timeout
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = False
        self._acked: set[int] = set()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        self._wait(lambda: self._connected, f"CONNACK from {host}:{port}")

    @property
    def client(self) -> mqtt.Client:
        return self._client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = not reason_code.is_failure
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, msg.retain))
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout if timeout is not None else self.timeout):
                raise TimeoutError(f"timed out waiting for {what}")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, mid = self._client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise RuntimeError(f"subscribe {topic!r} failed: {mqtt.error_string(result)}")
        self._wait(lambda: mid in self._acked, f"SUBACK for {topic!r}")

    def publish(
        self, topic: str, payload: str | bytes = b"", qos: int = 1, retain: bool = False
    ) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} not acknowledged")

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def expect(
        self,
        topic: str | None = None,
        *,
        payload: str | bytes | None = None,
        retain: bool | None = None,
        where: Callable[[Received], bool] | None = None,
        since: int = 0,
        timeout: float | None = None,
    ) -> Received:
        """The first message from index `since` on that matches every given condition."""
        want = payload.encode() if isinstance(payload, str) else payload

        def matches(m: Received) -> bool:
            return (
                (topic is None or mqtt.topic_matches_sub(topic, m.topic))
                and (want is None or m.payload == want)
                and (retain is None or m.retain == retain)
                and (where is None or where(m))
            )

        found: list[Received] = []

        def ready() -> bool:
            for m in self.messages[since:]:
                if matches(m):
                    found.append(m)
                    return True
            return False

        conditions = ", ".join(
            f"{k}={v!r}"
            for k, v in (("topic", topic), ("payload", payload), ("retain", retain))
            if v is not None
        )
        try:
            self._wait(ready, f"a message with {conditions or 'any content'}", timeout)
        except TimeoutError as exc:
            seen = [f"{m.topic} {m.payload[:80]!r} r={int(m.retain)}" for m in self.messages]
            raise TimeoutError(f"{exc}; received: {seen[-20:]}") from None
        return found[0]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
