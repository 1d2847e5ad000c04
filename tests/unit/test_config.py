"""Settings: defaults, layering, validation and masking (adapter/config.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter import config
from adapter.config import Secret, Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]
HOME = {"HOME": "/home/u"}

# Every environment name of shared/configuration.md, in its order.
CONFIGURATION_NAMES = [
    "MQTT_HOST",
    "MQTT_PORT",
    "MQTT_PROTOCOL",
    "MQTT_CLIENT_ID",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
    "MQTT_PASSWORD_FILE",
    "MQTT_TLS",
    "MQTT_CA_FILE",
    "MQTT_TLS_INSECURE",
    "MQTT_QOS",
    "MQTT_STATUS_TOPIC",
    "CONNECTOR_URL",
    "CONNECTOR_LOOKUP_URL",
    "CONNECTOR_DEVICE_REGISTRATION_PATH",
    "CONNECTOR_HTTPS",
    "CONNECTOR_USER",
    "CONNECTOR_PASSWORD",
    "CONNECTOR_PASSWORD_FILE",
    "CONNECTOR_PROTOCOL",
    "CONNECTOR_CA_FILE",
    "CONNECTOR_TLS_INSECURE",
    "CONNECTOR_REQUEST_TIMEOUT",
    "CONNECTOR_PING_INTERVAL",
    "CONNECTOR_PING_TIMEOUT",
    "CONNECTOR_INFLIGHT",
    "RECONNECT_MIN",
    "RECONNECT_MAX",
    "DEVICE_PREFIX",
    "MAPPINGS_DIR",
    "ADAPTER_STATE_DIR",
    "ADAPTER_HTTP",
    "ADAPTER_HTTP_TOKEN",
    "ADAPTER_HTTP_TOKEN_FILE",
    "ADAPTER_HTTP_ALLOW_UNAUTHENTICATED",  # ours: issue [7] asks for the explicit opt-in
    "OUTBOX_MAX_EVENTS",
    "OUTBOX_MAX_AGE",
    "HISTORY_RETENTION",
    "FORWARD_RETAINED",
    "DISCOVERY_TASMOTA",  # ours: issue [8], zero-configuration devices
    "DISCOVERY_HOMEASSISTANT",
    "DISCOVERY_SETTLE",
    "LOGLEVEL",
    "LOGFORMAT",  # ours: issue [9], JSON lines for machines
    "DISCOVERY_ZIGBEE2MQTT",  # ours: issue [12], Zigbee2MQTT's device list
    # configuration.md, "Added for issues [14] and [15]"
    "MQTT_CERT_FILE",
    "MQTT_KEY_FILE",
    "CONNECTOR_CERT_FILE",
    "CONNECTOR_KEY_FILE",
    "EVENT_MAX_BYTES",
    "HISTORY_MAX_BYTES",
    "ADAPTER_HTTP_HOSTS",
    "MAPPINGS_MAX_BYTES",
    "ADAPTER_INSTANCE",  # [15]: after [14]'s, in the order they were added
    "MQTT_TOPIC_PREFIX",
    "MQTT_SHARED_GROUP",
    "ADAPTER_PARTITION",
]


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(list(argv))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(args: argparse.Namespace | None, environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        config.load(args, {**HOME, **environ})
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults

DEFAULTS: list[tuple[str, Any]] = [
    ("mqtt_host", "127.0.0.1"),
    ("mqtt_port", 1883),
    ("mqtt_protocol", "3.1.1"),
    ("mqtt_client_id", None),
    ("mqtt_username", None),
    ("mqtt_password", None),
    ("mqtt_tls", False),
    ("mqtt_ca_file", None),
    ("mqtt_tls_insecure", False),
    ("mqtt_qos", 1),
    ("mqtt_status_topic", "sepl-adapter/status"),
    ("connector_url", "ws://127.0.0.1:8093/"),
    ("connector_lookup_url", None),
    ("connector_device_registration_path", "discovery"),
    ("connector_https", False),
    ("connector_user", ""),
    ("connector_password", Secret("")),
    ("connector_protocol", "envelope"),
    ("connector_ca_file", None),
    ("connector_tls_insecure", False),
    ("connector_request_timeout", 10.0),
    ("connector_ping_interval", 15.0),
    ("connector_ping_timeout", 10.0),
    ("connector_inflight", 32),
    ("reconnect_min", 1.0),
    ("reconnect_max", 120.0),
    ("device_prefix", ""),
    ("mappings_dir", Path("./mappings")),
    ("adapter_state_dir", Path("/home/u/.local/state/sepl-adapter")),
    ("adapter_http", ("127.0.0.1", 8081)),
    ("adapter_http_token", None),
    ("outbox_max_events", 1_000_000),
    ("outbox_max_age", 7 * 86400.0),
    ("history_retention", 30 * 86400.0),
    ("forward_retained", "changed"),
    ("loglevel", "info"),
    ("logformat", "text"),
    ("discovery_zigbee2mqtt", "zigbee2mqtt"),
    ("mqtt_cert_file", None),
    ("mqtt_key_file", None),
    ("connector_cert_file", None),
    ("connector_key_file", None),
    ("adapter_http_hosts", ()),
    ("mappings_max_bytes", 8 * 2**20),
    ("event_max_bytes", 2**20),
    ("history_max_bytes", 2 * 10**9),
    ("adapter_instance", ""),
    ("mqtt_topic_prefix", ""),
    ("mqtt_shared_group", ""),
]


@pytest.mark.parametrize(("attr", "expected"), DEFAULTS)
def test_default(attr: str, expected: Any) -> None:
    settings = config.load(None, HOME)
    assert getattr(settings, attr) == expected
    assert settings.sources[attr.upper()] == "default"


def test_defaults_cover_every_setting() -> None:
    settings = config.load(None, HOME)
    assert {attr for attr, _ in DEFAULTS} <= set(vars(settings))
    assert set(settings.sources) == set(CONFIGURATION_NAMES)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XDG_STATE_HOME": "/xdg"}, Path("/xdg/sepl-adapter")),
        ({"XDG_STATE_HOME": "relative"}, Path("/home/u/.local/state/sepl-adapter")),
        ({"XDG_STATE_HOME": ""}, Path("/home/u/.local/state/sepl-adapter")),
        ({"ADAPTER_STATE_DIR": "/s", "XDG_STATE_HOME": "/xdg"}, Path("/s")),
    ],
)
def test_state_dir_default(environ: dict[str, str], expected: Path) -> None:
    assert config.load(None, {**HOME, **environ}).adapter_state_dir == expected


@pytest.mark.parametrize(
    ("environ", "port"),
    [
        ({"MQTT_TLS": "true"}, 8883),
        ({"MQTT_TLS": "false"}, 1883),
        ({"MQTT_TLS": "true", "MQTT_PORT": "1884"}, 1884),
    ],
)
def test_mqtt_port_follows_tls(environ: dict[str, str], port: int) -> None:
    assert config.load(None, {**HOME, **environ}).mqtt_port == port


# --- precedence: default < file < environment < flag

# (env name, YAML line, environment value, flag argv, attribute, value per layer)
LAYERED: list[tuple[str, str, str, list[str], str, dict[str, Any]]] = [
    (
        "MQTT_HOST",
        "mqtt: {host: file-host}",
        "env-host",
        ["--mqtt-host", "flag-host"],
        "mqtt_host",
        {
            "default": "127.0.0.1",
            "file": "file-host",
            "environment": "env-host",
            "flag": "flag-host",
        },
    ),
    (
        "MQTT_PORT",
        "mqtt: {port: 1884}",
        "1885",
        ["--mqtt-port", "1886"],
        "mqtt_port",
        {"default": 1883, "file": 1884, "environment": 1885, "flag": 1886},
    ),
    (
        "CONNECTOR_PROTOCOL",
        "connector: {protocol: legacy}",
        "envelope",
        ["--connector-protocol", "legacy"],
        "connector_protocol",
        {"default": "envelope", "file": "legacy", "environment": "envelope", "flag": "legacy"},
    ),
    (
        "RECONNECT_MIN",
        "reconnect: {min: 2s}",
        "3s",
        ["--reconnect-min", "500ms"],
        "reconnect_min",
        {"default": 1.0, "file": 2.0, "environment": 3.0, "flag": 0.5},
    ),
    (
        "MQTT_TLS",
        "mqtt: {tls: yes}",
        "off",
        ["--mqtt-tls"],
        "mqtt_tls",
        {"default": False, "file": True, "environment": False, "flag": True},
    ),
    (
        "ADAPTER_HTTP",
        "adapter: {http: off}",
        "127.0.0.2:9000",
        ["--adapter-http", "off"],
        "adapter_http",
        {
            "default": ("127.0.0.1", 8081),
            "file": None,
            "environment": ("127.0.0.2", 9000),
            "flag": None,
        },
    ),
    (
        "LOGLEVEL",
        "loglevel: debug",
        "WARNING",
        ["--loglevel", "error"],
        "loglevel",
        {"default": "info", "file": "debug", "environment": "warning", "flag": "error"},
    ),
]
LAYER_SETS = [(), ("file",), ("environment",), ("flag",), ("file", "environment")]
LAYER_SETS += [("file", "flag"), ("environment", "flag"), ("file", "environment", "flag")]


@pytest.mark.parametrize("layers", LAYER_SETS, ids=lambda layers: "+".join(layers) or "none")
@pytest.mark.parametrize("case", LAYERED, ids=lambda case: case[0])
def test_precedence(
    tmp_path: Path,
    case: tuple[str, str, str, list[str], str, dict[str, Any]],
    layers: tuple[str, ...],
) -> None:
    env_name, yaml_text, env_value, argv, attr, values = case
    args = list(argv) if "flag" in layers else []
    if "file" in layers:
        args += ["--config", str(write(tmp_path, yaml_text + "\n"))]
    environ = {**HOME, env_name: env_value} if "environment" in layers else dict(HOME)
    settings = config.load(flags(*args), environ)
    winner = layers[-1] if layers else "default"
    assert getattr(settings, attr) == values[winner]
    assert settings.sources[env_name] == winner


def test_flat_and_grouped_yaml_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mqtt_host: flat-host
mqtt: {protocol: 5, qos: 2, tls: on}
connector:
  lookup_url: http://lookup.example/lookup
  device_registration_path: reg
  https: yes
  request_timeout: 1.5
outbox: {max_events: 5, max_age: 1h}
history: {retention: 2d}
forward: {retained: all}
device: {prefix: lab}
mappings: {dir: /etc/maps}
adapter: {state_dir: /var/lib/x, http: "[::1]:9000"}
loglevel: DEBUG
""",
    )
    settings = config.load(flags("--config", str(path)), HOME)
    assert settings.mqtt_host == "flat-host"
    assert (settings.mqtt_protocol, settings.mqtt_qos, settings.mqtt_tls) == ("5", 2, True)
    assert settings.mqtt_port == 8883
    assert settings.connector_lookup_url == "http://lookup.example/lookup"
    assert settings.connector_device_registration_path == "reg"
    assert settings.connector_https is True
    assert settings.connector_request_timeout == 1.5
    assert (settings.outbox_max_events, settings.outbox_max_age) == (5, 3600.0)
    assert settings.history_retention == 2 * 86400.0
    assert settings.forward_retained == "all"
    assert settings.device_prefix == "lab"
    assert settings.mappings_dir == Path("/etc/maps")
    assert settings.adapter_state_dir == Path("/var/lib/x")
    assert settings.adapter_http == ("::1", 9000)
    assert settings.loglevel == "debug"
    assert settings.sources["MQTT_HOST"] == "file"
    assert settings.sources["MQTT_USERNAME"] == "default"


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "mqtt:\n", "mqtt: {port: }\n", "outbox: {}\n", "mqtt_host:\n"],
)
def test_empty_yaml_sets_nothing(tmp_path: Path, text: str) -> None:
    settings = config.load(flags("--config", str(write(tmp_path, text))), HOME)
    assert settings.mqtt_port == 1883
    assert set(settings.sources.values()) == {"default"}


