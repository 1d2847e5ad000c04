"""A real Mosquitto for development and tests, plus a small synchronous MQTT probe.

`Broker` renders `mosquitto/mosquitto.conf` (see the README there) into a working
directory and runs `mosquitto -c <file>` as a child process on a loopback port. Given a
`BrokerSecurity` it renders `mosquitto/secure.conf` instead: TLS only, a password file and
an ACL (`acl_text`), with a throw-away CA and server certificate generated at run time
(`CertificateAuthority`, the `openssl` command line) and passwords hashed by
`mosquitto_passwd`.
Given a `ClientCertificateSecurity` it renders `mosquitto/client-cert.conf`: TLS only, and
every client presents a certificate of the CA (`CertificateAuthority.issue_client`), whose
common name is its user name for the ACL.
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
import ssl
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from adapter.starter import bundled

# Package data of an installed wheel first (adapter/bundled/mosquitto), else the source
# tree's mosquitto/ directory: see adapter.starter.bundled.
DEFAULT_TEMPLATE = bundled("mosquitto") / "mosquitto.conf"
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
    extra: Mapping[str, str] | None = None,
) -> str:
    """The template with its placeholders filled; `user root` appended when running as root.

    `extra` fills further placeholders (the secured template's `${CA_FILE}` and others,
    see `BrokerSecurity.placeholders`).
    """
    text = string.Template(template.read_text(encoding="utf-8")).substitute(
        dict(extra or {}),
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
        text += "\n# added by sepl_dev/broker.py: started as root\nuser root\n"
    return text


# --- the secured broker: TLS, password file, ACL ------------------------------------------

SECURE_TEMPLATE = DEFAULT_TEMPLATE.with_name("secure.conf")
CLIENT_CERT_TEMPLATE = DEFAULT_TEMPLATE.with_name("client-cert.conf")
OPENSSL_MISSING = "openssl not found: install it with 'apt-get install openssl'"
MOSQUITTO_PASSWD_MISSING = (
    "mosquitto_passwd not found: it comes with Mosquitto ('apt-get install mosquitto')"
)
ADAPTER_USER = "sepl-adapter"
DEVICE_USER = "sepl-device"
CERT_DAYS = 2  # test certificates: generated per run, never committed, short-lived

# What the adapter's broker user may receive: the device topics of the bundled mapping
# families (their subscription filters, adapter/livemappings.py `LiveMappings.filters`), its own
# status and the Shelly Gen2 RPC replies. Mosquitto checks read access when it delivers a
# message, so a subscription to a wider filter only receives what is listed here.
ADAPTER_READ = (
    "tele/#",  # Tasmota telemetry, LWT
    "stat/#",  # Tasmota command results
    "shellies/#",  # Shelly Gen1
    "zigbee2mqtt/#",  # Zigbee2MQTT
    "home/#",  # OpenMQTTGateway
    "+/status",  # ESPHome availability, Shelly Gen2 status
    "+/status/#",
    "+/online",  # Shelly Gen2 availability
    "+/events/rpc",  # Shelly Gen2 notifications
    "+/sensor/+/state",  # ESPHome entities
    "+/binary_sensor/+/state",
    "+/switch/+/state",
    "sepl-adapter/#",  # its own status and the Shelly Gen2 RPC replies (sepl-adapter/rpc)
)
# What it may publish: command topics of the bundled command rules and its status topic.
ADAPTER_WRITE = (
    "cmnd/#",  # Tasmota
    "shellies/+/relay/+/command",  # Shelly Gen1
    "+/rpc",  # Shelly Gen2 RPC requests
    "+/switch/+/command",  # ESPHome
    "zigbee2mqtt/+/set",  # Zigbee2MQTT, friendly names of one or two levels
    "zigbee2mqtt/+/+/set",
    "sepl-adapter/status",  # its retained online/offline birth and will
)
# Denied whatever the lists above allow (Mosquitto checks `topic deny` first): Home
# Assistant's discovery and birth topics and Tasmota's discovery, which the first-level
# wildcards of `+/rpc` and `+/switch/+/command` would otherwise reach. A deny also stops
# reading: to use the ha-statestream mapping, drop `homeassistant/#` from it.
ADAPTER_DENY = ("homeassistant/#", "tasmota/discovery/#")
# A device user for the families whose topics start with a fixed level (Tasmota, Shelly
# Gen1, Zigbee2MQTT, OpenMQTTGateway): publishes telemetry, state and availability, receives
# commands. ESPHome and Shelly Gen2 topics start with the device's own name: such devices
# get users of their own and a `pattern readwrite %u/#` line (mosquitto/README.md).
DEVICE_READ = ("cmnd/#", "shellies/+/relay/+/command", "zigbee2mqtt/+/set", "zigbee2mqtt/+/+/set")
DEVICE_WRITE = ("tele/#", "stat/#", "shellies/#", "zigbee2mqtt/#", "home/#")


def acl_text(
    adapter_user: str = ADAPTER_USER,
    device_user: str | None = DEVICE_USER,
    *,
    adapter_read: Iterable[str] = ADAPTER_READ,
    adapter_write: Iterable[str] = ADAPTER_WRITE,
    adapter_deny: Iterable[str] = ADAPTER_DENY,
    device_read: Iterable[str] = DEVICE_READ,
    device_write: Iterable[str] = DEVICE_WRITE,
    full_access: Iterable[str] = (),
) -> str:
    """A Mosquitto `acl_file`: deny, read and write lists per user; whatever is not listed
    is denied too. Read-and-write topics are written once, as `topic readwrite`.
    `full_access` users get `topic readwrite #` (Home Assistant's own `homeassistant` and
    `addons` users expect that on its Mosquitto add-on).
    """

    def section(
        user: str, read: Iterable[str], write: Iterable[str], deny: Iterable[str] = ()
    ) -> list[str]:
        readable, writable = list(dict.fromkeys(read)), list(dict.fromkeys(write))
        lines = [f"user {user}", *(f"topic deny {topic}" for topic in deny)]
        for topic in readable:
            access = "readwrite" if topic in writable else "read"
            lines.append(f"topic {access} {topic}")
        lines += [f"topic write {topic}" for topic in writable if topic not in readable]
        return [*lines, ""]

    lines = [
        "# Generated by sepl_dev/broker.py (acl_text). Mosquitto denies whatever is not",
        "# listed: the adapter cannot write to homeassistant/# or tasmota/discovery/#.",
        "",
        *section(adapter_user, adapter_read, adapter_write, adapter_deny),
    ]
    if device_user is not None:
        lines += section(device_user, device_read, device_write)
    for user in full_access:
        lines += section(user, ("#",), ("#",))
    return "\n".join(lines)


def find_tool(name: str, missing: str) -> str:
    """A command-line tool from PATH or the sbin directories; BrokerError when absent."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(missing)


