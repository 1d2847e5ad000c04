"""Security with real processes: the secured Mosquitto (TLS, password file, ACL), how the
adapter fails against a wrong password or certificate, and secrets that must never leak.

Keys and certificates are generated into the test's temporary directory at run time
(`sepl_dev.broker.CertificateAuthority`, `BrokerSecurity`); none is committed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import paho.mqtt.client as mqtt
import pytest

from adapter import httpserver
from sepl_dev.broker import (
    ADAPTER_USER,
    DEVICE_USER,
    SECURE_TEMPLATE,
    Broker,
    BrokerSecurity,
    CertificateAuthority,
    MqttProbe,
    acl_text,
    free_port,
    render_config,
)
from sepl_dev.stack import SandboxProcess
from tests.processes import REPO, AdapterProcess, wait_until
from tests.slowclients import Answer, request

pytestmark = pytest.mark.mosquitto

# Fresh per run, and distinctive: a hex core of 16 characters that nothing else contains.
MQTT_SECRET = f"mqtt-pw-{secrets.token_hex(8)}"
DEVICE_SECRET = f"device-pw-{secrets.token_hex(8)}"
OBSERVER_SECRET = f"observer-pw-{secrets.token_hex(8)}"
PLATFORM_SECRET = f"platform-pw-{secrets.token_hex(8)}"
WRONG_PLATFORM_SECRET = f"wrong-platform-pw-{secrets.token_hex(8)}"
API_TOKEN = f"api-token-{secrets.token_hex(8)}"
# A long user name (an e-mail address, as platform accounts often are) pushes the password
# into the part of a long frame that websockets' debug log elides or keeps.
PLATFORM_USER = "someone.with.a.long.name@example-company.org"
OBSERVER = "homeassistant"  # full access, like Home Assistant's own user on its add-on
BUNDLED_TASMOTA = (REPO / "mappings" / "tasmota.yaml").read_text(encoding="utf-8")

SENSOR = '{"Time":"2026-11-23T20:14:04","ENERGY":{"Power":2635,"Voltage":227}}'
NOT_AUTHORISED = "disconnected, not authorised"
UNKNOWN_CA = "alert unknown ca"
BAD_CERTIFICATE = "alert bad certificate"
# What a plain-text MQTT client looks like to a TLS listener.
PLAIN_TEXT_SIGNS = ("wrong version number", "http request", "packet length too long")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")


# --- fixtures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    security: BrokerSecurity  # server certificate for localhost and 127.0.0.1
    mismatch: BrokerSecurity  # the same CA, a certificate for example.invalid only
    other_ca: CertificateAuthority  # trusted by nobody


@dataclass
class SecureStack:
    pki: Pki
    broker: Broker
    mismatch_broker: Broker
    sandbox: SandboxProcess
    directory: Path


def write_secret(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    """A CA, the secured broker, a second one whose certificate names another host, and a
    sandbox platform that accepts any credentials."""
    base = tmp_path_factory.mktemp("secure")
    users = {ADAPTER_USER: MQTT_SECRET, DEVICE_USER: DEVICE_SECRET, OBSERVER: OBSERVER_SECRET}
    acl = acl_text(full_access=(OBSERVER,))
    ca = CertificateAuthority.generate(base / "ca")
    pki = Pki(
        ca,
        BrokerSecurity.generate(base / "tls", users, ca=ca, acl=acl),
        BrokerSecurity.generate(
            base / "tls-mismatch",
            users,
            ca=ca,
            dns_names=("example.invalid",),
            ip_addresses=(),
            acl=acl,
        ),
        CertificateAuthority.generate(base / "other-ca", "a CA nobody trusts"),
    )
    broker = Broker(base / "broker", security=pki.security).start()
    mismatch = Broker(base / "broker-mismatch", security=pki.mismatch)
    sandbox = SandboxProcess(free_port(), base / "sandbox-state", base / "sandbox.log", cwd=REPO)
    try:
        mismatch.start()
        sandbox.start()
        yield SecureStack(pki, broker, mismatch, sandbox, base)
    finally:
        sandbox.stop()
        mismatch.stop()
        broker.stop()


def device_probe(stack: SecureStack, *, mismatch: bool = False) -> MqttProbe:
    """A device on the secured broker (on the mismatch broker it skips the host name)."""
    if not mismatch:
        return MqttProbe(
            stack.broker.port,
            username=DEVICE_USER,
            password=DEVICE_SECRET,
            ca_file=stack.pki.ca.cert_file,
        )
    context = ssl.create_default_context(cafile=str(stack.pki.ca.cert_file))
    context.check_hostname = False
    return MqttProbe(
        stack.mismatch_broker.port,
        username=DEVICE_USER,
        password=DEVICE_SECRET,
        tls_context=context,
    )


def tls_adapter(
    stack: SecureStack,
    name: str,
    *,
    port: int | None = None,
    ca_file: Path | None = None,
    password: str = MQTT_SECRET,
    env: Mapping[str, str] | None = None,
    connector_url: str | None = None,
) -> AdapterProcess:
    """The adapter with TLS and the password from a file; its devices get the prefix `name`
    and its client id ends in `name`, so each run is told apart on the shared processes."""
    directory = stack.directory / f"adapter-{name}"
    return AdapterProcess(
        mqtt_port=port if port is not None else stack.broker.port,
        connector_url=connector_url or stack.sandbox.ws_url,
        state_dir=directory / "state",
        log_path=directory / "adapter.log",
        env={
            "MQTT_TLS": "true",
            "MQTT_CA_FILE": str(ca_file or stack.pki.ca.cert_file),
            "MQTT_USERNAME": ADAPTER_USER,
            "MQTT_PASSWORD_FILE": str(write_secret(directory / "mqtt.pw", password)),
            "MQTT_CLIENT_ID": f"sepl-adapter-{name}",
            "DEVICE_PREFIX": name,
            **(env or {}),
        },
    )


def http(
    url: str, *, token: str | None = None, body: Any = None, timeout: float = 20
) -> tuple[int, str]:
    """Status and the whole answer (headers included), error statuses too."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, f"{answer.headers}\n{answer.read().decode()}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"{exc.headers}\n{exc.read().decode()}"