def test_empty_environment_variable_is_unset(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt: {host: file-host}\n")
    settings = config.load(flags("--config", str(path)), {**HOME, "MQTT_HOST": "", "MQTT_PORT": ""})
    assert settings.mqtt_host == "file-host"
    assert settings.mqtt_port == 1883
    assert settings.sources["MQTT_HOST"] == "file"


# --- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("30d", 30 * 86400.0),
        ("10", 10.0),
        ("1.5", 1.5),
        ("0.25s", 0.25),
        (" 7d ", 7 * 86400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "-1s", "1x", "1.2.3", "inf", "nan", "1e3", "5 minutes", "1M", "1h30m"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        config.parse_duration(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d", ""]))
def test_parse_duration_units(number: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}[unit]
    assert config.parse_duration(f"{number}{unit}") == pytest.approx(number * factor)


DURATION_SETTINGS = [
    "CONNECTOR_REQUEST_TIMEOUT",
    "CONNECTOR_PING_INTERVAL",
    "CONNECTOR_PING_TIMEOUT",
    "RECONNECT_MIN",
    "RECONNECT_MAX",
    "OUTBOX_MAX_AGE",
    "HISTORY_RETENTION",
]


@pytest.mark.parametrize("name", DURATION_SETTINGS)
@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("2m", 120.0), ("200", 200.0)])
def test_duration_settings_accept(name: str, text: str, seconds: float) -> None:
    environ = {name: text}
    if name == "RECONNECT_MIN":
        environ["RECONNECT_MAX"] = "1h"
    if name == "RECONNECT_MAX":
        environ["RECONNECT_MIN"] = "100ms"
    assert getattr(config.load(None, {**HOME, **environ}), name.lower()) == seconds


@pytest.mark.parametrize("name", DURATION_SETTINGS)
@pytest.mark.parametrize("text", ["0", "0s", "-1s", "soon", "10 years"])
def test_duration_settings_reject(name: str, text: str) -> None:
    message = error_of(None, {name: text})
    assert message.startswith(f"{name}={text!r} is not valid: expected a duration")
    assert "500ms" in message


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"RECONNECT_MIN": "10s", "RECONNECT_MAX": "5s"}, ("RECONNECT_MAX='5s'", "RECONNECT_MIN")),
        ({"RECONNECT_MIN": "5m"}, ("RECONNECT_MIN='5m'", "RECONNECT_MAX (2m)")),
        ({"RECONNECT_MAX": "500ms"}, ("RECONNECT_MAX='500ms'", "RECONNECT_MIN (1s)")),
    ],
)
def test_reconnect_max_not_below_min(environ: dict[str, str], names: tuple[str, str]) -> None:
    message = error_of(None, environ)
    for name in names:
        assert name in message


