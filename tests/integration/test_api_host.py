"""The local API's Host check (DNS rebinding) and its answers under a slow-connection
flood: the real Api on a free loopback port, over raw sockets (issue [14])."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest

from adapter import httpserver
from adapter.api import Api, HostCheck
from adapter.history import HistoryStore
from adapter.mapping import MappingSet
from adapter.status import (
    DeliveryStatus,
    MappingsStatus,
    MqttStatus,
    OutboxStatus,
    PipelineStatus,
    PlatformStatus,
    StatusBoard,
)
from tests.slowclients import Flood, request

TOKEN = "host-check-token-5d1e"
EXTRA_HOSTS = ("nas.example", "proxy.example:8443")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def board() -> StatusBoard:
    """A running adapter's status: broker and platform up, nothing waiting."""
    return StatusBoard(
        mqtt=lambda: MqttStatus(True, 5.0, "sepl-adapter-test", 0),
        pipeline=lambda: PipelineStatus({}, {}, ()),
        outbox=lambda: OutboxStatus(0, 0, 0, None),
        delivery=lambda: DeliveryStatus(0, 0, 0, 0, (0,) * 15, 0.0),
        platform=lambda: PlatformStatus(
            True, 5.0, None, "gateway-1", "", {}, frozenset(), {}, 1, 0
        ),
        mappings=lambda: MappingsStatus(0, 0, 0, 0),
    )


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, token: str | None = None, hosts: Iterable[str] = ()
) -> AsyncIterator[int]:
    """The API on a free loopback port for the block; yields the port."""
    history = HistoryStore(tmp_path / "history.sqlite3")
    api = Api(board(), history, lambda: MappingSet([], []), token, hosts=hosts)
    ports: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(api.serve, "127.0.0.1", 0, ready=ports.append))
            with anyio.fail_after(10):
                while not ports:
                    await anyio.sleep(0.01)
            yield ports[0]
            tg.cancel_scope.cancel()
    finally:
        history.close()


SERVED = [
    "localhost",
    "localhost:{port}",
    "127.0.0.1",
    "127.0.0.1:{port}",
    "[::1]",
    "[::1]:{port}",
    "LocalHost:{port}",  # names are case-insensitive
    "nas.example",  # ADAPTER_HTTP_HOSTS, given without a port: any port
    "nas.example:{port}",
    "nas.example:9443",
    "proxy.example:8443",  # given with its port: that one
]
REFUSED = [
    "evil.example",
    "evil.example:{port}",
    "attacker.example:8081",
    "localhost:1",  # a loopback name with another port than the API's
    "127.0.0.1.evil.example:{port}",
    "localhost.evil.example",
    "nas.example.evil.example",
    "proxy.example",  # listed with port 8443 only
    "proxy.example:{port}",
]


@pytest.mark.anyio
async def test_without_a_token_only_the_api_s_own_names_are_served(tmp_path: Path) -> None:
    """Before issue [14] every Host was served, so each REFUSED one got a 200."""
    async with serving(tmp_path, hosts=EXTRA_HOSTS) as port:
        for host in SERVED:
            status, _, body = await request(port, "/devices", host.format(port=port))
            assert status == 200, (host, body)
            assert json.loads(body) == []
        for host in REFUSED:
            status, headers, body = await request(port, "/devices", host.format(port=port))
            assert status == 421, (host, body)
            assert headers["content-type"].startswith("application/json")
            assert "ADAPTER_HTTP_HOSTS" in json.loads(body)["error"]


@pytest.mark.anyio
async def test_dns_rebinding_reads_neither_devices_nor_the_status_page(tmp_path: Path) -> None:
    """A page of attacker.example:8081, whose name the attacker's DNS now points at
    127.0.0.1, is to the browser of the same origin as the API, so it may read what it
    fetches: every request it makes carries its own name as Host and must be refused.
    Before issue [14] each of these was answered with the data (200)."""
    async with serving(tmp_path) as port:
        for host in ("attacker.example:8081", f"attacker.example:{port}"):
            for path in ("/devices", "/api/overview", "/healthz", "/metrics", "/", "/ui/app.js"):
                status, _, body = await request(port, path, host)
                assert status == 421, (host, path, body)
                assert set(json.loads(body)) == {"error"}
        # The same page and its data from the browser at the API's own addresses.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            status, headers, body = await request(port, "/", host)
            assert status == 200 and headers["content-type"].startswith("text/html"), body
            status, _, body = await request(port, "/ui/app.js", host)
            assert status == 200, body
            status, _, body = await request(port, "/api/overview", host)
            assert status == 200 and json.loads(body)["mqtt"]["up"] is True


@pytest.mark.anyio
async def test_a_request_without_host_is_served(tmp_path: Path) -> None:
    """HTTP/1.0 tools may send no Host; a browser always sends one, so this is not the
    rebinding the check is for (HTTP/1.1 without Host is refused by h11 with a 400)."""
    async with serving(tmp_path) as port:
        status, _, body = await request(port, "/healthz", None)
        assert status == 200 and json.loads(body)["mqtt"] == "up"


@pytest.mark.anyio
async def test_with_a_token_the_token_is_the_protection_not_the_host(tmp_path: Path) -> None:
    """A rebinding page cannot send the token; and an API with a token is reached under
    names the adapter cannot know (a proxy's, a LAN address), so Host is not checked."""
    async with serving(tmp_path, token=TOKEN) as port:
        status, _, _ = await request(port, "/devices", "attacker.example:8081")
        assert status == 401
        status, _, body = await request(port, "/devices", "adapter.lan:8081", token=TOKEN)
        assert status == 200 and json.loads(body) == []


@pytest.mark.anyio
async def test_healthz_of_the_api_is_answered_during_a_slow_connection_flood(
    tmp_path: Path,
) -> None:
    """The real API under more slow connections than its limit, each reopened when closed:
    /healthz answers within 3 s every time. Before issue [14] every probe got a 503."""
    async with serving(tmp_path) as port:
        flood = Flood(port, httpserver.MAX_WAITING + 16)
        async with flood.running():
            await flood.wait_closed(16, timeout=20)
            for _ in range(5):
                with anyio.fail_after(3):
                    status, _, body = await request(port, "/healthz", f"127.0.0.1:{port}")
                assert status == 200 and json.loads(body)["platform"] == "up", body
                await anyio.sleep(0.1)


def test_host_check_names() -> None:
    check = HostCheck.create("::1", 8081, ["Router.Example", "fd00::1", "[fd00::2]:81"])
    for host in ("[::1]:8081", "[::1]", "router.example:1", "[fd00::1]:8081", "[fd00::2]:81"):
        assert check.allows(host), host
    for host in ("[::1]:8082", "[fd00::2]", "[fd00::2]:82", "example", ""):
        assert check.allows(host) is (host == ""), host
    wildcard = HostCheck.create("0.0.0.0", 8081)
    assert wildcard.allows("0.0.0.0:8081") and not wildcard.allows("192.0.2.1:8081")