def _run_tool(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise BrokerError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()}")


@dataclass(frozen=True)
class CertificateAuthority:
    """A throw-away certificate authority made with the `openssl` command line."""

    cert_file: Path
    key_file: Path

    @classmethod
    def generate(cls, directory: Path, name: str = "sepl-adapter test CA") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "ca.crt", directory / "ca.key"
        _run_tool(
            [
                find_tool("openssl", OPENSSL_MISSING),
                *("req", "-x509", "-new", "-nodes", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-keyout", str(key), "-out", str(cert), "-days", str(CERT_DAYS)),
                *("-subj", f"/CN={name}"),
                *("-addext", "basicConstraints=critical,CA:TRUE"),
                *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
                *("-addext", "subjectKeyIdentifier=hash"),
            ],
            "creating the test CA",
        )
        key.chmod(0o600)
        return cls(cert, key)

    def issue(
        self,
        directory: Path,
        name: str = "server",
        *,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = (LOOPBACK,),
    ) -> tuple[Path, Path]:
        """A server certificate for these names, signed by this CA: (cert file, key file)."""
        alt_names = [f"DNS:{n}" for n in dns_names] + [f"IP:{a}" for a in ip_addresses]
        if not alt_names:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        # The common name is not checked when there are subjectAltNames (RFC 6125).
        return self._sign(
            directory,
            name,
            alt_names[0].split(":", 1)[1],
            ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(alt_names)],
        )

    def issue_client(
        self, directory: Path, name: str = "client", *, common_name: str | None = None
    ) -> tuple[Path, Path]:
        """A TLS client certificate signed by this CA: (cert file, key file). Its common
        name (`name` unless given) is the user name a broker with
        `use_identity_as_username` takes from it."""
        return self._sign(directory, name, common_name or name, ["extendedKeyUsage=clientAuth"])

    def _sign(
        self, directory: Path, name: str, common_name: str, extensions: list[str]
    ) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        csr, extfile = directory / f"{name}.csr", directory / f"{name}.ext"
        openssl = find_tool("openssl", OPENSSL_MISSING)
        _run_tool(
            [
                openssl,
                *("req", "-new", "-nodes", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-keyout", str(key), "-out", str(csr)),
                *("-subj", f"/CN={common_name}"),
            ],
            f"creating the key of {name}",
        )
        key.chmod(0o600)
        extfile.write_text(
            "\n".join(
                [
                    "basicConstraints=critical,CA:FALSE",
                    "keyUsage=critical,digitalSignature,keyEncipherment",
                    "subjectKeyIdentifier=hash",
                    "authorityKeyIdentifier=keyid,issuer",
                    *extensions,
                    "",
                ]
            ),
            encoding="utf-8",
        )
        _run_tool(
            [
                openssl,
                *("x509", "-req", "-in", str(csr), "-out", str(cert)),
                *("-CA", str(self.cert_file), "-CAkey", str(self.key_file), "-CAcreateserial"),
                *("-days", str(CERT_DAYS), "-sha256", "-extfile", str(extfile)),
            ],
            f"signing the certificate of {name}",
        )
        return cert, key


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file (hashed) made with `mosquitto_passwd -b`.

    The password is on mosquitto_passwd's command line for a moment: fine for test
    secrets; for real ones run `mosquitto_passwd <file> <user>` and type it.
    """
    if not users:
        raise ValueError("a password file needs at least one user")
    tool = find_tool("mosquitto_passwd", MOSQUITTO_PASSWD_MISSING)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for user, password in users.items():
        # Not repr'd into the error: the tool's stderr does not echo the password.
        _run_tool([tool, "-b", str(path), user, password], f"mosquitto_passwd for {user!r}")
    return path


@dataclass(frozen=True)
class BrokerSecurity:
    """The files the secured template (`mosquitto/secure.conf`) needs."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    password_file: Path
    acl_file: Path

    @classmethod
    def generate(
        cls,
        directory: Path,
        users: Mapping[str, str],
        *,
        ca: CertificateAuthority | None = None,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = (LOOPBACK,),
        acl: str | None = None,
    ) -> BrokerSecurity:
        """A CA (unless given), a server certificate for `dns_names`/`ip_addresses`, the
        password file of `users` and the ACL (`acl_text()` unless given), in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = ca or CertificateAuthority.generate(directory / "ca")
        cert, key = ca.issue(directory, "server", dns_names=dns_names, ip_addresses=ip_addresses)
        password_file = write_password_file(directory / "passwords", users)
        acl_file = directory / "acl"
        acl_file.write_text(acl if acl is not None else acl_text(), encoding="utf-8")
        return cls(ca.cert_file, cert, key, password_file, acl_file)

    @property
    def template(self) -> Path:
        return SECURE_TEMPLATE

    def placeholders(self) -> dict[str, str]:
        return {
            "CA_FILE": str(self.ca_file.resolve()),
            "CERT_FILE": str(self.cert_file.resolve()),
            "KEY_FILE": str(self.key_file.resolve()),
            "PASSWORD_FILE": str(self.password_file.resolve()),
            "ACL_FILE": str(self.acl_file.resolve()),
        }


@dataclass(frozen=True)
class ClientCertificateSecurity:
    """The files the client-certificate template (`mosquitto/client-cert.conf`) needs: the
    CA that signed the server certificate and every client's, the server's certificate and
    key, and the ACL. The clients' certificates come from `ca.issue_client(...)`; the
    broker takes each client's common name as its user name."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    acl_file: Path

    @classmethod
    def generate(
        cls,
        directory: Path,
        *,
        ca: CertificateAuthority | None = None,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = (LOOPBACK,),
        acl: str | None = None,
    ) -> ClientCertificateSecurity:
        """A CA (unless given), a server certificate for `dns_names`/`ip_addresses` and the
        ACL (`acl_text()` unless given: the users are the certificates' common names)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = ca or CertificateAuthority.generate(directory / "ca")
        cert, key = ca.issue(directory, "server", dns_names=dns_names, ip_addresses=ip_addresses)
        acl_file = directory / "acl"
        acl_file.write_text(acl if acl is not None else acl_text(), encoding="utf-8")
        return cls(ca.cert_file, cert, key, acl_file)

    @property
    def template(self) -> Path:
        return CLIENT_CERT_TEMPLATE

    def placeholders(self) -> dict[str, str]:
        return {
            "CA_FILE": str(self.ca_file.resolve()),
            "CERT_FILE": str(self.cert_file.resolve()),
            "KEY_FILE": str(self.key_file.resolve()),
            "ACL_FILE": str(self.acl_file.resolve()),
        }


class Broker:
    """One Mosquitto process on 127.0.0.1:`port`, configured from the template.

    Files in `directory`: `mosquitto.conf` (generated), `mosquitto.log` (the broker's log),
    `mosquitto.stderr` (output before logging starts, e.g. config errors) and `data/`
    (persistence) unless `data_dir` is given. `restart()` keeps port and data directory.

    With `security`, the template defaults to the security's own: `mosquitto/secure.conf`
    for a `BrokerSecurity` (one TLS listener, no anonymous clients, the given password file
    and ACL), `mosquitto/client-cert.conf` for a `ClientCertificateSecurity` (one TLS
    listener that requires a client certificate of the CA, and the ACL).
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
        security: BrokerSecurity | ClientCertificateSecurity | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.security = security
        self.port = port if port is not None else free_port()
        self.host = LOOPBACK
        self.data_dir = Path(data_dir) if data_dir is not None else self.directory / "data"
        self.log_file = Path(log_file) if log_file is not None else self.directory / "mosquitto.log"
        self.stderr_file = self.directory / "mosquitto.stderr"
        self.config_file = self.directory / "mosquitto.conf"
        if template is not None:
            self.template = Path(template)
        else:
            self.template = security.template if security is not None else DEFAULT_TEMPLATE
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
                extra=self.security.placeholders() if self.security is not None else None,
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

    For the secured broker give `username`/`password` and `ca_file` (TLS, verifying the
    broker's certificate and host name) or a `tls_context` of your own; for the broker
    that requires client certificates, `ca_file` and `cert_file`/`key_file`. A refused
    login raises `ConnectionRefusedError`.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = LOOPBACK,
        client_id: str = "",
        clean_session: bool = True,
        timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        tls_context: ssl.SSLContext | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self.timeout = timeout
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = False
        self._refused: ReasonCode | None = None
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
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_file is not None and tls_context is None:
            tls_context = ssl.create_default_context(cafile=str(ca_file))
        if cert_file is not None:
            if tls_context is None:
                raise ValueError("a client certificate needs TLS: give ca_file or tls_context")
            tls_context.load_cert_chain(cert_file, key_file)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        try:
            self._wait(
                lambda: self._connected or self._refused is not None, f"CONNACK from {host}:{port}"
            )
        except TimeoutError:
            self.close()
            raise
        if self._refused is not None:
            self.close()
            raise ConnectionRefusedError(f"{host}:{port} refused the connection: {self._refused}")

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
            if reason_code.is_failure:
                self._refused = reason_code
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