def test_reconnect_max_equal_to_min_is_fine() -> None:
    settings = config.load(None, {**HOME, "RECONNECT_MIN": "5s", "RECONNECT_MAX": "5000ms"})
    assert settings.reconnect_min == settings.reconnect_max == 5.0


# --- valid and invalid values


@pytest.mark.parametrize(
    ("name", "text", "attr", "expected"),
    [
        ("CONNECTOR_HTTPS", "1", "connector_https", True),
        ("CONNECTOR_HTTPS", "TRUE", "connector_https", True),
        ("CONNECTOR_HTTPS", "Yes", "connector_https", True),
        ("CONNECTOR_HTTPS", "on", "connector_https", True),
        ("CONNECTOR_HTTPS", "0", "connector_https", False),
        ("CONNECTOR_HTTPS", "False", "connector_https", False),
        ("CONNECTOR_HTTPS", "NO", "connector_https", False),
        ("CONNECTOR_HTTPS", "off", "connector_https", False),
        ("MQTT_TLS_INSECURE", "yes", "mqtt_tls_insecure", True),
        ("CONNECTOR_TLS_INSECURE", "1", "connector_tls_insecure", True),
        ("ADAPTER_HTTP", "127.0.0.2:9000", "adapter_http", ("127.0.0.2", 9000)),
        ("ADAPTER_HTTP", "[::1]:9000", "adapter_http", ("::1", 9000)),
        ("ADAPTER_HTTP", "[::1]:8081", "adapter_http", ("::1", 8081)),
        ("ADAPTER_HTTP", "localhost:0", "adapter_http", ("localhost", 0)),
        ("ADAPTER_HTTP", "OFF", "adapter_http", None),
        ("LOGLEVEL", "Critical", "loglevel", "critical"),
        ("MQTT_PROTOCOL", "5", "mqtt_protocol", "5"),
        ("MQTT_QOS", "0", "mqtt_qos", 0),
        ("MQTT_PORT", "65535", "mqtt_port", 65535),
        (
            "CONNECTOR_URL",
            "wss://platform.example:443/ws",
            "connector_url",
            "wss://platform.example:443/ws",
        ),
        ("CONNECTOR_URL", "ws://[::1]:8093/", "connector_url", "ws://[::1]:8093/"),
        (
            "CONNECTOR_LOOKUP_URL",
            "https://l.example/lookup",
            "connector_lookup_url",
            "https://l.example/lookup",
        ),
        ("MQTT_CLIENT_ID", "adapter-7", "mqtt_client_id", "adapter-7"),
        ("MQTT_USERNAME", "bob", "mqtt_username", "bob"),
        ("MQTT_PASSWORD", "pw", "mqtt_password", Secret("pw")),
        ("CONNECTOR_PASSWORD", "pw", "connector_password", Secret("pw")),
        ("ADAPTER_HTTP_TOKEN", "tok", "adapter_http_token", Secret("tok")),
        ("CONNECTOR_INFLIGHT", "1", "connector_inflight", 1),
        ("OUTBOX_MAX_EVENTS", "1", "outbox_max_events", 1),
    ],
)
def test_valid_value(name: str, text: str, attr: str, expected: Any) -> None:
    settings = config.load(None, {**HOME, name: text})
    assert getattr(settings, attr) == expected
    assert settings.sources[name] == "environment"


