"""Settings: defaults, then the `--config` YAML file, then the environment, then flags.

The names and defaults are fixed by `configuration.md`. One table of specs (`SPECS`) drives
parsing, the YAML keys, the command-line flags and `describe`. Everything is validated here,
before anything connects, and every problem becomes one `SettingsError` line that names the
setting, the value and what is accepted, never a secret.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "Secret",
    "Settings",
    "SettingsError",
    "add_arguments",
    "describe",
    "load",
    "parse_duration",
    "print_effective",
]

DEFAULT = "default"
FILE = "file"
ENVIRONMENT = "environment"
FLAG = "flag"


class SettingsError(Exception):
    """An invalid setting; `str(e)` is one line fit to show the user as is."""


class Secret:
    """A string that does not show itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "***" if self._value else ""

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    mqtt_host: str
    mqtt_port: int
    mqtt_protocol: str
    mqtt_client_id: str | None
    mqtt_username: str | None
    mqtt_password: Secret | None
    mqtt_tls: bool
    mqtt_ca_file: Path | None
    mqtt_tls_insecure: bool
    mqtt_qos: int
    mqtt_status_topic: str
    connector_url: str
    connector_lookup_url: str | None
    connector_device_registration_path: str
    connector_https: bool
    connector_user: str
    connector_password: Secret
    connector_protocol: str
    connector_ca_file: Path | None
    connector_tls_insecure: bool
    connector_request_timeout: float
    connector_ping_interval: float
    connector_ping_timeout: float
    connector_inflight: int
    reconnect_min: float
    reconnect_max: float
    device_prefix: str
    mappings_dir: Path
    adapter_state_dir: Path
    adapter_http: tuple[str, int] | None
    adapter_http_token: Secret | None
    outbox_max_events: int
    outbox_max_age: float
    history_retention: float
    forward_retained: str
    loglevel: str
    logformat: str
    # The *_FILE names are settings of configuration.md too; kept so `describe` can show them.
    mqtt_password_file: Path | None = None
    connector_password_file: Path | None = None
    adapter_http_token_file: Path | None = None
    adapter_http_allow_unauthenticated: bool = False
    discovery_tasmota: str | None = "tasmota/discovery"
    discovery_homeassistant: str | None = "homeassistant"
    discovery_settle: float = 30.0
    discovery_zigbee2mqtt: str | None = "zigbee2mqtt"
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None  # None: the key is in the certificate file
    connector_cert_file: Path | None = None
    connector_key_file: Path | None = None
    adapter_http_hosts: tuple[str, ...] = ()
    mappings_max_bytes: int = 8 * 2**20
    event_max_bytes: int = 2**20
    history_max_bytes: int = 2 * 10**9
    adapter_instance: str = ""
    mqtt_topic_prefix: str = ""
    mqtt_shared_group: str = ""
    adapter_partition: Partition | None = None
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )


# --- value parsers: each takes the text and returns the value, or raises ValueError whose
# message says what is accepted ("expected ...").


class _Unreadable(ValueError):
    """A file setting whose file cannot be read; the message is the OS reason."""


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_DURATION_HINT = "a duration such as 500ms, 15s, 2m, 1h, 30d or a number of seconds"