def events_of(sandbox: SandboxProcess, device: str) -> list[dict[str, Any]]:
    status, text = http(f"{sandbox.url}/events?device={device}")
    assert status == 200, text
    result: list[dict[str, Any]] = json.loads(text.split("\n\n", 1)[-1])
    return result


def http_json(url: str, body: Any = None) -> Any:
    status, text = http(url, body=body)
    assert status == 200, text
    return json.loads(text.split("\n\n", 1)[-1])


# --- the secured configuration -----------------------------------------------------------


def test_secure_template_fills_every_placeholder_and_has_no_plain_listener(
    tmp_path: Path,
) -> None:
    files = {name: tmp_path / name for name in ("ca.crt", "server.crt", "server.key", "pw", "acl")}
    security = BrokerSecurity(*files.values())
    text = render_config(
        SECURE_TEMPLATE,
        port=18883,
        data_dir=tmp_path / "data",
        log_file=tmp_path / "log",
        run_as_root=False,
        extra=security.placeholders(),
    )
    assert "${" not in text
    directives = [line.split() for line in text.splitlines() if line and line[0] != "#"]
    assert [d for d in directives if d[0] == "listener"] == [["listener", "18883", "127.0.0.1"]]
    settings = {d[0]: d[1:] for d in directives}
    assert settings["allow_anonymous"] == ["false"]
    assert settings["password_file"] == [str(files["pw"].resolve())]
    assert settings["acl_file"] == [str(files["acl"].resolve())]
    assert settings["cafile"] == [str(files["ca.crt"].resolve())]
    assert settings["certfile"] == [str(files["server.crt"].resolve())]
    assert settings["keyfile"] == [str(files["server.key"].resolve())]