ACCEPTED_PORT = "expected an integer from 1 to 65535"
INVALID: list[tuple[str, str, str]] = [
    ("MQTT_PORT", "abc", ACCEPTED_PORT),
    ("MQTT_PORT", "0", ACCEPTED_PORT),
    ("MQTT_PORT", "65536", ACCEPTED_PORT),
    ("MQTT_PORT", "1_883", ACCEPTED_PORT),
    ("MQTT_PORT", "1883.0", ACCEPTED_PORT),
    ("LOGLEVEL", "loud", "expected one of debug, info, warning, error, critical"),
    ("LOGLEVEL", "warn", "expected one of debug, info, warning, error, critical"),
    ("LOGFORMAT", "xml", "expected one of text, json"),
    ("MQTT_PROTOCOL", "4", "expected one of 3.1.1, 5"),
    ("FORWARD_RETAINED", "x", "expected one of changed, all, none"),
    ("CONNECTOR_PROTOCOL", "x", "expected one of envelope, legacy"),
    ("CONNECTOR_URL", "http://platform:8093/", "expected a ws:// or wss:// URL with a host"),
    ("CONNECTOR_URL", "ws://", "expected a ws:// or wss:// URL with a host"),
    ("CONNECTOR_URL", "ws://host:99999/", "expected a ws:// or wss:// URL with a host"),
    ("CONNECTOR_URL", "platform:8093", "expected a ws:// or wss:// URL with a host"),
    ("CONNECTOR_LOOKUP_URL", "ftp://l/lookup", "expected a http:// or https:// URL with a host"),
    ("ADAPTER_HTTP", "nope", "expected host:port, [ipv6]:port or off"),
    ("ADAPTER_HTTP", "8081", "expected host:port, [ipv6]:port or off"),
    ("ADAPTER_HTTP", "::1:8081", "expected host:port, [ipv6]:port or off"),
    ("ADAPTER_HTTP", "host:70000", "expected host:port, [ipv6]:port or off"),
    ("MQTT_QOS", "3", "expected an integer from 0 to 2"),
    ("CONNECTOR_INFLIGHT", "0", "expected an integer >= 1"),
    ("OUTBOX_MAX_EVENTS", "-5", "expected an integer >= 1"),
    ("MQTT_TLS", "maybe", "expected one of 1, true, yes, on (true) or 0, false, no, off (false)"),
    ("CONNECTOR_HTTPS", "2", "expected one of 1, true, yes, on (true)"),
    ("CONNECTOR_DEVICE_REGISTRATION_PATH", "/discovery", "without a leading slash"),
    ("MQTT_STATUS_TOPIC", "status/#", "without + or # wildcards"),
    ("MQTT_HOST", "  ", "expected a host name or address"),
]