def parse_duration(text: str) -> float:
    """Seconds from "500ms", "15s", "2m", "1h", "30d" or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected {_DURATION_HINT}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"expected {_DURATION_HINT}, greater than 0")
    return seconds


def _integer(low: int, high: int | None) -> Callable[[str], int]:
    accepted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        # int() alone would also take "1_000" and " 1 "; a setting should be plain digits.
        if re.fullmatch(r"[+-]?\d+", text.strip()) is None:
            raise ValueError(f"expected {accepted}")
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected {accepted}")
        return value

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE)} (true) or {', '.join(_FALSE)} (false)")


def _choice(*options: str, ignore_case: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower() if ignore_case else text.strip()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    accepted = " or ".join(f"{scheme}://" for scheme in schemes)

    def parse(text: str) -> str:
        value = text.strip()
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError for a port that is not a number in range
        except ValueError:
            raise ValueError(f"expected a {accepted} URL with a host") from None
        if parts.scheme.lower() not in schemes or not parts.hostname:
            raise ValueError(f"expected a {accepted} URL with a host")
        return value

    return parse


def _non_empty(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if not value:
            raise ValueError(f"expected {what}")
        return value

    return parse


def _optional_text(text: str) -> str | None:
    return text or None


def _plain_text(text: str) -> str:
    return text


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a path")
    return Path(text)


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?", re.I)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes from "8MiB", "2GB", "512KiB", "1.5MB" or a bare number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError("expected a size such as 8MiB, 2GB, 512KiB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


def _host_names(text: str) -> tuple[str, ...]:
    """`a.example,b.example:8081`: names a request's Host header may carry (lower case)."""
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    for name in names:
        if any(c.isspace() or c in "/@" for c in name):
            raise ValueError("expected host names separated by commas, such as nas.local")
    return names


_INSTANCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _instance(text: str) -> str:
    """A name for a topic level and a client id: NATS refuses dots and spaces in MQTT
    topics, and a `/` would add a level."""
    value = text.strip()
    if value and not _INSTANCE_NAME.fullmatch(value):
        raise ValueError("expected up to 64 letters, digits, - or _, such as meters-1")
    return value


def _topic_prefix(text: str) -> str:
    """Topic levels put before every device filter (`part/0` or `part/0/`: kept with its
    trailing `/`)."""
    value = text.strip()
    if not value:
        return ""
    if any(c in value for c in "+#\0") or value.startswith(("$", "/")) or "//" in value:
        raise ValueError(
            "expected topic levels without wildcards, not starting with $ or /, such as part/0/"
        )
    return value if value.endswith("/") else value + "/"


@dataclass(frozen=True)
class Partition:
    """ADAPTER_PARTITION `index/count`: the instance of a fleet that forwards the devices
    whose URI hashes to `index` (CRC-32, the same on every machine and Python)."""

    index: int
    count: int

    def owns(self, uri: str) -> bool:
        return zlib.crc32(uri.encode("utf-8")) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _partition(text: str) -> Partition | None:
    value = text.strip()
    if not value:
        return None
    match = re.fullmatch(r"([0-9]{1,4})/([0-9]{1,4})", value)
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError("expected <index>/<count> with 0 <= index < count, such as 0/2")
    return Partition(int(match[1]), int(match[2]))


def _share_group(text: str) -> str:
    value = text.strip()
    if any(c in "/+#\0" or c.isspace() for c in value):
        raise ValueError("expected a group name without /, +, # or spaces, such as sepl")
    return value


def _registration_path(text: str) -> str:
    value = text.strip()
    if not value or value.startswith("/"):
        raise ValueError("expected a URL path without a leading slash, such as discovery")
    return value


def _status_topic(text: str) -> str:
    # A topic we publish to: wildcards and NUL are not allowed in a publish topic.
    if not text or "+" in text or "#" in text or "\0" in text:
        raise ValueError("expected an MQTT topic without + or # wildcards")
    return text


_OFF = ("off", "false")  # YAML turns `http: off` into false, which reaches us as "false"


def _discovery_prefix(text: str) -> str | None:
    """A discovery topic prefix to read, or off."""
    if text.strip().lower() in _OFF:
        return None
    if not text or "+" in text or "#" in text or "\0" in text or text.endswith("/"):
        raise ValueError("expected a topic prefix without wildcards or trailing /, or off")
    return text


def _listen_address(text: str) -> tuple[str, int] | None:
    accepted = "expected host:port, [ipv6]:port or off"
    value = text.strip()
    if value.lower() in _OFF:
        return None
    match = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value)
    if match is None:
        raise ValueError(accepted)
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:  # 0 = any free port, useful for tests
        raise ValueError(accepted)
    return host, port