def test_acl_text_denies_home_assistant_and_tasmota_discovery_for_the_adapter() -> None:
    text = acl_text()
    adapter_section = text.split(f"user {ADAPTER_USER}\n", 1)[1].split("\n\n", 1)[0]
    lines = adapter_section.splitlines()
    assert "topic deny homeassistant/#" in lines
    assert "topic deny tasmota/discovery/#" in lines
    assert "topic write cmnd/#" in lines
    assert "topic readwrite sepl-adapter/status" not in lines  # write only; read via sepl-adapter/#
    assert "topic read tele/#" in lines
    assert not [line for line in lines if line.endswith(" #")]  # never everything


def test_generated_keys_stay_in_the_temporary_directory(stack: SecureStack) -> None:
    for path in (stack.pki.security.key_file, stack.pki.ca.key_file):
        assert stack.directory in path.parents
        assert path.stat().st_mode & 0o077 == 0  # not readable by others
    git = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if git.returncode != 0:
        pytest.skip("not a git work tree")
    listed = git.stdout.splitlines()
    assert not [f for f in listed if f.endswith((".key", ".pem", ".crt", ".csr"))]


def test_wrong_password_is_refused_at_the_broker(stack: SecureStack) -> None:
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        MqttProbe(
            stack.broker.port,
            username=ADAPTER_USER,
            password="not-the-password",
            ca_file=stack.pki.ca.cert_file,
        )
    with pytest.raises(ConnectionRefusedError):
        MqttProbe(stack.broker.port, ca_file=stack.pki.ca.cert_file)  # anonymous


def test_acl_denies_discovery_and_status_topics_and_allows_commands(stack: SecureStack) -> None:
    denied = [
        "homeassistant/switch/kitchen/config",
        "homeassistant/status",
        "homeassistant/rpc",  # +/rpc would allow it without the explicit deny
        "tasmota/discovery/DC4F22000000/config",
        "tele/kitchen/SENSOR",  # the adapter does not fake telemetry either
    ]
    mark = len(stack.broker.log_text())
    with (
        MqttProbe(
            stack.broker.port,
            client_id="acl-observer",
            username=OBSERVER,
            password=OBSERVER_SECRET,
            ca_file=stack.pki.ca.cert_file,
        ) as observer,
        MqttProbe(
            stack.broker.port,
            client_id="acl-adapter-user",
            username=ADAPTER_USER,
            password=MQTT_SECRET,
            ca_file=stack.pki.ca.cert_file,
        ) as adapter_user,
        device_probe(stack) as device,
    ):
        observer.subscribe("#")
        device.subscribe("cmnd/#")
        for topic in denied:
            adapter_user.publish(topic, "", retain=True)
        adapter_user.publish("cmnd/kitchen/POWER", "ON")  # published last
        adapter_user.publish("sepl-adapter/status", "online", retain=True)

        assert device.expect("cmnd/kitchen/POWER").text == "ON"
        observer.expect("sepl-adapter/status", retain=False)  # not a retained one from before
        seen = [m.topic for m in observer.messages]
        assert not set(denied) & set(seen), seen
        assert "cmnd/kitchen/POWER" in seen

    log = stack.broker.log_text()[mark:]
    for topic in denied:
        assert re.search(
            rf"Denied PUBLISH from acl-adapter-user \([^)]*'{re.escape(topic)}'", log
        ), topic
    assert re.search(r"Received PUBLISH from acl-adapter-user \([^)]*'cmnd/kitchen/POWER'", log)


# --- the adapter over TLS ----------------------------------------------------------------


def test_adapter_connects_with_tls_and_credentials_and_forwards(stack: SecureStack) -> None:
    adapter = tls_adapter(stack, "ok")
    try:
        adapter.start()
        with device_probe(stack) as device:
            device.publish("tele/hall/SENSOR", SENSOR)
        events = wait_until(lambda: events_of(stack.sandbox, "ok:tasmota:hall"), 15, "event")
    finally:
        adapter.stop()
    assert isinstance(events, list) and len(events) == 1
    assert events[0]["parts"]["data"] == SENSOR
    assert json.loads(events[0]["parts"]["metadata"])["readings"]["power"] == 2635
    log = stack.broker.log_text()
    # It logged in as its own user, and its status topic is allowed.
    assert "as sepl-adapter-ok (p2, c0, k30, u'sepl-adapter')" in log
    assert "Denied PUBLISH from sepl-adapter-ok" not in log
    assert "Traceback" not in adapter.log_text()