@pytest.mark.parametrize(("name", "text", "accepted"), INVALID)
def test_invalid_value(name: str, text: str, accepted: str) -> None:
    message = error_of(None, {name: text})
    assert message.startswith(f"{name}={text!r} is not valid: ")
    assert accepted in message


def test_invalid_value_examples_from_the_brief() -> None:
    assert error_of(None, {"MQTT_PORT": "abc"}) == (
        "MQTT_PORT='abc' is not valid: expected an integer from 1 to 65535"
    )
    assert error_of(None, {"LOGLEVEL": "loud"}) == (
        "LOGLEVEL='loud' is not valid: expected one of debug, info, warning, error, critical"
    )


def test_invalid_flag_names_the_flag() -> None:
    message = error_of(flags("--mqtt-port", "x"), {})
    assert message.startswith("MQTT_PORT='x' (--mqtt-port) is not valid")


def test_invalid_file_value_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: abc\n")
    message = error_of(flags("--config", str(path)), {})
    assert message == f"MQTT_PORT='abc' (mqtt.port in {path}) is not valid: {ACCEPTED_PORT}"


# --- LOGGING_LEVEL fallback


@pytest.mark.parametrize(
    ("environ", "level", "source"),
    [
        ({"LOGGING_LEVEL": "debug"}, "debug", "environment"),
        ({"LOGGING_LEVEL": "ERROR"}, "error", "environment"),
        ({"LOGLEVEL": "warning", "LOGGING_LEVEL": "debug"}, "warning", "environment"),
        ({"LOGLEVEL": "", "LOGGING_LEVEL": "debug"}, "debug", "environment"),
        ({}, "info", "default"),
    ],
)
def test_logging_level_fallback(environ: dict[str, str], level: str, source: str) -> None:
    settings = config.load(None, {**HOME, **environ})
    assert settings.loglevel == level
    assert settings.sources["LOGLEVEL"] == source


def test_logging_level_fallback_below_flag() -> None:
    settings = config.load(flags("--loglevel", "critical"), {**HOME, "LOGGING_LEVEL": "debug"})
    assert (settings.loglevel, settings.sources["LOGLEVEL"]) == ("critical", "flag")


def test_invalid_logging_level_names_the_fallback() -> None:
    message = error_of(None, {"LOGGING_LEVEL": "loud"})
    assert message.startswith("LOGGING_LEVEL='loud' is not valid: expected one of debug")


# --- secrets


@pytest.mark.parametrize(
    ("secret", "file_name", "attr"),
    [
        ("MQTT_PASSWORD", "MQTT_PASSWORD_FILE", "mqtt_password"),
        ("CONNECTOR_PASSWORD", "CONNECTOR_PASSWORD_FILE", "connector_password"),
        ("ADAPTER_HTTP_TOKEN", "ADAPTER_HTTP_TOKEN_FILE", "adapter_http_token"),
    ],
)
def test_secret_file_wins_and_is_never_shown(
    tmp_path: Path, secret: str, file_name: str, attr: str
) -> None:
    path = write(tmp_path, "from-file-s3cret\n", "secret.txt")
    environ = {**HOME, secret: "from-env-s3cret", file_name: str(path)}
    settings = config.load(None, environ)
    value = getattr(settings, attr)
    assert isinstance(value, Secret)
    assert value.get() == "from-file-s3cret"
    assert settings.sources[secret] == "environment"
    assert getattr(settings, file_name.lower()) == path
    for text in (config.describe(settings), repr(settings), str(settings)):
        assert "s3cret" not in text
    row = next(line for line in config.describe(settings).splitlines() if line.startswith(secret))
    assert "***" in row
    assert f"from {file_name}" in row


