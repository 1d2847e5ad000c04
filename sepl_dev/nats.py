"""A real 3-node NATS cluster for the fleet tests and bench (issue [15]).

`NatsCluster` runs the repository's deployment files, `contrib/nats/node.conf` and
`contrib/nats/accounts.conf`, three times as child processes on free loopback ports, each
node with its own JetStream directory; what differs between nodes is passed the way the
files expect it, through the environment. Nodes can be killed (SIGKILL) and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sepl_dev.broker import (
    LOOPBACK,
    BrokerError,
    child_preexec,
    free_port,
    port_accepts,
    stop_process,
    tail,
)

NATS_CONFIG = Path(__file__).resolve().parents[1] / "contrib" / "nats" / "node.conf"
NATS_MISSING = "nats-server not found: install it with 'apt-get install nats-server'"
# The accounts' users (contrib/nats/accounts.conf); test passwords, generated per cluster.
DEVICE_USER, HA_USER, ADAPTER_USER = "device", "homeassistant", "adapter"


def find_nats_server() -> str:
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(NATS_MISSING)


@dataclass
class NatsNode:
    name: str
    directory: Path
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "nats.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """This node takes MQTT connections and its JetStream cluster has a meta leader
        (MQTT sessions are JetStream streams). Not `/healthz`: after a restart 2.9 reports
        streams "not current" there for minutes while MQTT works."""
        if not port_accepts(self.mqtt_port):
            return False
        try:
            url = f"http://{LOOPBACK}:{self.http_port}/jsz"
            with urllib.request.urlopen(url, timeout=1) as answer:
                meta = json.loads(answer.read()).get("meta_cluster") or {}
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return bool(meta.get("leader"))


class NatsCluster:
    """Three nodes of `contrib/nats/node.conf`; `passwords` of the accounts' users."""

    def __init__(self, directory: Path, start_timeout: float = 30.0) -> None:
        self.directory = directory
        self.start_timeout = start_timeout
        self.nodes = [NatsNode(f"n{i}", directory / f"n{i}") for i in (1, 2, 3)]
        self.passwords = {
            DEVICE_USER: "device-secret",
            HA_USER: "ha-secret",
            ADAPTER_USER: "adapter-secret",
        }

    def _environment(self, node: NatsNode) -> dict[str, str]:
        routes = {
            f"NATS_ROUTE_{i}": f"nats-route://{LOOPBACK}:{other.cluster_port}"
            for i, other in enumerate(self.nodes, 1)
        }
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NATS_NODE": node.name,
            "NATS_LISTEN": f"{LOOPBACK}:{node.client_port}",
            "NATS_HTTP": f"{LOOPBACK}:{node.http_port}",
            "NATS_MQTT_LISTEN": f"{LOOPBACK}:{node.mqtt_port}",
            "NATS_CLUSTER_LISTEN": f"{LOOPBACK}:{node.cluster_port}",
            "NATS_STORE_DIR": str(node.directory / "jetstream"),
            "NATS_DEVICE_PASSWORD": self.passwords[DEVICE_USER],
            "NATS_HA_PASSWORD": self.passwords[HA_USER],
            "NATS_ADAPTER_PASSWORD": self.passwords[ADAPTER_USER],
            **routes,
        }

    def start_node(self, index: int) -> None:
        node = self.nodes[index]
        if node.running():
            return
        node.directory.mkdir(parents=True, exist_ok=True)
        with (node.directory / "stderr").open("ab") as err:
            node.process = subprocess.Popen(
                [find_nats_server(), "-c", str(NATS_CONFIG), "-l", str(node.log_file)],
                env=self._environment(node),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=child_preexec,
            )

    def start(self) -> NatsCluster:
        for index in range(len(self.nodes)):
            self.start_node(index)
        self.wait_healthy()
        for index in range(len(self.nodes)):
            self.warm_up(index)
        return self

    def restart(self, index: int) -> None:
        self.start_node(index)
        self.wait_healthy()
        self.warm_up(index)

    def warm_up(self, index: int) -> None:
        """One short MQTT connection of each account to the node. NATS 2.9 stores a QoS 1
        message for the other account (a device's reading for the adapters, an adapter's
        command for the devices) only on a node where that account has had an MQTT client
        since the node started; without one the message is not delivered at QoS 1
        (docs/fleet.md, what a deployment does after a node starts)."""
        port = self.nodes[index].mqtt_port
        for user in (DEVICE_USER, ADAPTER_USER):
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"warm-up-{user}", clean_session=True
            )
            client.username_pw_set(user, self.passwords[user])
            connected = threading.Event()

            def on_connect(
                c: mqtt.Client,
                u: Any,
                f: Any,
                reason: Any,
                p: Any,
                done: threading.Event = connected,
            ) -> None:
                if not reason.is_failure:
                    done.set()

            client.on_connect = on_connect
            client.connect_async(LOOPBACK, port)
            client.loop_start()  # connects again until the node takes the session
            try:
                if not connected.wait(self.start_timeout):
                    raise BrokerError(f"{user} could not connect to NATS node {index + 1}")
            finally:
                client.disconnect()
                client.loop_stop()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not all(node.healthy() for node in self.nodes if node.process is not None):
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise BrokerError(
                        f"nats-server {node.name} exited with {node.process.returncode}:\n"
                        + tail(node.log_file)
                        + tail(node.directory / "stderr")
                    )
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{tail(n.log_file, 10)}" for n in self.nodes)
                raise BrokerError(
                    f"the NATS cluster was not healthy within {self.start_timeout:g} s\n{logs}"
                )
            time.sleep(0.2)  # polling the monitoring endpoint: there is no event to wait on

    def kill(self, index: int) -> None:
        """SIGKILL one node: a crash, its JetStream files as they were."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                stop_process(node.process, timeout=10.0)