@dataclass(frozen=True)
class FailedRun:
    name: str
    log: str
    broker_log: str
    events: list[dict[str, Any]]


FAILURES = ("wrong-password", "untrusted-ca", "hostname-mismatch")
# What the broker logs for each attempt of each failing run.
ATTEMPT_SIGN = {
    "wrong-password": NOT_AUTHORISED,
    "untrusted-ca": UNKNOWN_CA,
    "hostname-mismatch": BAD_CERTIFICATE,
}
# What one clear log line of the adapter must say for each.
REASON = {
    "wrong-password": re.compile(r"not authori[sz]ed|password|credentials", re.I),
    "untrusted-ca": re.compile(r"certificate", re.I),
    "hostname-mismatch": re.compile(r"host ?name|doesn't match|mismatch", re.I),
}


def attempts_seen(broker: Broker, sign: str, count: int) -> Callable[[], bool]:
    return lambda: broker.log_text().count(sign) >= count


@pytest.fixture(scope="module")
def failed_runs(stack: SecureStack) -> dict[str, FailedRun]:
    """The three failing adapters and one with MQTT_TLS_INSECURE, run side by side until the
    broker saw each failing one try at least twice; a retained reading waits on both
    brokers, so an adapter that got in would forward it."""
    for mismatch in (False, True):
        with device_probe(stack, mismatch=mismatch) as device:
            device.publish("tele/kitchen/SENSOR", SENSOR, retain=True)
    mismatch_port = stack.mismatch_broker.port
    adapters = {
        "wrong-password": tls_adapter(stack, "wrong-password", password="not-the-password"),
        "untrusted-ca": tls_adapter(stack, "untrusted-ca", ca_file=stack.pki.other_ca.cert_file),
        "hostname-mismatch": tls_adapter(stack, "hostname-mismatch", port=mismatch_port),
        "insecure": tls_adapter(
            stack, "insecure", port=mismatch_port, env={"MQTT_TLS_INSECURE": "true"}
        ),
    }
    brokers = {
        "wrong-password": stack.broker,
        "untrusted-ca": stack.broker,
        "hostname-mismatch": stack.mismatch_broker,
    }
    try:
        for adapter in adapters.values():
            adapter.start(wait_subscribed=False)
        for name in FAILURES:
            wait_until(
                attempts_seen(brokers[name], ATTEMPT_SIGN[name], 2),
                30,
                f"two attempts of the {name} adapter",
            )
            # The broker logs a refusal a moment before the adapter reads it: stopping
            # right then would cut the second attempt's line.
            adapters[name].wait_for_log("retrying", 15, count=2)
        adapters["insecure"].wait_for_log("broker confirmed", 15)
        wait_until(
            lambda: events_of(stack.sandbox, "insecure:tasmota:kitchen"), 15, "insecure event"
        )
    finally:
        for adapter in adapters.values():
            adapter.stop()
    runs = {
        name: FailedRun(
            name,
            adapter.log_text(),
            (brokers.get(name) or stack.mismatch_broker).log_text(),
            events_of(stack.sandbox, f"{name}:tasmota:kitchen"),
        )
        for name, adapter in adapters.items()
    }
    return runs