def test_secret_file_in_yaml_wins_over_variable_in_environment(tmp_path: Path) -> None:
    secret = write(tmp_path, "file-pw\r\n", "pw.txt")
    path = write(tmp_path, f"connector: {{password_file: {secret}}}\n")
    settings = config.load(flags("--config", str(path)), {**HOME, "CONNECTOR_PASSWORD": "env-pw"})
    assert settings.connector_password.get() == "file-pw"
    assert settings.sources["CONNECTOR_PASSWORD"] == "file"


def test_secret_from_environment_is_masked() -> None:
    settings = config.load(None, {**HOME, "MQTT_PASSWORD": "hunter2", "MQTT_USERNAME": "bob"})
    assert settings.mqtt_password == Secret("hunter2")
    table = config.describe(settings)
    assert "hunter2" not in table
    assert "hunter2" not in repr(settings)
    assert any(line.split()[:2] == ["MQTT_USERNAME", "bob"] for line in table.splitlines())


def test_usernames_are_not_masked() -> None:
    settings = config.load(None, {**HOME, "CONNECTOR_USER": "alice", "MQTT_USERNAME": "bob"})
    rows = {line.split()[0]: line.split()[1] for line in config.describe(settings).splitlines()}
    assert rows["CONNECTOR_USER"] == "alice"
    assert rows["MQTT_USERNAME"] == "bob"


@pytest.mark.parametrize(
    "file_name", ["MQTT_PASSWORD_FILE", "CONNECTOR_PASSWORD_FILE", "ADAPTER_HTTP_TOKEN_FILE"]
)
def test_unreadable_secret_file(tmp_path: Path, file_name: str) -> None:
    missing = tmp_path / "missing"
    message = error_of(None, {file_name: str(missing), "CONNECTOR_PASSWORD": "s3cret"})
    assert message == f"{file_name}={str(missing)!r} cannot be read: No such file or directory"


@pytest.mark.parametrize("name", ["MQTT_CA_FILE", "CONNECTOR_CA_FILE"])
def test_ca_file_must_be_readable(tmp_path: Path, name: str) -> None:
    assert error_of(None, {name: str(tmp_path)}).endswith("cannot be read: Is a directory")
    ca = write(tmp_path, "-----BEGIN CERTIFICATE-----\n", "ca.pem")
    assert getattr(config.load(None, {**HOME, name: str(ca)}), name.lower()) == ca


def test_secret() -> None:
    secret = Secret("pw")
    assert (repr(secret), str(secret), f"{secret}", secret.get()) == ("***", "***", "***", "pw")
    assert bool(secret) is True
    empty = Secret("")
    assert (repr(empty), str(empty), empty.get(), bool(empty)) == ("", "", "", False)
    assert Secret("a") == Secret("a") != Secret("b")
    assert len({Secret("a"), Secret("a")}) == 1


