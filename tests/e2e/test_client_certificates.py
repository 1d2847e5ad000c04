"""TLS client certificates with real processes (issue [14]).

A Mosquitto listener with `require_certificate true` (mosquitto/client-cert.conf) and a
sandbox platform started with `--tls-cert/--tls-key/--client-ca`: the adapter presents
MQTT_CERT_FILE and CONNECTOR_CERT_FILE, the client library its `cert_file`; without an
accepted certificate the TLS handshake fails and one line says why; a certificate or key
file that cannot be used is one error line naming it.

Every key and certificate is made at test time into the test's temporary directory with
the `openssl` command line (`sepl_dev.broker.CertificateAuthority`): the `cryptography`
package is not a dependency. None is committed.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from adapter import config
from adapter.mqtt import Message, MqttLink, MqttTlsError, tls_context
from adapter.sepl import Connector, ConnectorConfig, Device
from adapter.sepl.client import ClientCertificateError
from sepl_dev.broker import (
    ADAPTER_USER,
    DEVICE_USER,
    Broker,
    CertificateAuthority,
    ClientCertificateSecurity,
    MqttProbe,
    child_preexec,
    free_port,
    stop_process,
)
from tests.processes import REPO, AdapterProcess, wait_until

SENSOR = '{"Time":"2026-11-23T20:14:04","ENERGY":{"Power":2635,"Voltage":227}}'
KITCHEN = Device.create("tasmota:kitchen", "Tasmota kitchen", "iot#tasmota-plug")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: tuple[Path, Path]  # 127.0.0.1 and localhost
    adapter: tuple[Path, Path]  # CN=sepl-adapter
    device: tuple[Path, Path]  # CN=sepl-device
    combined: Path  # the adapter's certificate and key in one file
    stranger: tuple[Path, Path]  # CN=sepl-adapter, but signed by a CA nobody trusts
    directory: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.generate(base / "ca")
    adapter = ca.issue_client(base / "clients", ADAPTER_USER)
    combined = base / "clients" / "adapter-combined.pem"
    combined.write_bytes(adapter[0].read_bytes() + adapter[1].read_bytes())
    combined.chmod(0o600)
    other = CertificateAuthority.generate(base / "other-ca", "a CA nobody trusts")
    return Pki(
        ca,
        ca.issue(base / "server", "server"),
        adapter,
        ca.issue_client(base / "clients", DEVICE_USER),
        combined,
        other.issue_client(base / "stranger", "stranger", common_name=ADAPTER_USER),
        base,
    )


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


class TlsSandbox:
    """`sepl-adapter sandbox` serving TLS and requiring client certificates of the CA.
    (SandboxProcess polls http:// to see it up, which this one never answers.)"""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.pki = pki
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ws_url = f"wss://127.0.0.1:{self.port}/"
        self.log_path = directory / "sandbox.log"
        cert, key = pki.server
        self.argv = [
            *(sys.executable, "-m", "adapter", "sandbox"),
            *("--listen", f"127.0.0.1:{self.port}", "--state-dir", str(directory / "state")),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
            *("--client-ca", str(pki.ca.cert_file)),
        ]
        self.context = client_context(pki, pki.device)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsSandbox:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        wait_until(self._up, 15, "the TLS sandbox's /lookup")
        return self

    def _up(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the TLS sandbox exited:\n{self.log_text()}")
        try:
            self.get("/lookup")
        except (OSError, ValueError):
            return False
        return True

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5, context=self.context) as answer:
            text = answer.read().decode()
        return json.loads(text) if text.startswith(("[", "{")) else text

    def events(self, device: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/events?device={device}")
        return result

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(scope="module")
def tls_sandbox(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSandbox]:
    sandbox = TlsSandbox(pki, tmp_path_factory.mktemp("tls-sandbox"))
    try:
        yield sandbox.start()
    finally:
        sandbox.stop()


@pytest.fixture(scope="module")
def cert_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto with `require_certificate true`; the ACL's users are the common names.
    (Its `tls_version` would be a minimum: Mosquitto refuses a certificate only after a TLS
    1.3 handshake here, and the TLS 1.2 alerts are worded in the unit tests.)"""
    base = tmp_path_factory.mktemp("cert-broker")
    security = ClientCertificateSecurity.generate(base / "tls", ca=pki.ca)
    broker = Broker(base / "broker", security=security).start()
    try:
        yield broker
    finally:
        broker.stop()


def adapter_process(
    directory: Path, broker: Broker, sandbox: TlsSandbox, pki: Pki, **env: str
) -> AdapterProcess:
    directory.mkdir(parents=True, exist_ok=True)
    return AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=directory / "state",
        log_path=directory / "adapter.log",
        env={
            "MQTT_TLS": "true",
            "MQTT_CA_FILE": str(pki.ca.cert_file),
            "MQTT_CLIENT_ID": f"sepl-adapter-{directory.name}",
            "CONNECTOR_CA_FILE": str(pki.ca.cert_file),
            "CONNECTOR_CERT_FILE": str(pki.combined),  # the key in the same file
            **env,
        },
    )


def device(broker: Broker, pki: Pki) -> MqttProbe:
    return MqttProbe(
        broker.port, ca_file=pki.ca.cert_file, cert_file=pki.device[0], key_file=pki.device[1]
    )


# --- the adapter ------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_adapter_presents_its_certificates_to_broker_and_platform(
    pki: Pki, cert_broker: Broker, tls_sandbox: TlsSandbox, tmp_path: Path
) -> None:
    adapter = adapter_process(
        tmp_path / "ok",
        cert_broker,
        tls_sandbox,
        pki,
        MQTT_CERT_FILE=str(pki.adapter[0]),
        MQTT_KEY_FILE=str(pki.adapter[1]),
    )
    try:
        adapter.start()
        with device(cert_broker, pki) as probe:
            probe.publish("tele/hall/SENSOR", SENSOR)
        events = wait_until(lambda: tls_sandbox.events("tasmota:hall"), 10, "the event")
    finally:
        adapter.stop()
    assert isinstance(events, list) and [e["parts"]["data"] for e in events] == [SENSOR]
    # The broker took the user name from the certificate; the platform saw the certificate.
    assert "as sepl-adapter-ok (p2, c0, k30, u'sepl-adapter')" in cert_broker.log_text()
    assert re.search(
        r"connected \(user .*client certificate CN=sepl-adapter\)", tls_sandbox.log_text()
    )
    assert "Traceback" not in adapter.log_text()


def broker_warnings(log: str) -> list[str]:
    return [
        match.group(3)
        for match in map(LOG_LINE.match, log.splitlines())
        if match is not None and match.group(2) == "adapter.mqtt" and match.group(1) == "WARNING"
    ]


@pytest.mark.mosquitto
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("none", r"requires? a TLS client certificate,? and none is given \(MQTT_CERT_FILE\)"),
        ("stranger", r"(did|may) not accept the TLS client certificate .*stranger\.crt"),
    ],
)
def test_adapter_without_an_accepted_certificate_cannot_connect_and_says_why(
    pki: Pki,
    cert_broker: Broker,
    tls_sandbox: TlsSandbox,
    tmp_path: Path,
    name: str,
    reason: str,
) -> None:
    broker = cert_broker
    env = {}
    if name == "stranger":
        env = {"MQTT_CERT_FILE": str(pki.stranger[0]), "MQTT_KEY_FILE": str(pki.stranger[1])}
    adapter = adapter_process(tmp_path / name, broker, tls_sandbox, pki, **env)
    try:
        adapter.start(wait_subscribed=False)
        adapter.wait_for_log("retrying", 10, count=2)
    finally:
        adapter.stop()
    log = adapter.log_text()
    warnings = broker_warnings(log)
    assert len(warnings) >= 2, log
    url = f"mqtts://127.0.0.1:{broker.port}"
    for line in warnings:  # one line per attempt, and it says why
        assert re.search(reason, line), line
        # In TLS 1.3 the handshake succeeds and the broker closes right after it.
        assert line.startswith(f"{url} closed the connection before answering CONNECT: "), line
    assert "connected to mqtt" not in log
    assert "Traceback" not in log
    assert "connector ready" in log  # the platform side is unaffected
    sign = "peer did not return a certificate" if name == "none" else "certificate verify failed"
    assert sign in broker.log_text()


@pytest.mark.mosquitto
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "none",
            r"the broker ended the TLS connection \(handshake failure alert\); it may require a"
            r" TLS client certificate, and none is given \(MQTT_CERT_FILE\)",
        ),
        (
            "stranger",
            r"the broker did not accept the TLS client certificate .*stranger\.crt"
            r" \(unknown ca alert\)",
        ),
    ],
)
async def test_in_tls_1_2_the_broker_alert_is_named(
    pki: Pki,
    cert_broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    reason: str,
) -> None:
    """Mosquitto's `tls_version` is a minimum, so the link itself is held to TLS 1.2 here:
    the broker then refuses in the handshake, with an alert."""
    environ = {
        "HOME": str(tmp_path),
        "MQTT_TLS": "true",
        "MQTT_PORT": str(cert_broker.port),
        "MQTT_CA_FILE": str(pki.ca.cert_file),
    }
    if name == "stranger":
        environ.update(MQTT_CERT_FILE=str(pki.stranger[0]), MQTT_KEY_FILE=str(pki.stranger[1]))
    link = MqttLink(config.load(None, environ), f"tls12-{name}", ["tele/#"])
    assert link._tls is not None
    link._tls.maximum_version = ssl.TLSVersion.TLSv1_2

    async def deliver(batch: list[Message]) -> None:
        raise AssertionError("connected")

    with anyio.move_on_after(1.2):  # the first attempt and the retry after 0.5-1 s
        await link.run(deliver)
    lines = [r.getMessage() for r in caplog.records if r.name == "adapter.mqtt"]
    assert len(lines) >= 2, lines
    for line in lines:
        assert line.startswith(f"cannot connect to mqtts://127.0.0.1:{cert_broker.port}: ")
        assert re.search(reason, line), line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MQTT_TLS": "true", "MQTT_CERT_FILE": "{garbage}"}, r"MQTT_CERT_FILE=.*garbage\.pem"),
        ({"MQTT_TLS": "false", "MQTT_CERT_FILE": "{cert}"}, r"needs MQTT_TLS=true"),
        (
            {"CONNECTOR_URL": "wss://127.0.0.1:1/", "CONNECTOR_CERT_FILE": "{garbage}"},
            r"TLS client certificate .*garbage\.pem: no PEM certificate",
        ),
    ],
)
def test_adapter_stops_at_start_up_on_a_certificate_that_cannot_work(
    pki: Pki, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = {"{garbage}": str(garbage), "{cert}": str(pki.adapter[0])}
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "run"],
        cwd=REPO,
        env={
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "ADAPTER_STATE_DIR": str(tmp_path / "state"),
            "ADAPTER_HTTP": "off",
            "MAPPINGS_DIR": str(REPO / "mappings"),
            **{key: files.get(value, value) for key, value in env.items()},
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]


# --- the client library -----------------------------------------------------------------


def library_config(tmp_path: Path, sandbox: TlsSandbox, pki: Pki, **fields: Any) -> ConnectorConfig:
    return ConnectorConfig(
        url=sandbox.ws_url,
        ca_file=pki.ca.cert_file,
        reconnect_min=0.2,
        reconnect_max=1,
        state_dir=tmp_path / "state",
        **fields,
    )


@pytest.mark.anyio
async def test_connector_with_a_client_certificate_gets_its_event_acknowledged(
    pki: Pki, tls_sandbox: TlsSandbox, tmp_path: Path
) -> None:
    config = library_config(
        tmp_path, tls_sandbox, pki, cert_file=pki.adapter[0], key_file=pki.adapter[1]
    )
    async with Connector(config) as connector:
        await connector.wait_ready(10)
        # Returns once the platform answered 200.
        await connector.send_event(KITCHEN, "sepl_get", SENSOR, '{"readings": {}}')
    events = await anyio.to_thread.run_sync(tls_sandbox.events, KITCHEN.uri)
    assert SENSOR in [e["parts"]["data"] for e in events]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("none", r"requires? a TLS client certificate,? and none is given"),
        ("stranger", r"(did|may) not accept the TLS client certificate .*stranger\.crt"),
    ],
)
async def test_connector_without_an_accepted_certificate_fails_in_the_tls_handshake(
    pki: Pki,
    tls_sandbox: TlsSandbox,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    reason: str,
) -> None:
    fields: dict[str, Any] = {}
    if name == "stranger":
        fields = {"cert_file": pki.stranger[0], "key_file": pki.stranger[1]}
    config = library_config(tmp_path, tls_sandbox, pki, **fields)
    async with Connector(config) as connector:
        with anyio.fail_after(5):
            while not connector.last_error:
                await anyio.sleep(0.02)
        assert not connector.ready
    error = connector.last_error
    assert error.startswith(f"cannot connect to {tls_sandbox.ws_url}: the platform "), error
    assert re.search(reason, error), error
    assert "\n" not in error
    assert "failed unexpectedly" not in caplog.text
    assert "Traceback" not in caplog.text


@pytest.fixture(scope="module")
def bad_files(pki: Pki) -> dict[str, tuple[Path, Path | None]]:
    """Certificate and key files that cannot be used, each as (cert file, key file)."""
    directory = pki.directory / "bad"
    directory.mkdir()
    garbage = directory / "garbage.pem"
    garbage.write_text("hello\n")
    der = directory / "adapter.der"
    subprocess.run(
        ["openssl", "x509", "-in", str(pki.adapter[0]), "-outform", "DER", "-out", str(der)],
        check=True,
        capture_output=True,
    )
    encrypted = directory / "encrypted.key"
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(pki.adapter[1]), "-out", str(encrypted)),
            *("-aes256", "-passout", "pass:test-only-passphrase"),
        ],
        check=True,
        capture_output=True,
    )
    return {
        "cert not PEM": (garbage, pki.adapter[1]),
        "cert DER": (der, pki.adapter[1]),
        "key not PEM": (pki.adapter[0], garbage),
        "key of another cert": (pki.adapter[0], pki.device[1]),
        "key encrypted": (pki.adapter[0], encrypted),
        "no key anywhere": (pki.adapter[0], None),
    }


# (the file the error names: "cert" or "key", what it says, the MQTT setting it names)
BAD = {
    "cert not PEM": ("cert", r"no PEM certificate in it", "MQTT_CERT_FILE"),
    "cert DER": ("cert", r"no PEM certificate in it .*looks like DER", "MQTT_CERT_FILE"),
    "key not PEM": ("key", r"no PEM private key in it", "MQTT_KEY_FILE"),
    "key of another cert": ("key", r"does not belong to the certificate", "MQTT_KEY_FILE"),
    "key encrypted": ("key", r"the private key is encrypted", "MQTT_KEY_FILE"),
    "no key anywhere": ("cert", r"no PEM private key in it, and no key file", "MQTT_CERT_FILE"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_certificate_or_key_that_cannot_be_used_is_one_line_naming_the_file(
    pki: Pki, bad_files: dict[str, tuple[Path, Path | None]], tmp_path: Path, case: str
) -> None:
    cert, key = bad_files[case]
    blamed, problem, setting = BAD[case]
    named = cert if blamed == "cert" else key
    config_ = ConnectorConfig(url="wss://127.0.0.1:1/", cert_file=cert, key_file=key)
    with pytest.raises(ClientCertificateError) as library_error:
        Connector(config_)  # the library: at construction, before any connection
    text = str(library_error.value)
    assert "\n" not in text and str(named) in text and re.search(problem, text), text
    assert "test-only-passphrase" not in text

    environ = {
        "HOME": str(tmp_path),
        "MQTT_TLS": "true",
        "MQTT_CERT_FILE": str(cert),
        **({"MQTT_KEY_FILE": str(key)} if key is not None else {}),
    }
    if case == "cert DER":  # the settings' start-up check already refuses a binary file
        with pytest.raises(config.SettingsError, match=r"MQTT_CERT_FILE=.*adapter\.der"):
            config.load(None, environ)
        return
    with pytest.raises(MqttTlsError) as mqtt_error:
        tls_context(config.load(None, environ))
    text = str(mqtt_error.value)
    assert text.startswith(f"{setting}={named}: ") and re.search(problem, text), text
    assert "\n" not in text


# --- the sandbox's TLS options ----------------------------------------------------------


def sandbox_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", "sandbox", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sandbox_command_reaches_a_tls_sandbox_only_with_a_certificate(
    pki: Pki, tls_sandbox: TlsSandbox
) -> None:
    common = ("--url", tls_sandbox.url, "--ca-file", str(pki.ca.cert_file), "--timeout", "1")
    cert, key = pki.device
    with_cert = sandbox_run(
        "command", "tasmota:nowhere", "on", *common, "--cert", str(cert), "--key", str(key)
    )
    # It reached the platform, which has no such device attached (409) ...
    assert with_cert.returncode == 1 and "error: 409" in with_cert.stderr, with_cert.stderr
    # ... and without a certificate the TLS handshake is refused.
    without = sandbox_run("command", "tasmota:nowhere", "on", *common)
    assert without.returncode == 1, without.stderr
    assert "cannot reach the sandbox" in without.stderr, without.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--client-ca", "{ca}"), "--client-ca needs --tls-cert"),
        (("--tls-key", "{key}"), "--tls-key needs --tls-cert"),
        (("--tls-cert", "{garbage}"), r"--tls-cert/--tls-key: .*garbage\.pem hold no PEM"),
        (
            ("--tls-cert", "{cert}", "--tls-key", "{key}", "--client-ca", "{garbage}"),
            r"--client-ca: .*garbage\.pem holds no PEM certificate",
        ),
        (("--tls-cert", "{missing}"), r"--tls-cert .*missing\.pem cannot be read"),
    ],
)
def test_sandbox_tls_options_that_cannot_work_stop_it_with_one_line(
    pki: Pki, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    files = {
        "{ca}": str(pki.ca.cert_file),
        "{key}": str(pki.server[1]),
        "{cert}": str(pki.server[0]),
        "{garbage}": str(garbage),
        "{missing}": str(tmp_path / "missing.pem"),
    }
    started = time.monotonic()
    result = sandbox_run(
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "state"),
        *(files.get(arg, arg) for arg in args),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert time.monotonic() - started < 10
