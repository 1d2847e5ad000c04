"""`make run`: Mosquitto, the sandbox platform, the adapter and the device simulator.

Run as `python -m sepl_dev.stack` from the repository root. Every child's output is
printed line by line with its name in front (`[sandbox] …`); the broker logs only to its
file. Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the children in reverse start order
(SIGTERM, then SIGKILL after 5 s) and exits 0; a child that dies on its own stops the rest
and exits 1.

Environment overrides (the defaults are the fixed `make run` ports of configuration.md):
DEVSTACK_MQTT_PORT (11883), DEVSTACK_SANDBOX_PORT (8093), DEVSTACK_API_PORT (8081),
DEVSTACK_STATE_DIR (.state/dev), DEVSTACK_MAPPINGS_DIR (mappings),
DEVSTACK_SIM_INTERVAL (5, seconds between simulated readings).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

from sepl_dev.broker import (
    LOOPBACK,
    Broker,
    BrokerError,
    child_preexec,
    stop_process,
    tail,
)

STOP_TIMEOUT = 5.0
SANDBOX_READY_TIMEOUT = 30.0


class StartupError(RuntimeError):
    """The stack could not be started; the message is for the user, without traceback."""


@dataclass(frozen=True)
class Settings:
    mqtt_port: int = 11883
    sandbox_port: int = 8093
    api_port: int = 8081
    state_dir: Path = Path(".state/dev")
    mappings_dir: Path = Path("mappings")
    sim_interval: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def port(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StartupError(f"{name}={raw!r}: expected a TCP port number 1..65535")
            return int(raw)

        interval_raw = env.get("DEVSTACK_SIM_INTERVAL", "").strip()
        try:
            interval = float(interval_raw) if interval_raw else cls.sim_interval
        except ValueError:
            interval = -1.0
        if interval <= 0:
            raise StartupError(
                f"DEVSTACK_SIM_INTERVAL={interval_raw!r}: expected a positive number of seconds"
            )
        settings = cls(
            mqtt_port=port("DEVSTACK_MQTT_PORT", cls.mqtt_port),
            sandbox_port=port("DEVSTACK_SANDBOX_PORT", cls.sandbox_port),
            api_port=port("DEVSTACK_API_PORT", cls.api_port),
            state_dir=Path(env.get("DEVSTACK_STATE_DIR") or cls.state_dir),
            mappings_dir=Path(env.get("DEVSTACK_MAPPINGS_DIR") or cls.mappings_dir),
            sim_interval=interval,
        )
        ports = [settings.mqtt_port, settings.sandbox_port, settings.api_port]
        if len(set(ports)) != len(ports):
            raise StartupError(f"DEVSTACK_*_PORT: the three ports must differ, got {ports}")
        return settings


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True if a listener holds host:port (SO_REUSEADDR: TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def wait_for_http(
    url: str,
    *,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    cancelled: Callable[[], bool] = lambda: False,
) -> bool:
    """Poll `url` until it answers 200; False if `alive()` turns false or `cancelled()` true.

    Raises TimeoutError after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if cancelled() or not alive():
            return False
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass  # not listening yet, or answering something other than 200
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")
        time.sleep(0.05)  # polling a server that has no readiness event


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM the child's process group, SIGKILL it after `timeout` s; returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Anything the child left behind in its group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