# --- the YAML file


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mqtt: {hots: x}\n", "'mqtt.hots'"),
        ("mqtt_hots: x\n", "'mqtt_hots'"),
        ("logging_level: debug\n", "'logging_level'"),
        ("broker: {host: x}\n", "'broker.host'"),
    ],
)
def test_yaml_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    assert error_of(flags("--config", str(path)), {}) == f"{path}: unknown setting {key}"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  host: x\n  port: [1883\nloglevel: debug\n")
    message = error_of(flags("--config", str(path)), {})
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message
    line = int(message[len(str(path)) + 1 :].split(":", 1)[0])
    assert 3 <= line <= 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "expected a mapping of settings"),
        (
            "mqtt: {host: [a, b]}\n",
            "MQTT_HOST (mqtt.host in {path}) is not valid: expected a single",
        ),
        ("mqtt_host: a\nmqtt: {host: b}\n", "MQTT_HOST is set twice"),
    ],
)
def test_yaml_bad_shape(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert expected.format(path=path) in error_of(flags("--config", str(path)), {})


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    message = error_of(flags("--config", str(path)), {})
    assert message == f"--config {str(path)!r} cannot be read: No such file or directory"


# --- flags, describe, print_effective


def test_flags_default_to_none() -> None:
    args = flags()
    assert args.config is None
    settable = [name for name in CONFIGURATION_NAMES if hasattr(args, name.lower())]
    assert all(getattr(args, name.lower()) is None for name in settable)
    # Every setting except the three secret values (visible in `ps`) has a flag.
    missing = set(CONFIGURATION_NAMES) - set(settable)
    assert missing == {"MQTT_PASSWORD", "CONNECTOR_PASSWORD", "ADAPTER_HTTP_TOKEN"}


@pytest.mark.parametrize(
    ("argv", "expected"), [(["--mqtt-tls"], True), (["--no-mqtt-tls"], False), ([], False)]
)
def test_boolean_flags(argv: list[str], expected: bool) -> None:
    settings = config.load(flags(*argv), {**HOME, "MQTT_TLS": "false"})
    assert settings.mqtt_tls is expected
    assert settings.sources["MQTT_TLS"] == ("flag" if argv else "environment")


def test_load_without_arguments_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_HOST", "from-os-environ")
    assert config.load().mqtt_host == "from-os-environ"


def test_describe_has_one_row_per_setting(tmp_path: Path) -> None:
    path = write(tmp_path, "device: {prefix: lab}\n")
    settings = config.load(
        flags("--config", str(path), "--mqtt-qos", "2"), {**HOME, "MQTT_HOST": "broker"}
    )
    lines = config.describe(settings).splitlines()
    assert lines[0].split() == ["NAME", "VALUE", "SOURCE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert [line.split()[0] for line in lines[1:]] == CONFIGURATION_NAMES
    assert rows["MQTT_HOST"][1:] == ["broker", "environment"]
    assert rows["MQTT_QOS"][1:] == ["2", "flag"]
    assert rows["DEVICE_PREFIX"][1:] == ["lab", "file"]
    assert rows["CONNECTOR_REQUEST_TIMEOUT"][1:] == ["10s", "default"]
    assert rows["OUTBOX_MAX_AGE"][1:] == ["7d", "default"]
    assert rows["ADAPTER_HTTP"][1:] == ["127.0.0.1:8081", "default"]


def test_describe_formats() -> None:
    environ = {
        **HOME,
        "ADAPTER_HTTP": "[::1]:80",
        "RECONNECT_MIN": "250ms",
        "LOGGING_LEVEL": "DEBUG",
    }
    rows = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in config.describe(config.load(None, environ)).splitlines()
    }
    assert rows["ADAPTER_HTTP"] == "[::1]:80 environment"
    assert rows["RECONNECT_MIN"] == "250ms environment"
    assert rows["LOGLEVEL"] == "debug (from LOGGING_LEVEL) environment"


def test_print_effective(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MQTT_PORT", "abc")
    assert config.print_effective(flags()) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: MQTT_PORT='abc' is not valid: {ACCEPTED_PORT}\n"

    monkeypatch.setenv("MQTT_PORT", "1999")
    assert config.print_effective(flags()) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert any(
        line.split()[:3] == ["MQTT_PORT", "1999", "environment"] for line in out.splitlines()
    )


def test_settings_are_frozen_and_comparable() -> None:
    first = config.load(None, HOME)
    with pytest.raises(AttributeError):
        first.mqtt_host = "x"  # type: ignore[misc]
    assert first == config.load(None, HOME)
    assert isinstance(hash(first), int)
    assert isinstance(first, Settings)


def _cli_importable() -> str | None:
    """Why `python -m adapter` cannot build its parser yet (others write those modules)."""
    probe = subprocess.run(
        [sys.executable, "-c", "from adapter import cli; cli.build_parser()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {probe.returncode}"


def test_cli_config_command_reports_one_line() -> None:
    reason = _cli_importable()
    if reason is not None:
        pytest.skip(f"adapter.cli cannot build its parser yet: {reason}")
    environ = {**os.environ, "MQTT_PORT": "abc"}
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "config"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: MQTT_PORT='abc'")


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"ADAPTER_HTTP": "0.0.0.0:8081"}, False),
        ({"ADAPTER_HTTP": "192.168.1.5:8081"}, False),
        ({"ADAPTER_HTTP": "0.0.0.0:8081", "ADAPTER_HTTP_TOKEN": "t"}, True),
        ({"ADAPTER_HTTP": "0.0.0.0:8081", "ADAPTER_HTTP_ALLOW_UNAUTHENTICATED": "true"}, True),
        ({"ADAPTER_HTTP": "localhost:8081"}, True),
        ({"ADAPTER_HTTP": "off"}, True),
    ],
)
def test_api_off_loopback_needs_a_token(env: dict[str, str], ok: bool) -> None:
    if ok:
        config.load(None, {"HOME": "/tmp", **env})
        return
    with pytest.raises(config.SettingsError, match=r"ADAPTER_HTTP=.*loopback.*ADAPTER_HTTP_TOKEN"):
        config.load(None, {"HOME": "/tmp", **env})


def test_client_certificate_files_are_checked_at_start_up(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_text("certificate")
    key.write_text("key")
    environ = {**HOME, "MQTT_CERT_FILE": str(cert), "MQTT_KEY_FILE": str(key)}
    settings = config.load(None, environ)
    assert (settings.mqtt_cert_file, settings.mqtt_key_file) == (cert, key)
    with pytest.raises(config.SettingsError, match="CONNECTOR_CERT_FILE"):
        config.load(None, {**HOME, "CONNECTOR_CERT_FILE": str(tmp_path / "missing.crt")})
    with pytest.raises(config.SettingsError, match=r"MQTT_KEY_FILE.*MQTT_CERT_FILE too"):
        config.load(None, {**HOME, "MQTT_KEY_FILE": str(key)})


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", ()),
        ("NAS.local", ("nas.local",)),
        (" a.example , b.example:8081,", ("a.example", "b.example:8081")),
    ],
)
def test_adapter_http_hosts(text: str, names: tuple[str, ...]) -> None:
    assert config.load(None, {**HOME, "ADAPTER_HTTP_HOSTS": text}).adapter_http_hosts == names


