"""`sepl-adapter sandbox`: a local SEPL platform for development and tests."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from adapter import logs

log = logging.getLogger("adapter.sandbox")
WATCH_PERIOD = 0.5  # seconds between looks at the mapping directory, as the adapter's


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8093", help="host:port (127.0.0.1:8093)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".state/sandbox"),
        help="SQLite database of gateways, devices and events",
    )
    parser.add_argument(
        "--mappings-dir",
        type=Path,
        default=Path(os.environ.get("MAPPINGS_DIR", "mappings")),
        help="device types and services are generated from these mappings",
    )
    parser.add_argument(
        "--any-device-type",
        action="store_true",
        help="accept every device type and service (no registry)",
    )
    parser.add_argument(
        "--users",
        default=os.environ.get("SANDBOX_USERS", ""),
        help="user:password,... (default: accept any credentials)",
    )
    parser.add_argument("--ping-period", default="20s", help="server ping period (20s)")
    parser.add_argument("--read-timeout", default="40s", help="read deadline (40s)")
    parser.add_argument(
        "--max-errors",
        type=int,
        default=5,
        help="errors in a row tolerated before the session is closed (5)",
    )
    parser.add_argument("--loglevel", default=os.environ.get("LOGLEVEL", "info"))
    tls = parser.add_argument_group("TLS (https:// and wss:// on the same port)")
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve TLS with this certificate (PEM; the key may be in it too)",
    )
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="key of --tls-cert (PEM)")
    tls.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="require a client certificate signed by this CA (PEM): others are refused in "
        "the TLS handshake",
    )
    sub = parser.add_subparsers(dest="sandbox_command", metavar="ACTION")
    cmd = sub.add_parser("command", help="send a command to a device and print the response")
    cmd.add_argument("device", help="device uri, e.g. tasmota:kitchen")
    cmd.add_argument("service", help="service uri, e.g. on")
    cmd.add_argument("data", nargs="?", default=None, help="command data (text)")
    cmd.add_argument("--url", default="http://127.0.0.1:8093", help="sandbox HTTP address")
    cmd.add_argument("--timeout", type=float, default=10.0)
    cmd.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="CA of a TLS sandbox (https:// --url)"
    )
    cmd.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="client certificate for a sandbox started with --client-ca",
    )
    cmd.add_argument("--key", type=Path, metavar="FILE", help="key of --cert")


def main(args: argparse.Namespace) -> int:
    if args.sandbox_command == "command":
        return send_command(args)
    return serve(args)


def send_command(args: argparse.Namespace) -> int:
    body = json.dumps(
        {"device": args.device, "service": args.service, "data": args.data, "timeout": args.timeout}
    ).encode()
    request = urllib.request.Request(
        args.url.rstrip("/") + "/commands",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    context = None
    if args.url.startswith("https:"):
        try:
            context = ssl.create_default_context(
                cafile=str(args.ca_file) if args.ca_file is not None else None
            )
            if args.cert is not None:
                context.load_cert_chain(args.cert, args.key)
        except (ssl.SSLError, OSError) as exc:
            print(f"error: --ca-file/--cert/--key cannot be used: {exc}", file=sys.stderr)
            return 2
    try:
        with urllib.request.urlopen(request, timeout=args.timeout + 5, context=context) as answer:
            print(json.dumps(json.load(answer), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"error: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the sandbox at {args.url}: {exc}", file=sys.stderr)
    return 1


def serve(args: argparse.Namespace) -> int:
    from adapter.config import parse_duration
    from adapter.history import HistoryStore
    from adapter.sandbox.server import SandboxServer
    from adapter.sandbox.store import SandboxStore
    from adapter.sepl.platform import Platform

    # The adapter's log set-up: the same text lines, or JSON lines with LOGFORMAT=json.
    logs.setup(args.loglevel)
    try:
        host, port = _split_listen(args.listen)
        ping_period = parse_duration(args.ping_period)
        read_timeout = parse_duration(args.read_timeout)
        users = _parse_users(args.users)
        tls = server_ssl_context(args.tls_cert, args.tls_key, args.client_ca)
        device_types = None if args.any_device_type else _device_types(args.mappings_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = SandboxStore(args.state_dir / "sandbox.sqlite3")
    history = HistoryStore(args.state_dir / "history.sqlite3", retention=365 * 86400.0)
    platform = Platform(
        store,
        device_types,
        users,
        max_errors=args.max_errors,
        ping_period=ping_period,
        read_timeout=read_timeout,
    )
    server = SandboxServer(platform, history=history)
    watched = None if device_types is None else args.mappings_dir
    try:
        asyncio.run(_run(server, host, port, watched, tls, args.client_ca))
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
        history.close()
    return 0


async def _run(
    server: object,
    host: str,
    port: int,
    mappings_dir: Path | None,
    tls: ssl.SSLContext | None = None,
    client_ca: Path | None = None,
) -> None:
    from aiohttp import web

    from adapter.sandbox.server import SandboxServer

    assert isinstance(server, SandboxServer)
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    scheme = "https" if tls is not None else "http"
    required = f"; client certificates of {client_ca} required" if client_ca else ""
    log.info(
        "sandbox platform listening on %s://%s:%d (lookup at /lookup%s)",
        scheme,
        host,
        port,
        required,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = None
    if mappings_dir is not None:
        follower = asyncio.create_task(_follow_mappings(server, mappings_dir))
    try:
        await stop.wait()
    finally:
        log.info("sandbox platform stopping")
        if follower is not None:
            follower.cancel()
        await runner.cleanup()


async def _follow_mappings(server: object, directory: Path) -> None:
    """The registry follows the mapping files as the adapter's hot reload does: a type or
    service an edited file defines is accepted within a second. It only grows, as a
    platform's types stay when a local file no longer names them."""
    from adapter.mapping import MappingError, directory_signature, load_directory
    from adapter.sandbox.server import SandboxServer

    assert isinstance(server, SandboxServer)
    signature = directory_signature(directory)
    while True:
        await asyncio.sleep(WATCH_PERIOD)
        current = await asyncio.to_thread(directory_signature, directory)
        if current == signature:
            continue
        signature = current
        try:
            found = (await asyncio.to_thread(load_directory, directory)).device_types()
        except MappingError as exc:
            log.error("device types not reloaded, the registry stays as it was: %s", exc)
            continue
        added = server.platform.add_device_types(found)
        if added:
            log.info("device types reloaded from %s: %s", directory, ", ".join(added))


