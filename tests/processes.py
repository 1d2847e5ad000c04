"""The adapter as a child process, for tests that drive it end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sepl_dev.broker import child_preexec, stop_process

REPO = Path(__file__).resolve().parents[1]


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class AdapterProcess:
    def __init__(
        self,
        *,
        mqtt_port: int,
        connector_url: str,
        state_dir: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.log_path = log_path
        self.env = {
            **os.environ,
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(mqtt_port),
            "CONNECTOR_URL": connector_url,
            "ADAPTER_STATE_DIR": str(state_dir),
            "MAPPINGS_DIR": str(REPO / "mappings"),
            "ADAPTER_HTTP": "off",
            "RECONNECT_MIN": "200ms",
            "RECONNECT_MAX": "2s",
            **(env or {}),
        }
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_subscribed: bool = True) -> AdapterProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "adapter", "run", *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        if wait_subscribed:
            self.wait_for_log("broker confirmed", 15)
        return self

    def run_once(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`sepl-adapter run` with these settings, expected to stop by itself (at
        start-up): its exit code and output."""
        return subprocess.run(
            [sys.executable, "-m", "adapter", "run", *self.args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> None:
        def seen() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"adapter exited early:\n{self.log_text()[-3000:]}")
            return self.log_text().count(text) >= count

        try:
            wait_until(seen, timeout, f"{text!r} in the adapter log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- adapter log ---\n{self.log_text()[-3000:]}") from None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        return stop_process(self.process, timeout=10.0)


def adapter_cli(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`sepl-adapter <argv>` on the state directory `state` (as beside a running adapter)."""
    return subprocess.run(
        [sys.executable, "-m", "adapter", *argv],
        cwd=REPO,
        env={**os.environ, "ADAPTER_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