def test_adapter_http_hosts_refuses_what_is_no_host_name() -> None:
    with pytest.raises(config.SettingsError, match="ADAPTER_HTTP_HOSTS"):
        config.load(None, {**HOME, "ADAPTER_HTTP_HOSTS": "http://a.example/"})


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8MiB", 8 * 2**20),
        ("2GB", 2 * 10**9),
        ("512KiB", 512 * 1024),
        ("1.5MB", 1_500_000),
        ("1048576", 2**20),
        (" 10 kb ", 10_000),
        ("3B", 3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1MB", "8 MiBs", "eight", "1e6"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        config.parse_size(text)


# --- a fleet's instance (issue [15])


def test_an_instance_names_its_status_topic_unless_one_is_given() -> None:
    named = config.load(None, {**HOME, "ADAPTER_INSTANCE": "meters-1"})
    assert named.mqtt_status_topic == "sepl-adapter/meters-1/status"
    assert named.sources["MQTT_STATUS_TOPIC"] == "ADAPTER_INSTANCE"
    given = {**HOME, "ADAPTER_INSTANCE": "meters-1", "MQTT_STATUS_TOPIC": "site/a/status"}
    assert config.load(None, given).mqtt_status_topic == "site/a/status"
    assert config.load(None, HOME).mqtt_status_topic == "sepl-adapter/status"


@pytest.mark.parametrize(
    ("given", "expected"), [("part/0/", "part/0/"), ("part/0", "part/0/"), (" p ", "p/")]
)
def test_a_topic_prefix_ends_with_a_level_separator(given: str, expected: str) -> None:
    settings = config.load(None, {**HOME, "MQTT_TOPIC_PREFIX": given})
    assert settings.mqtt_topic_prefix == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ADAPTER_INSTANCE", "a.b"),  # NATS refuses dots in MQTT topics
        ("ADAPTER_INSTANCE", "a b"),
        ("ADAPTER_INSTANCE", "a/b"),
        ("ADAPTER_INSTANCE", "x" * 65),
        ("MQTT_TOPIC_PREFIX", "part/+/"),
        ("MQTT_TOPIC_PREFIX", "part/#"),
        ("MQTT_TOPIC_PREFIX", "$share/g/"),
        ("MQTT_TOPIC_PREFIX", "/part"),
        ("MQTT_TOPIC_PREFIX", "part//0"),
        ("MQTT_SHARED_GROUP", "a/b"),
        ("MQTT_SHARED_GROUP", "a+"),
        ("MQTT_SHARED_GROUP", "a b"),
        ("ADAPTER_PARTITION", "2/2"),
        ("ADAPTER_PARTITION", "0/0"),
        ("ADAPTER_PARTITION", "1"),
        ("ADAPTER_PARTITION", "-1/2"),
        ("ADAPTER_PARTITION", "a/b"),
    ],
)
def test_fleet_settings_refuse_what_would_break_a_topic(name: str, value: str) -> None:
    assert error_of(None, {name: value}).startswith(f"{name}={value!r} is not valid")


def test_a_partition_is_read_and_shown_as_given() -> None:
    settings = config.load(None, {**HOME, "ADAPTER_PARTITION": " 1/3 "})
    assert settings.adapter_partition == config.Partition(1, 3)
    assert str(settings.adapter_partition) == "1/3"
    assert config.load(None, HOME).adapter_partition is None


@given(st.text(min_size=1, max_size=80), st.integers(min_value=1, max_value=64))
def test_every_device_has_exactly_one_partition(uri: str, count: int) -> None:
    owners = [k for k in range(count) if config.Partition(k, count).owns(uri)]
    assert len(owners) == 1


def test_partitions_are_the_same_on_every_machine_and_spread_devices() -> None:
    """CRC-32 of the URI: no per-process hash seed, so every instance agrees."""
    # Fixed values (CRC-32 0x1d3c1b6e): a change of the hash would move devices.
    assert config.Partition(0, 2).owns("tasmota:meter000")
    assert config.Partition(3, 7).owns("tasmota:meter000")
    assert config.Partition(4, 5).owns("shelly:shellyplug-s-C45BBE6B1A2F")
    uris = [f"tasmota:meter{n:03d}" for n in range(1000)]
    sizes = [sum(config.Partition(k, 4).owns(u) for u in uris) for k in range(4)]
    assert min(sizes) > 200, sizes