@pytest.mark.parametrize("name", FAILURES)
def test_failed_connection_never_connects_nor_forwards_and_retries(
    failed_runs: dict[str, FailedRun], name: str
) -> None:
    run = failed_runs[name]
    assert "connected to mqtt" not in run.log, run.log
    assert "broker confirmed" not in run.log
    assert run.events == []
    # The broker never let it in, and it never tried without TLS.
    assert f"as sepl-adapter-{name} " not in run.broker_log
    for sign in PLAIN_TEXT_SIGNS:
        assert sign not in run.broker_log
    # It tried again (the fixture waited for the broker to log two attempts) and is still
    # running: the platform side of the adapter is unaffected.
    assert run.broker_log.count(ATTEMPT_SIGN[name]) >= 2
    assert "connector ready" in run.log
    assert "Traceback" not in run.log
    assert "Exception in thread" not in run.log


def broker_lines(log: str) -> list[tuple[float, str, str]]:
    """(time, level, message) of every adapter log line about the broker connection: from
    the MQTT link's logger or paho's, or naming the broker."""
    lines = []
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        stamp, level, logger, message = match.groups()
        if logger.startswith(("adapter.mqtt", "paho")) or "broker" in message.lower():
            seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
            lines.append((seconds + int(stamp[20:]) / 1000, level, message))
    return lines


@pytest.mark.parametrize(
    "name",
    [
        "wrong-password",
        "untrusted-ca",
        "hostname-mismatch",
    ],
)
def test_failed_connection_logs_one_clear_line_per_attempt(
    failed_runs: dict[str, FailedRun], name: str
) -> None:
    lines = broker_lines(failed_runs[name].log)
    # Attempts are at least a second apart (paho's back-off starts at 1 s): lines closer
    # together than half a second belong to one attempt.
    attempts: list[list[tuple[float, str, str]]] = []
    for line in lines:
        if attempts and line[0] - attempts[-1][-1][0] < 0.5:
            attempts[-1].append(line)
        else:
            attempts.append([line])
    assert len(attempts) >= 2, f"no retry logged: {lines}"
    for attempt in attempts:
        assert len(attempt) == 1, f"more than one line for one attempt: {attempt}"
        level, message = attempt[0][1], attempt[0][2]
        assert level in ("WARNING", "ERROR"), attempt
        assert REASON[name].search(message), f"the line does not say what is wrong: {message}"


def test_tls_insecure_connects_and_warns_at_start(failed_runs: dict[str, FailedRun]) -> None:
    run = failed_runs["insecure"]
    assert "WARNING adapter: MQTT_TLS_INSECURE is set" in run.log
    assert "connected to mqtt" in run.log
    assert len(run.events) == 1
    assert "Traceback" not in run.log


# --- secrets -----------------------------------------------------------------------------


class UsersSandbox(SandboxProcess):
    """The sandbox requiring credentials (`--users`), at debug level."""

    def __init__(self, port: int, directory: Path, users: str) -> None:
        super().__init__(port, directory / "state", directory / "sandbox.log", cwd=REPO)
        self.users = users

    def argv(self) -> list[str]:
        # The password is on the sandbox's command line: a test secret on a test machine.
        return [*super().argv(), "--users", self.users, "--loglevel", "debug"]


SECRETS = {
    "MQTT_PASSWORD": MQTT_SECRET,
    "CONNECTOR_PASSWORD": PLATFORM_SECRET,
    "wrong CONNECTOR_PASSWORD": WRONG_PLATFORM_SECRET,
    "ADAPTER_HTTP_TOKEN": API_TOKEN,
}


def leaks(text: str) -> list[str]:
    """The secrets (or their random cores) that `text` contains."""
    found = []
    for name, value in SECRETS.items():
        core = value.rsplit("-", 1)[1]
        if value in text or core in text or core[:8] in text or core[8:] in text:
            found.append(name)
    return found