def server_ssl_context(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> ssl.SSLContext | None:
    """The TLS context of --tls-cert/--tls-key/--client-ca; None without --tls-cert.
    ValueError, one line naming the option and the file, when they cannot be used."""
    if cert is None:
        if key is not None or client_ca is not None:
            given = "--tls-key" if key is not None else "--client-ca"
            raise ValueError(f"{given} needs --tls-cert: the sandbox serves TLS only with it")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--client-ca", client_ca)):
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{option} {path} cannot be read")

    def encrypted() -> str:
        # Never a prompt on the terminal (OpenSSL's default): a test sandbox takes plain keys.
        raise ValueError(f"--tls-key: the key in {key or cert} is encrypted; give it unencrypted")

    try:
        context.load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        files = f"{cert} and {key}" if key is not None else str(cert)
        raise ValueError(
            f"--tls-cert/--tls-key: {files} hold no PEM certificate with its matching"
            f" unencrypted key ({exc.reason or exc})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise ValueError(
                f"--client-ca: {client_ca} holds no PEM certificate ({exc.reason or exc})"
            ) from None
        # Refused in the handshake: no request of a client without such a certificate is
        # ever read, HTTP API included.
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen={text!r} is not valid: expected host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parse_users(text: str) -> dict[str, str] | None:
    if not text:
        return None
    users = {}
    for item in text.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user:
            raise ValueError("--users must look like user:password,user2:password2")
        users[user] = password
    return users


def _device_types(directory: Path) -> dict[str, frozenset[str]] | None:
    from adapter.mapping import MappingError, load_directory

    if not directory.is_dir():
        log.warning("no mappings at %s: every device type is accepted", directory)
        return None
    try:
        return load_directory(directory).device_types()
    except MappingError as exc:
        raise ValueError(f"mappings in {directory}: {exc}") from None