@dataclass(frozen=True)
class _Spec:
    env: str
    parse: Callable[[str], Any]
    default: str | None  # text given to `parse`; None = no value (see `_resolve`)
    meaning: str
    metavar: str = "VALUE"
    secret: bool = False
    file_env: str | None = None  # for a secret: the *_FILE setting that wins over it
    flag: bool = True  # secrets have no flag: a command line is visible to every local user
    none_text: str = "(none)"  # describe shows it for None; --help for a default of None

    @property
    def attr(self) -> str:
        return self.env.lower()

    @property
    def option(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


_LOGLEVELS = ("debug", "info", "warning", "error", "critical")
_LOGFORMATS = ("text", "json")

SPECS: tuple[_Spec, ...] = (
    _Spec("MQTT_HOST", _non_empty("a host name or address"), "127.0.0.1", "broker host", "HOST"),
    _Spec(
        "MQTT_PORT",
        _integer(1, 65535),
        None,  # depends on MQTT_TLS, see `load`
        "broker port",
        "PORT",
        none_text="1883, 8883 with TLS",
    ),
    _Spec("MQTT_PROTOCOL", _choice("3.1.1", "5"), "3.1.1", "MQTT version", "VERSION"),
    _Spec(
        "MQTT_CLIENT_ID",
        _optional_text,
        None,
        "client id",
        "ID",
        none_text="(generated, kept in the state dir)",
    ),
    _Spec("MQTT_USERNAME", _optional_text, None, "broker user name", "USER"),
    _Spec(
        "MQTT_PASSWORD",
        Secret,
        None,
        "broker password",
        secret=True,
        file_env="MQTT_PASSWORD_FILE",
        flag=False,
    ),
    _Spec("MQTT_PASSWORD_FILE", _path, None, "file holding the broker password", "FILE"),
    _Spec("MQTT_TLS", parse_boolean, "false", "TLS to the broker", "BOOL"),
    _Spec("MQTT_CA_FILE", _path, None, "CA bundle for the broker", "FILE", none_text="(system)"),
    _Spec("MQTT_TLS_INSECURE", parse_boolean, "false", "skip broker certificate checks", "BOOL"),
    _Spec("MQTT_QOS", _integer(0, 2), "1", "subscription QoS", "QOS"),
    _Spec("MQTT_STATUS_TOPIC", _status_topic, "sepl-adapter/status", "birth/will topic", "TOPIC"),
    _Spec("CONNECTOR_URL", _url("ws", "wss"), "ws://127.0.0.1:8093/", "connector URL", "URL"),
    _Spec(
        "CONNECTOR_LOOKUP_URL",
        _url("http", "https"),
        None,
        "lookup URL for the connector (D2)",
        "URL",
    ),
    _Spec(
        "CONNECTOR_DEVICE_REGISTRATION_PATH",
        _registration_path,
        "discovery",
        "legacy registration path (D4)",
        "PATH",
    ),
    _Spec("CONNECTOR_HTTPS", parse_boolean, "false", "wss/https for looked-up endpoints", "BOOL"),
    _Spec("CONNECTOR_USER", _plain_text, "", "platform user", "USER"),
    _Spec(
        "CONNECTOR_PASSWORD",
        Secret,
        "",
        "platform password",
        secret=True,
        file_env="CONNECTOR_PASSWORD_FILE",
        flag=False,
    ),
    _Spec("CONNECTOR_PASSWORD_FILE", _path, None, "file holding the platform password", "FILE"),
    _Spec("CONNECTOR_PROTOCOL", _choice("envelope", "legacy"), "envelope", "dialect (D1)", "NAME"),
    _Spec("CONNECTOR_CA_FILE", _path, None, "CA bundle for wss", "FILE", none_text="(system)"),
    _Spec("CONNECTOR_TLS_INSECURE", parse_boolean, "false", "skip wss certificate checks", "BOOL"),
    _Spec("CONNECTOR_REQUEST_TIMEOUT", _positive_duration, "10s", "answer timeout", "DURATION"),
    _Spec("CONNECTOR_PING_INTERVAL", _positive_duration, "15s", "ping interval", "DURATION"),
    _Spec("CONNECTOR_PING_TIMEOUT", _positive_duration, "10s", "pong timeout", "DURATION"),
    _Spec("CONNECTOR_INFLIGHT", _integer(1, None), "32", "events in flight", "N"),
    _Spec("RECONNECT_MIN", _positive_duration, "1s", "shortest back-off", "DURATION"),
    _Spec("RECONNECT_MAX", _positive_duration, "120s", "longest back-off", "DURATION"),
    _Spec("DEVICE_PREFIX", _plain_text, "", "instance prefix for device URIs", "PREFIX"),
    _Spec("MAPPINGS_DIR", _path, "./mappings", "mapping files", "DIR"),
    _Spec(
        "ADAPTER_STATE_DIR",
        _path,
        None,  # depends on XDG_STATE_HOME, see `load`
        "state directory",
        "DIR",
        none_text="$XDG_STATE_HOME/sepl-adapter or ~/.local/state/sepl-adapter",
    ),
    _Spec("ADAPTER_HTTP", _listen_address, "127.0.0.1:8081", "local API address", "HOST:PORT"),
    _Spec(
        "ADAPTER_HTTP_TOKEN",
        Secret,
        None,
        "API bearer token",
        secret=True,
        file_env="ADAPTER_HTTP_TOKEN_FILE",
        flag=False,
    ),
    _Spec("ADAPTER_HTTP_TOKEN_FILE", _path, None, "file holding the API token", "FILE"),
    _Spec(
        "ADAPTER_HTTP_ALLOW_UNAUTHENTICATED",
        parse_boolean,
        "false",
        "serve the API on a non-loopback address without a token",
        "BOOL",
    ),
    _Spec("OUTBOX_MAX_EVENTS", _integer(1, None), "1000000", "outbox size limit", "N"),
    _Spec("OUTBOX_MAX_AGE", _positive_duration, "7d", "outbox age limit", "DURATION"),
    _Spec("HISTORY_RETENTION", _positive_duration, "30d", "readings kept", "DURATION"),
    _Spec(
        "FORWARD_RETAINED",
        _choice("changed", "all", "none"),
        "changed",
        "retained messages on subscribe",
        "MODE",
    ),
    _Spec(
        "DISCOVERY_TASMOTA",
        _discovery_prefix,
        "tasmota/discovery",
        "Tasmota discovery prefix read for zero-configuration devices, or off",
        "PREFIX",
    ),
    _Spec(
        "DISCOVERY_HOMEASSISTANT",
        _discovery_prefix,
        "homeassistant",
        "Home Assistant discovery prefix read for zero-configuration devices, or off",
        "PREFIX",
    ),
    _Spec(
        "DISCOVERY_SETTLE",
        _positive_duration,
        "30s",
        "a discovered device not announced again this long after start is removed",
        "DURATION",
    ),
    _Spec("LOGLEVEL", _choice(*_LOGLEVELS, ignore_case=True), "info", "log level", "LEVEL"),
    _Spec(
        "LOGFORMAT",
        _choice(*_LOGFORMATS, ignore_case=True),
        "text",
        "log lines: text, or json (one JSON object a line) for machines",
        "FORMAT",
    ),
    # Added after configuration.md's list (issue [12]).
    _Spec(
        "DISCOVERY_ZIGBEE2MQTT",
        _discovery_prefix,
        "zigbee2mqtt",
        "Zigbee2MQTT base topic whose retained bridge/devices list gives devices, units and"
        " commands, or off",
        "TOPIC",
    ),
    # Added with issue [14] (configuration.md, "Added for issues [14] and [15]").
    _Spec("MQTT_CERT_FILE", _path, None, "TLS client certificate for the broker", "FILE"),
    _Spec("MQTT_KEY_FILE", _path, None, "key of MQTT_CERT_FILE", "FILE"),
    _Spec("CONNECTOR_CERT_FILE", _path, None, "TLS client certificate for wss", "FILE"),
    _Spec("CONNECTOR_KEY_FILE", _path, None, "key of CONNECTOR_CERT_FILE", "FILE"),
    _Spec(
        "EVENT_MAX_BYTES",
        parse_size,
        "1MiB",
        "size limit of an encoded event frame; larger events are dead-lettered",
        "SIZE",
    ),
    _Spec(
        "HISTORY_MAX_BYTES",
        parse_size,
        "2GB",
        "disk budget of the history; the oldest readings go first",
        "SIZE",
    ),
    _Spec(
        "ADAPTER_HTTP_HOSTS",
        _host_names,
        "",
        "more Host names the API accepts without a token",
        "NAMES",
    ),
    _Spec("MAPPINGS_MAX_BYTES", parse_size, "8MiB", "size limit of one mapping file", "SIZE"),
    # Added with issue [15] (configuration.md, "Added for issues [14] and [15]").
    _Spec(
        "ADAPTER_INSTANCE",
        _instance,
        "",
        "instance name of a fleet: the status topic, the logs, a new client id",
        "NAME",
    ),
    _Spec(
        "MQTT_TOPIC_PREFIX",
        _topic_prefix,
        "",
        "prefix of every device subscription filter, stripped from received topics",
        "PREFIX",
    ),
    _Spec(
        "MQTT_SHARED_GROUP",
        _share_group,
        "",
        "subscribe every device filter as $share/<group>/<filter>",
        "GROUP",
    ),
    _Spec(
        "ADAPTER_PARTITION",
        _partition,
        "",
        "k/N: forward only the devices whose URI hashes to k of N (every instance reads all)",
        "K/N",
    ),
)
BY_ENV = {spec.env: spec for spec in SPECS}
_GROUPS = {spec.env.split("_")[0].lower() for spec in SPECS}
_LOGLEVEL_FALLBACK = "LOGGING_LEVEL"


@dataclass(frozen=True)
class _Raw:
    """A value as given, with where it came from (for the source column and errors)."""

    text: str
    source: str
    name: str  # the name to show in an error: the env name, or LOGGING_LEVEL
    where: str = ""  # "mqtt.port in /x.yaml", "--mqtt-port" or "" for the environment


def _error(spec: _Spec, raw: _Raw, problem: ValueError) -> SettingsError:
    shown = "'***'" if spec.secret else repr(raw.text)
    where = f" ({raw.where})" if raw.where else ""
    if isinstance(problem, _Unreadable):
        return SettingsError(f"{raw.name}={shown}{where} cannot be read: {problem}")
    return SettingsError(f"{raw.name}={shown}{where} is not valid: {problem}")


# --- the layers


def yaml_text(value: object) -> str:
    """A YAML scalar as the text an environment variable would hold."""
    if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off as booleans
        return "true" if value else "false"
    return str(value)


def _read_file(path: str) -> dict[str, _Raw]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"--config {path!r} cannot be read: {reason}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SettingsError(f"{path}{line}: invalid YAML: {problem}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, e.g. 'mqtt: {{host: x}}'")

    # Either grouped (`mqtt: {host: x}`) or flat (`mqtt_host: x`).
    entries: list[tuple[str, str, object]] = []  # (key as written, env name, value)
    for key, value in document.items():
        if value is None and str(key) in _GROUPS:  # a group whose entries are all commented out
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                entries.append((f"{key}.{sub}", f"{key}_{sub}".upper(), sub_value))
        else:
            entries.append((str(key), str(key).upper(), value))

    result: dict[str, _Raw] = {}
    for written, env, value in entries:
        spec = BY_ENV.get(env)
        if spec is None:
            raise SettingsError(f"{path}: unknown setting {written!r}")
        if env in result:
            raise SettingsError(f"{path}: {env} is set twice ({result[env].where}, {written})")
        if value is None:  # `key:` with nothing after it: not set
            continue
        where = f"{written} in {path}"
        if isinstance(value, list | dict):
            raise SettingsError(f"{env} ({where}) is not valid: expected a single value")
        result[env] = _Raw(yaml_text(value), FILE, env, where)
    return result


def _from_environment(environ: Mapping[str, str]) -> dict[str, _Raw]:
    result: dict[str, _Raw] = {}
    for spec in SPECS:
        value = environ.get(spec.env, "")
        if value:  # empty variables count as unset
            result[spec.env] = _Raw(value, ENVIRONMENT, spec.env)
    fallback = environ.get(_LOGLEVEL_FALLBACK, "")
    if "LOGLEVEL" not in result and fallback:
        result["LOGLEVEL"] = _Raw(fallback, ENVIRONMENT, _LOGLEVEL_FALLBACK)
    return result


def _from_flags(args: argparse.Namespace) -> dict[str, _Raw]:
    result: dict[str, _Raw] = {}
    for spec in SPECS:
        value = getattr(args, spec.attr, None)
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        result[spec.env] = _Raw(text, FLAG, spec.env, spec.option)
    return result


def _state_dir_default(environ: Mapping[str, str]) -> Path:
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore a relative one
        return Path(xdg) / "sepl-adapter"
    home = environ.get("HOME", "")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "sepl-adapter"


def _check_readable(spec: _Spec, raw: _Raw, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _error(spec, raw, _Unreadable(exc.strerror or str(exc))) from None
    except UnicodeDecodeError:
        raise _error(spec, raw, ValueError("expected a UTF-8 text file")) from None


def load(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from defaults, `--config`, `environ` (default os.environ) and flags."""
    if environ is None:
        environ = os.environ
    raw: dict[str, _Raw] = {}
    config_file = getattr(args, "config", None) if args is not None else None
    if config_file:
        raw.update(_read_file(config_file))
    raw.update(_from_environment(environ))
    if args is not None:
        raw.update(_from_flags(args))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        given = raw.get(spec.env)
        if given is None:
            sources[spec.env] = DEFAULT
            values[spec.attr] = None if spec.default is None else spec.parse(spec.default)
            continue
        sources[spec.env] = given.source
        if given.name != spec.env:
            sources[given.name] = given.source
        try:
            values[spec.attr] = spec.parse(given.text)
        except ValueError as exc:
            raise _error(spec, given, exc) from None

    # Defaults that depend on other values.
    if values["mqtt_port"] is None:
        values["mqtt_port"] = 8883 if values["mqtt_tls"] else 1883
    if values["adapter_state_dir"] is None:
        values["adapter_state_dir"] = _state_dir_default(environ)
    if values["adapter_instance"] and "MQTT_STATUS_TOPIC" not in raw:
        values["mqtt_status_topic"] = f"sepl-adapter/{values['adapter_instance']}/status"
        sources["MQTT_STATUS_TOPIC"] = "ADAPTER_INSTANCE"

    # A secret's file wins over the secret itself, whichever layer each came from.
    for spec in SPECS:
        if spec.file_env is None or values[spec.file_env.lower()] is None:
            continue
        file_spec = BY_ENV[spec.file_env]
        content = _check_readable(file_spec, raw[spec.file_env], values[file_spec.attr])
        values[spec.attr] = Secret(content.rstrip("\r\n"))
        sources[spec.env] = sources[spec.file_env]

    # A CA, certificate or key file that cannot be read should stop start-up now, not at
    # the first TLS handshake.
    for env in (
        "MQTT_CA_FILE",
        "CONNECTOR_CA_FILE",
        "MQTT_CERT_FILE",
        "MQTT_KEY_FILE",
        "CONNECTOR_CERT_FILE",
        "CONNECTOR_KEY_FILE",
    ):
        path = values[env.lower()]
        if path is not None:
            _check_readable(BY_ENV[env], raw[env], path)
    for cert, key in (
        ("MQTT_CERT_FILE", "MQTT_KEY_FILE"),
        ("CONNECTOR_CERT_FILE", "CONNECTOR_KEY_FILE"),
    ):
        if values[key.lower()] is not None and values[cert.lower()] is None:
            raise _error(
                BY_ENV[key],
                raw[key],
                ValueError(f"expected {cert} too: a key without its certificate"),
            )

    if values["reconnect_max"] < values["reconnect_min"]:
        # Blame the one that was given; when both were, the maximum.
        if "RECONNECT_MAX" in raw or "RECONNECT_MIN" not in raw:
            spec, given = BY_ENV["RECONNECT_MAX"], raw.get("RECONNECT_MAX")
            bound = f">= RECONNECT_MIN ({_format_duration(values['reconnect_min'])})"
        else:
            spec, given = BY_ENV["RECONNECT_MIN"], raw.get("RECONNECT_MIN")
            bound = f"<= RECONNECT_MAX ({_format_duration(values['reconnect_max'])})"
        given = given or _Raw(spec.default or "", DEFAULT, spec.env)
        raise _error(spec, given, ValueError(f"expected {_DURATION_HINT}, {bound}"))

    http = values["adapter_http"]
    if (
        http is not None
        and not _is_loopback(http[0])
        and not values["adapter_http_token"]
        and not values["adapter_http_allow_unauthenticated"]
    ):
        spec = BY_ENV["ADAPTER_HTTP"]
        raise _error(
            spec,
            raw.get("ADAPTER_HTTP") or _Raw(spec.default or "", DEFAULT, spec.env),
            ValueError(
                "expected a loopback address (127.0.0.1, ::1) unless ADAPTER_HTTP_TOKEN is "
                "set (or ADAPTER_HTTP_ALLOW_UNAUTHENTICATED=true)"
            ),
        )

    return Settings(**values, sources=MappingProxyType(sources))


def load_for_command(args: argparse.Namespace) -> Settings | None:
    """`load` for a command line: an invalid setting is printed as the one line it is
    (exit status 2 for the caller), never a traceback."""
    try:
        return load(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config FILE` and one flag per setting; every default is None (= not given)."""
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="YAML settings file (below env and flags)"
    )
    group = parser.add_argument_group("settings (each also an environment variable)")
    for spec in SPECS:
        if not spec.flag:
            continue
        default = spec.none_text if spec.default is None else spec.default or "empty"
        help_text = f"{spec.meaning} [{spec.env}, default {default}]".replace("%", "%%")
        if spec.parse is parse_boolean:
            group.add_argument(
                spec.option,
                dest=spec.attr,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                spec.option, dest=spec.attr, metavar=spec.metavar, default=None, help=help_text
            )


def _format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def _format_value(spec: _Spec, settings: Settings) -> str:
    value = getattr(settings, spec.attr)
    if isinstance(value, Secret):
        text = "***" if value else "(empty)"  # never the value itself
        if spec.file_env and getattr(settings, spec.file_env.lower()) is not None:
            text += f" (from {spec.file_env})"
        return text
    if value is None:
        return spec.none_text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_duration(value)
    if spec.env == "ADAPTER_HTTP":
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(value, tuple):
        return ",".join(value) or "(empty)"
    text = str(value)
    if spec.env == "LOGLEVEL" and _LOGLEVEL_FALLBACK in settings.sources:
        text += f" (from {_LOGLEVEL_FALLBACK})"
    return text if text else "(empty)"


def describe(settings: Settings) -> str:
    """A table of every setting: name, effective value (secrets masked) and source."""
    rows = [("NAME", "VALUE", "SOURCE")]
    rows += [
        (spec.env, _format_value(spec, settings), settings.sources.get(spec.env, DEFAULT))
        for spec in SPECS
    ]
    name_width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    return "\n".join(
        f"{name:<{name_width}}  {value:<{value_width}}  {source}".rstrip()
        for name, value, source in rows
    )


def print_effective(args: argparse.Namespace) -> int:
    """`sepl-adapter config`: print the effective settings, or one error line and return 2."""
    try:
        settings = load(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(settings))
    return 0