def answer_commands(device: MqttProbe, topic: str) -> None:
    """Answer `cmnd/<topic>/POWER` like Tasmota (device-conventions §1.2)."""

    def on_command(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        state = msg.payload.decode().upper() or "ON"
        client.publish(f"stat/{topic}/RESULT", json.dumps({"POWER": state}), qos=1)

    device.client.message_callback_add(f"cmnd/{topic}/POWER", on_command)
    device.subscribe(f"cmnd/{topic}/#")


def config_output(env: Mapping[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "config"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize(
    "dialect",
    [
        "envelope",
        "legacy",
    ],
)
def test_no_secret_in_any_log_error_or_answer(
    stack: SecureStack, tmp_path: Path, dialect: str
) -> None:
    """A full session at debug level with every secret set: connect, events, a command, the
    local API (answers and a 401), then a second run whose platform login fails."""
    sandbox = UsersSandbox(free_port(), tmp_path / "sandbox", f"{PLATFORM_USER}:{PLATFORM_SECRET}")
    http_port = free_port()
    env = {
        "LOGLEVEL": "debug",
        "MQTT_PASSWORD": MQTT_SECRET,  # from the environment this time, not a file
        "CONNECTOR_USER": PLATFORM_USER,
        "CONNECTOR_PASSWORD": PLATFORM_SECRET,
        "CONNECTOR_PROTOCOL": dialect,
        "ADAPTER_HTTP": f"127.0.0.1:{http_port}",
        "ADAPTER_HTTP_TOKEN": API_TOKEN,
    }
    texts: dict[str, str] = {}
    sandbox.start()
    adapter = tls_adapter(stack, f"secrets-{dialect}", connector_url=sandbox.ws_url, env=env)
    del adapter.env["MQTT_PASSWORD_FILE"]  # the file would win over the variable
    device_uri = f"secrets-{dialect}:tasmota:kitchen"
    api = f"http://127.0.0.1:{http_port}"
    try:
        adapter.start()
        adapter.wait_for_log("connector ready", 15)
        with device_probe(stack) as device:
            answer_commands(device, "kitchen")
            device.publish("tele/kitchen/SENSOR", SENSOR)
            wait_until(lambda: events_of(sandbox, device_uri), 15, "the event")
            answer = http_json(f"{sandbox.url}/commands", {"device": device_uri, "service": "off"})
        texts["command answer"] = json.dumps(answer)
        assert answer["response"] is not None, answer
        # The reply's data, whichever dialect named its part (legacy: `body`).
        assert json.loads(answer["data"]) == {"POWER": "OFF"}

        for path in ("/devices", f"/devices/{device_uri}", "/healthz", "/metrics"):
            status, text = http(api + path, token=API_TOKEN)
            assert status == 200, (path, text)
            texts[f"GET {path}"] = text
        for path in ("/api/overview",):
            texts[f"GET {path}"] = http(api + path, token=API_TOKEN)[1]
        for token in (None, "not-the-token", API_TOKEN[:-1]):
            status, text = http(api + "/devices", token=token)
            assert status == 401, text
            texts[f"401 with token {token!r}"] = text
    finally:
        adapter.stop()

    # A second run whose platform login fails.
    failing_env = {**env, "CONNECTOR_PASSWORD": WRONG_PLATFORM_SECRET}
    failing_port = free_port()
    failing_env["ADAPTER_HTTP"] = f"127.0.0.1:{failing_port}"
    failing = tls_adapter(
        stack, f"secrets-{dialect}-fail", connector_url=sandbox.ws_url, env=failing_env
    )
    try:
        failing.start()
        wait_until(
            lambda: (
                sandbox.log_text().count("refused") >= 2
                and failing.log_text().count("reconnecting in") >= 2
            ),
            30,
            "two refused logins",
        )
        status, text = http(f"http://127.0.0.1:{failing_port}/healthz", token=API_TOKEN)
        texts["healthz of the failing run"] = text
        assert "platform_last_error" in text
    finally:
        failing.stop()
        sandbox.stop()

    texts["adapter log"] = adapter.log_text()
    texts["failing adapter log"] = failing.log_text()
    texts["sandbox log"] = sandbox.log_text()
    texts["broker log"] = stack.broker.log_text()
    texts["sepl-adapter config"] = config_output(adapter.env)
    texts["sepl-adapter config, failing"] = config_output(failing.env)
    assert "MQTT_PASSWORD" in texts["sepl-adapter config"]
    # An invalid setting next to the secrets: the error line names the setting only.
    texts["config error"] = config_output({**adapter.env, "ADAPTER_HTTP": "nowhere"})
    assert "error: ADAPTER_HTTP='nowhere'" in texts["config error"]
    for directory in (adapter.env["ADAPTER_STATE_DIR"], failing.env["ADAPTER_STATE_DIR"]):
        for state_file in Path(directory).rglob("*"):
            if state_file.is_file():
                texts[f"state file {state_file}"] = state_file.read_bytes().decode("latin-1")

    # The session really ran at debug level, frames and all.
    assert " DEBUG " in texts["adapter log"]
    assert "> TEXT" in texts["adapter log"]
    assert "refused" in texts["sandbox log"]
    found = {source: leaks(text) for source, text in texts.items() if leaks(text)}
    assert not found, found


# --- the local API off loopback ----------------------------------------------------------


def run_adapter(
    env: Mapping[str, str], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        cwd=REPO,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "ADAPTER_STATE_DIR": str(tmp_path / "state"),
            "MAPPINGS_DIR": str(REPO / "mappings"),
            # Nothing listens here: the adapter would only retry if it got that far.
            "MQTT_PORT": str(free_port()),
            "CONNECTOR_URL": f"ws://127.0.0.1:{free_port()}/",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("address", ["0.0.0.0", "[::]", "192.0.2.10", "adapter.example"])
def test_api_refuses_a_non_loopback_address_without_a_token(tmp_path: Path, address: str) -> None:
    port = free_port()
    result = run_adapter({"ADAPTER_HTTP": f"{address}:{port}"}, tmp_path, "run")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ADAPTER_HTTP=")
    assert "ADAPTER_HTTP_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started


@pytest.mark.parametrize(
    "env",
    [
        {"ADAPTER_HTTP_TOKEN": API_TOKEN},
        {"ADAPTER_HTTP_ALLOW_UNAUTHENTICATED": "true"},
    ],
)
def test_api_accepts_a_non_loopback_address_with_a_token_or_when_told(
    tmp_path: Path, env: dict[str, str]
) -> None:
    result = run_adapter({"ADAPTER_HTTP": "0.0.0.0:8081", **env}, tmp_path, "config")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ADAPTER_HTTP +0\.0\.0\.0:8081 +environment$", result.stdout, re.M)
    assert API_TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize("address", ["127.0.0.1", "[::1]", "localhost"])
def test_api_on_loopback_needs_no_token(tmp_path: Path, address: str) -> None:
    result = run_adapter({"ADAPTER_HTTP": f"{address}:8081"}, tmp_path, "config")
    assert result.returncode == 0, result.stderr


# --- the local API: Host check and slow clients (issue [14]) -----------------------------


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[tuple[AdapterProcess, int]]:
    """The adapter with its API on a free loopback port, no token, one extra Host name.
    No broker or platform: the API serves while the adapter keeps trying them."""
    port = free_port()
    adapter = AdapterProcess(
        mqtt_port=free_port(),
        connector_url=f"ws://127.0.0.1:{free_port()}/",
        state_dir=tmp_path / "state",
        log_path=tmp_path / "adapter.log",
        env={"ADAPTER_HTTP": f"127.0.0.1:{port}", "ADAPTER_HTTP_HOSTS": "nas.example"},
    )
    try:
        adapter.start(wait_subscribed=False)
        adapter.wait_for_log("local API on", 15)
        yield adapter, port
    finally:
        adapter.stop()


def test_api_without_a_token_refuses_a_dns_rebinding_host(
    api_process: tuple[AdapterProcess, int],
) -> None:
    """A page of attacker.example:8081 whose name now resolves to 127.0.0.1 is of the same
    origin as the API to the browser; its requests carry its name as Host and get a 421.
    The API's own names, with its port or without, and ADAPTER_HTTP_HOSTS are served.
    Before issue [14] the adapter answered every Host: the rebinding page read /devices."""
    adapter, port = api_process
    for host in ("attacker.example:8081", f"attacker.example:{port}", "evil.example"):
        for path in ("/devices", "/api/overview", "/healthz", "/"):
            status, _, body = anyio.run(request, port, path, host)
            assert status == 421, (host, path, body)
            assert set(json.loads(body)) == {"error"}
    for host in ("localhost", "127.0.0.1", "[::1]", "nas.example"):
        for given in (host, f"{host}:{port}"):
            status, _, body = anyio.run(request, port, "/devices", given)
            assert status == 200 and isinstance(json.loads(body), list), (given, body)
    # The status page from a browser at http://127.0.0.1:<port>/ and http://localhost:<port>/.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, headers, _ = anyio.run(request, port, "/", host)
        assert status == 200 and headers["content-type"].startswith("text/html")
        status, _, body = anyio.run(request, port, "/api/overview", host)
        assert status == 200 and "mqtt" in json.loads(body)
    assert "Traceback" not in adapter.log_text()


def test_api_answers_healthz_during_a_slow_connection_flood(
    api_process: tuple[AdapterProcess, int], tmp_path: Path
) -> None:
    """From a process of its own, more connections than the API's limits, half silent,
    half trickling a head, each reopened the moment it is closed: /healthz is answered
    within 3 s, again and again. Before issue [14] the flood held all 64 slots (each for
    60 s, taken again at once) and every probe got a 503."""
    adapter, port = api_process
    size = httpserver.MAX_WAITING + httpserver.MAX_CONNECTIONS
    report = tmp_path / "flood-closed"
    flood = subprocess.Popen(
        [sys.executable, "-m", "tests.slowclients", str(port), str(size), str(report)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )

    def closed() -> int:
        text = report.read_text(encoding="utf-8") if report.exists() else ""
        return int(text) if text.isdigit() else 0

    try:
        # The server has closed (pushed out, or before issue [14] refused) as many of the
        # flood's connections as there are past its limit: it is full.
        wait_until(lambda: closed() >= size - httpserver.MAX_WAITING, 20, "a full server")

        async def probe() -> Answer:
            with anyio.fail_after(3):
                return await request(port, "/healthz", f"127.0.0.1:{port}")

        for _ in range(5):
            status, _, body = anyio.run(probe)
            # 503 is /healthz's own answer once the platform is down long; the server's
            # "too many connections" has no "mqtt".
            assert status in (200, 503) and "mqtt" in json.loads(body), body
            time.sleep(0.1)
        assert flood.poll() is None, "the flood stopped early"
    finally:
        flood.terminate()
        try:
            flood.wait(10)
        except subprocess.TimeoutExpired:
            flood.kill()
            flood.wait(10)
    assert f"{httpserver.MAX_WAITING} connections waiting for a request" in adapter.log_text()
    assert "Traceback" not in adapter.log_text()


# --- hostile mapping edits ---------------------------------------------------------------

# Mapping files whose YAML the loader cannot turn into a MappingError (see test_fuzz.py).
HOSTILE_MAPPINGS = {
    "an impossible date": "description: 2001-02-30\n",
    "a control character": "description: bell \x07\n",
    "YAML nested 1,500 deep": "[" * 1500 + "\n",
    "a scale beyond a float": (
        "rules:\n  - topic: attic/{x}\n    readings: {p: {path: a, scale: " + "9" * 400 + "}}\n"
    ),
}


def test_hostile_mapping_edit_does_not_stop_the_adapter(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "tasmota.yaml").write_text(BUNDLED_TASMOTA, encoding="utf-8")
    adapter = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env={"MAPPINGS_DIR": str(mappings)},
    ).start()
    try:
        for count, text in enumerate(HOSTILE_MAPPINGS.values(), start=1):
            (mappings / "edit.yaml").write_text(text, encoding="utf-8")
            adapter.wait_for_log("mapping change not applied", 10, count=count)
        assert adapter.process is not None and adapter.process.poll() is None
        assert "Traceback" not in adapter.log_text()
    finally:
        adapter.stop()