class SandboxProcess:
    """`sepl-adapter sandbox` as a child process on a fixed port and state directory.

    For tests (the `sandbox` fixture): output goes to `log_path`; `start()` waits until
    `GET /lookup` answers 200 and can be called again after `stop()` (same port and state).
    """

    def __init__(
        self,
        port: int,
        state_dir: Path,
        log_path: Path,
        *,
        cwd: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.port = port
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.state_dir = state_dir
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the sandbox has not been started")
        return self._process

    def argv(self) -> list[str]:
        return [
            *(sys.executable, "-m", "adapter", "sandbox"),
            *("--listen", f"127.0.0.1:{self.port}"),
            *("--state-dir", str(self.state_dir)),
        ]

    def start(self) -> SandboxProcess:
        """Start (again, on the same port and state dir) and wait until /lookup answers 200."""
        if self._process is not None and self._process.poll() is None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        process = self._process
        try:
            up = wait_for_http(
                f"{self.url}/lookup",
                timeout=self.start_timeout,
                alive=lambda: process.poll() is None,
            )
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"sandbox not ready: {exc}\n{tail(self.log_path)}") from None
        if not up:
            raise RuntimeError(
                f"sandbox exited with code {process.returncode} during start-up:\n"
                + tail(self.log_path)
            )
        return self

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after 5 s; returns the exit code."""
        if self._process is None:
            return None
        return stop_process(self._process, timeout=5.0)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class Output:
    """Serialises whole lines from several threads onto one stream."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, prefix: str, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(f"[{prefix}] {text}\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # nobody is reading any more; the children still have to be stopped

    def say(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line("devstack", part)


class Service(Protocol):
    name: str

    @property
    def pid(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def stop(self) -> int | None: ...


class ProcessService:
    """A child process in its own process group whose output lines get a name prefix.

    Own process group: the terminal's Ctrl-C reaches only devstack, which then stops the
    children in order (the adapter before the broker it talks to).
    """

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], output: Output) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> ProcessService:
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                process_group=0,
                preexec_fn=child_preexec,
            )
        except OSError as exc:
            raise StartupError(f"cannot start {self.name}: {exc}") from None
        self._reader = threading.Thread(
            target=self._pump, name=f"devstack-{self.name}", daemon=True
        )
        self._reader.start()
        return self

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            self.output.line(self.name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def poll(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        code = stop_process_group(self.process)
        if self._reader is not None:
            # The pipe closes when the last holder exits; do not hang on a stray grandchild.
            self._reader.join(timeout=2.0)
        return code


class BrokerService:
    """broker.Broker behind the Service interface; its output goes only to its log file."""

    def __init__(self, broker: Broker) -> None:
        self.name = "mosquitto"
        self.broker = broker

    @property
    def pid(self) -> int | None:
        return self.broker.pid

    def poll(self) -> int | None:
        return self.broker.process.poll() if self.broker.process is not None else None

    def stop(self) -> int | None:
        return self.broker.stop(STOP_TIMEOUT)


def child_env(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    env = dict(base)
    env["PYTHONUNBUFFERED"] = "1"  # lines appear when they are written, not at exit
    env.update(extra)
    return env


def adapter_env(base: Mapping[str, str], settings: Settings) -> dict[str, str]:
    env = child_env(
        base,
        ADAPTER_STATE_DIR=str(settings.state_dir / "adapter"),
        ADAPTER_HTTP=f"{LOOPBACK}:{settings.api_port}",
        MQTT_HOST=LOOPBACK,
    )
    # A developer's own settings must not point the dev adapter elsewhere: a lookup URL
    # would win over --connector-url, and TLS would not work against the dev broker.
    for name in ("CONNECTOR_LOOKUP_URL", "MQTT_TLS"):
        env.pop(name, None)
    return env


def banner(settings: Settings, broker: Broker) -> str:
    s = settings
    sandbox = f"http://{LOOPBACK}:{s.sandbox_port}"
    # The command's --url defaults to the standard sandbox port.
    url_flag = "" if s.sandbox_port == Settings.sandbox_port else f" --url {sandbox}"
    return f"""stack is up
  mosquitto  {LOOPBACK}:{s.mqtt_port}   log: {broker.log_file}
  sandbox    {sandbox}/   (adapter connects to ws://{LOOPBACK}:{s.sandbox_port}/)
  adapter    API http://{LOOPBACK}:{s.api_port}/   state: {s.state_dir / "adapter"}
  sim        Tasmota plugs kitchen, livingroom, garage; a reading every {s.sim_interval:g} s
Watch the [sandbox] lines: the sandbox logs one line for every event it receives.
Send a command to a simulated plug (watch the [sim] and [adapter] lines):
  .venv/bin/sepl-adapter sandbox command{url_flag} tasmota:kitchen off
  curl -X POST {sandbox}/commands -d '{{"device":"tasmota:kitchen","service":"off"}}'
The CLI on this adapter's state (query, dead letters, check):
  ADAPTER_STATE_DIR={s.state_dir / "adapter"} .venv/bin/sepl-adapter deadletters list
Stop everything with Ctrl-C."""


class Stack:
    def __init__(self, settings: Settings, output: Output, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.output = output
        self.env = env
        self.services: list[Service] = []
        mosquitto_dir = settings.state_dir / "mosquitto"
        self.broker = Broker(mosquitto_dir, settings.mqtt_port, data_dir=mosquitto_dir)
        self.stop_requested = threading.Event()
        self.signal_name = ""

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only flag it: the main thread does the stopping outside the signal handler.
        self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    def check_ports(self) -> None:
        s = self.settings
        for what, port, var in (
            ("mosquitto", s.mqtt_port, "DEVSTACK_MQTT_PORT"),
            ("the sandbox", s.sandbox_port, "DEVSTACK_SANDBOX_PORT"),
            ("the adapter API", s.api_port, "DEVSTACK_API_PORT"),
        ):
            if port_in_use(port):
                raise StartupError(
                    f"port {LOOPBACK}:{port} for {what} is already in use. Is another "
                    f"`make run` still running? Stop it, or pick another port with {var}=..."
                )

    def _started(self, service: Service) -> None:
        self.services.append(service)
        self.output.say(f"started {service.name} (pid {service.pid})")

    def start(self) -> bool:
        """Start everything; False if a stop was requested meanwhile."""
        s, py = self.settings, sys.executable
        self.check_ports()
        try:
            self.broker.start()
        except BrokerError as exc:
            raise StartupError(str(exc)) from None
        self._started(BrokerService(self.broker))
        self.output.say(f"mosquitto log: {self.broker.log_file}")

        sandbox_argv = [
            *(py, "-m", "adapter", "sandbox"),
            *("--listen", f"{LOOPBACK}:{s.sandbox_port}"),
            *("--state-dir", str(s.state_dir / "sandbox")),
            # The adapter's mappings: the sandbox takes their device types, also edited ones.
            *("--mappings-dir", str(s.mappings_dir)),
        ]
        sandbox = ProcessService("sandbox", sandbox_argv, child_env(self.env), self.output)
        self._started(sandbox.start())
        url = f"http://{LOOPBACK}:{s.sandbox_port}/lookup"
        try:
            ready = wait_for_http(
                url,
                timeout=SANDBOX_READY_TIMEOUT,
                alive=sandbox.alive,
                cancelled=self.stop_requested.is_set,
            )
        except TimeoutError as exc:
            raise StartupError(f"the sandbox did not come up: {exc}") from None
        if not ready:
            if self.stop_requested.is_set():
                return False
            raise StartupError(f"the sandbox exited during start-up (code {sandbox.poll()})")

        # The adapter before the simulator, so the first readings find it subscribed.
        adapter_argv = [
            *(py, "-m", "adapter", "run"),
            *("--mqtt-port", str(s.mqtt_port)),
            *("--connector-url", f"ws://{LOOPBACK}:{s.sandbox_port}/"),
            *("--mappings-dir", str(s.mappings_dir)),
        ]
        adapter = ProcessService("adapter", adapter_argv, adapter_env(self.env, s), self.output)
        self._started(adapter.start())
        sim_argv = [
            *(py, "-m", "adapter", "simulate"),
            *("--mqtt-port", str(s.mqtt_port)),
            *("--interval", f"{s.sim_interval:g}"),
        ]
        self._started(ProcessService("sim", sim_argv, child_env(self.env), self.output).start())
        return not self.stop_requested.is_set()

    def supervise(self) -> Service | None:
        """Block until a stop is requested (None) or a child exits on its own (that child)."""
        while not self.stop_requested.wait(0.2):
            for service in self.services:
                if service.poll() is not None:
                    return service
        return None

    def stop_all(self) -> None:
        for service in reversed(self.services):
            code = service.stop()
            self.output.say(f"stopped {service.name} (exit code {code})")
        self.services.clear()


def main(argv: list[str] | None = None) -> int:
    output = Output(sys.stdout)
    try:
        settings = Settings.from_env(os.environ)
    except StartupError as exc:
        output.say(str(exc))
        return 2
    stack = Stack(settings, output, os.environ)
    # Installed explicitly: a parent that ignores SIGINT (make in the background, nohup)
    # would otherwise leave devstack deaf to Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stack.request_stop)

    failed: Service | None = None
    code = 0
    try:
        if stack.start():
            output.say(banner(settings, stack.broker))
            failed = stack.supervise()
        if failed is not None:
            output.say(f"{failed.name} exited early with code {failed.poll()}; stopping the rest")
            code = 1
        elif stack.stop_requested.is_set():
            output.say(f"{stack.signal_name}: stopping")
    except StartupError as exc:
        output.say(f"cannot start the stack: {exc}")
        code = 1
    finally:
        stack.stop_all()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
