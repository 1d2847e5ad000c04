"""The adapter's local HTTP API: devices, the average query, health, metrics and the status
page, served by adapter/httpserver.py."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapter import httpserver
from adapter.history import HistoryStore, average_answer, format_stamp
from adapter.httpserver import Request, Response, Router, error_response, json_response
from adapter.mapping import MappingSet
from adapter.mappingcheck import explain_result
from adapter.status import LATENCY_BUCKETS, DeliveryStatus, Snapshot, StatusBoard
from adapter.web import TOKEN_COOKIE, Answer, assets, cookie_authorization, login_answer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger("adapter.api")

PLATFORM_DOWN_LIMIT = 60.0  # /healthz answers 503 once the platform link is down this long
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _split_host(value: str) -> tuple[str, str | None]:
    """`name:port`, `[v6]:port` or a bare name -> (name, port or None)."""
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return f"{name}]", rest[1:] if rest.startswith(":") else None
    if value.count(":") > 1:  # an IPv6 address without brackets, as a setting may give it
        return f"[{value}]", None
    name, colon, port = value.partition(":")
    return name, port if colon else None


@dataclass(frozen=True)
class HostCheck:
    """Which `Host` headers the API answers without a token, against DNS rebinding: a web
    page whose name the attacker points at 127.0.0.1 is, to the browser, of the same
    origin as the API, so it could read the answers; its requests still carry the
    attacker's name in `Host`, which no one else can make a browser send.

    Accepted: localhost, 127.0.0.1, [::1] and the address the API is bound to, each with
    the API's port or without a port; a name of ADAPTER_HTTP_HOSTS as given with its
    port, or, given without one, with any port (behind a port forward or a reverse proxy
    the port a browser sees is not ours, and the name alone is what a rebinding page
    cannot fake)."""

    exact: frozenset[str]
    any_port: frozenset[str]

    @classmethod
    def create(cls, bound: str | None, port: int | None, extra: Iterable[str] = ()) -> HostCheck:
        names = [*LOOPBACK_NAMES]
        if bound:
            names.append(f"[{bound.lower()}]" if ":" in bound else bound.lower())
        exact = {*names, *(f"{name}:{port}" for name in names if port is not None)}
        any_port: set[str] = set()
        for entry in extra:
            name, given = _split_host(entry.strip().lower())
            if given is None:
                any_port.add(name)
            else:
                exact.add(f"{name}:{given}")
        return cls(frozenset(exact), frozenset(any_port))

    def allows(self, host: str | None) -> bool:
        # A request without Host (HTTP/1.0 tools; h11 refuses HTTP/1.1 without one) cannot
        # come from a browser, which always sends the name it was given, so it is not the
        # rebinding this check is for.
        value = (host or "").strip().lower()
        if not value or value in self.exact:
            return True
        return _split_host(value)[0] in self.any_port


def latency_family(status: DeliveryStatus) -> Metric:
    """What prometheus_client's Histogram with the same buckets would expose."""
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    cumulative, buckets = 0, []
    for bound, count in zip([*LATENCY_BUCKETS, float("inf")], status.latency_counts, strict=True):
        cumulative += count
        le = floatToGoString(bound)  # type: ignore[no-untyped-call]
        buckets.append((le, float(cumulative)))
    return HistogramMetricFamily(
        "sepl_adapter_event_latency_seconds",
        "From MQTT receive to the platform's acknowledgement",
        buckets=buckets,
        sum_value=status.latency_sum,
    )


class Metrics:
    """Reads the parts' counters at scrape time, so nothing is counted twice.

    prometheus_client is imported at the first scrape: 1.2 MB that an adapter nobody
    scrapes does without."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self._registry: CollectorRegistry | None = None

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry()
            self._registry.register(self)
        return generate_latest(self._registry)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = self.board.snapshot()
        counts = now.pipeline.counts
        delivery, platform = now.delivery, now.platform
        counters: dict[str, tuple[str, float]] = {
            "messages_received": ("MQTT messages received", counts.get("received", 0)),
            "messages_mapped": ("messages a rule turned into an event", counts.get("mapped", 0)),
            "messages_unmapped": ("messages no rule takes", counts.get("unmapped", 0)),
            "messages_rejected": ("payloads a rule refused", counts.get("rejected", 0)),
            "messages_too_large": (
                "payloads over EVENT_MAX_BYTES (kept as dead letters)",
                counts.get("too_large", 0),
            ),
            "readings_missing": (
                "events with a declared reading absent or not a number",
                counts.get("readings_missing", 0),
            ),
            "internal_errors": (
                "messages that hit a bug (kept as dead letters)",
                counts.get("internal_errors", 0),
            ),
            "events_acknowledged": ("events the platform answered 200", delivery.acknowledged),
            "events_dead_lettered": ("events moved to the dead letters", delivery.dead_lettered),
            "events_retried": ("events retried after a 500", delivery.retries),
            "events_dropped": ("events dropped at the outbox limits", now.outbox.dropped),
            "platform_connects": ("websocket sessions opened", platform.connects),
            "platform_malformed_frames": (
                "frames from the platform that broke the protocol",
                platform.malformed_frames,
            ),
            "history_dropped_for_space": (
                "readings removed to keep the history within HISTORY_MAX_BYTES",
                now.history.dropped_for_space,
            ),
            "commands_received": ("commands from the platform", counts.get("commands", 0)),
            "command_timeouts": (
                "commands whose device did not reply in time",
                counts.get("command_timeouts", 0),
            ),
        }
        for name, (text, value) in counters.items():
            family = CounterMetricFamily(f"sepl_adapter_{name}", text)
            family.add_metric([], float(value))
            yield family
        gauges: dict[str, tuple[str, float]] = {
            "outbox_depth": ("events waiting in the outbox", now.outbox.depth),
            "dead_letters": ("events in the dead-letter store", now.outbox.dead_letters),
            "events_in_flight": ("events sent and not yet answered", delivery.in_flight),
            "platform_up": ("1 when the platform link is ready", 1.0 if platform.ready else 0.0),
            "mqtt_up": ("1 when connected to the broker", 1.0 if now.mqtt.connected else 0.0),
            "devices": ("devices the gateway manages", len(platform.devices)),
            "disk_full": (
                "1 while the outbox cannot be written (a full disk): messages wait at the broker",
                0.0 if now.pipeline.disk_full_for_s is None else 1.0,
            ),
            "history_bytes": ("bytes of the history's pages in use", now.history.used_bytes or 0),
        }
        for name, (text, value) in gauges.items():
            gauge = GaugeMetricFamily(f"sepl_adapter_{name}", text)
            gauge.add_metric([], float(value))
            yield gauge
        yield latency_family(delivery)


class Api:
    def __init__(
        self,
        board: StatusBoard,
        history: HistoryStore,
        mappings: Callable[[], MappingSet],
        token: str | None = None,
        hosts: Iterable[str] = (),
    ) -> None:
        self.board = board
        self.history = history
        self.mappings = mappings
        self.token = token
        self.hosts = tuple(hosts)  # ADAPTER_HTTP_HOSTS
        # Until serve() knows the bound address and port: the loopback names without a port.
        self.host_check = HostCheck.create(None, None, self.hosts)
        self.metrics = Metrics(board)
        self.assets = assets("adapter")
        self.router = Router()
        for method, path, handler in (
            ("GET", "/devices", self.devices),
            ("GET", "/devices/{id:.+}/average", self.average),
            ("GET", "/devices/{id:.+}", self.device),
            ("GET", "/healthz", self.healthz),
            ("GET", "/metrics", self.prometheus),
            ("GET", "/api/overview", self.overview),
            ("POST", "/api/explain", self.explain),
        ):
            self.router.add(method, path, handler)

    def _authorized(self, authorization: str | None) -> bool:
        if not self.token:
            return True
        given = (authorization or "").encode()
        return hmac.compare_digest(given, f"Bearer {self.token}".encode())

    async def handle(self, request: Request) -> Response:
        """Every request: without a token the Host check, with one the token check; then
        the status page's files or the routes.

        With a token, Host is not checked: a rebinding page cannot send the token (the
        browser keeps the page's cookie for the API's own name, and the API takes the token
        only from the header), and an API with a token is usually reached off loopback,
        under names and addresses (a proxy's, a LAN address, a container's) the adapter
        cannot know. A page file may be loaded with the token's cookie instead of the
        header (see adapter/web); a refused page load gets the login form."""
        if not self.token and not self.host_check.allows(request.headers.get("host")):
            return error_response(
                421, "this Host is not served without a token; add it to ADAPTER_HTTP_HOSTS"
            )
        asset = self.assets.get(request.path)
        if asset is not None:
            if request.method not in ("GET", "HEAD"):
                answer = error_response(405, f"{request.method} is not allowed here")
                answer.headers["Allow"] = "GET, HEAD"
                return answer
            authorization = request.headers.get("authorization")
            from_cookie = False
            if authorization is None:
                authorization = cookie_authorization(request.cookie(TOKEN_COOKIE))
                from_cookie = authorization is not None
            if self._authorized(authorization):
                return _response(asset.answer())
            if asset.is_page:
                return _response(login_answer(from_cookie))
            return _refused()
        if not self._authorized(request.headers.get("authorization")):
            return _refused()
        return await self.router(request)

    async def serve(
        self, host: str, port: int, *, ready: Callable[[int], None] | None = None
    ) -> None:
        """Serve until cancelled; `ready` gets the port once listening (for port 0)."""

        def listening(bound: int) -> None:
            self.host_check = HostCheck.create(host, bound, self.hosts)
            log.info("local API on http://%s:%d (/devices, /healthz, /metrics)", host, bound)
            if ready is not None:
                ready(bound)

        try:
            await httpserver.serve(self.handle, host, port, ready=listening)
        except OSError as exc:
            log.error("local API not started: cannot listen on %s:%d: %s", host, port, exc)

    # --- handlers ------------------------------------------------------------------------

    def _device_view(
        self, now: Snapshot, uri: str, stored: dict[str, Any] | None
    ) -> dict[str, Any]:
        """One physical device: its readings merged across its topics and partial updates
        (value, unit, time), the on/off state of each channel, availability, commands."""
        platform = now.platform
        managed = platform.devices.get(uri)
        row = stored or {}
        device_type = managed.device_type if managed else row.get("type", "")
        mappings = self.mappings()
        readings = {
            name: {
                "value": entry.get("value"),
                "unit": entry.get("unit"),
                "time": format_stamp(entry["ts"])
                if isinstance(entry.get("ts"), int | float)
                else None,
            }
            for name, entry in sorted(row.get("readings", {}).items())
            if isinstance(entry, dict)
        }
        view = {
            "uri": uri,
            "name": managed.name if managed else row.get("name", ""),
            "type": device_type,
            "family": family_of(uri, mappings.prefix),
            "online": now.pipeline.online.get(uri),
            "last_seen": row.get("last_seen"),
            "readings": readings,
            "channels": channels_of(readings),
            "primary": row.get("primary"),
            "commands": mappings.commands_of(uri, device_type or None),
            "last_readings": row.get("last_readings", {}),
            "attached": uri in platform.attached,
            "quarantined": uri in platform.quarantined,
        }
        if uri in platform.quarantined:
            view["quarantine_reason"] = platform.quarantined[uri]
        return view

    async def devices(self, request: Request) -> Response:
        now = self.board.snapshot()
        stored = {row["uri"]: row for row in self.history.devices()}
        uris = sorted(set(stored) | set(now.platform.devices) | set(now.pipeline.online))
        return json_response([self._device_view(now, uri, stored.get(uri)) for uri in uris])

    async def device(self, request: Request) -> Response:
        uri = request.params["id"]
        now = self.board.snapshot()
        stored = self.history.device(uri)
        if stored is None and uri not in now.platform.devices:
            return json_response({"error": f"unknown device {uri!r}"}, status=404)
        return json_response(self._device_view(now, uri, stored))

    async def average(self, request: Request) -> Response:
        status, body = average_answer(
            self.history, request.params["id"], request.query, time.time()
        )
        return json_response(body, status)

    async def healthz(self, request: Request) -> Response:
        now = self.board.snapshot()
        platform = now.platform
        down_for = platform.down_for_s
        body = {
            "mqtt": "up" if now.mqtt.connected else "down",
            "platform": "up" if platform.ready else "down",
            "platform_down_for_s": down_for,
            "platform_last_error": platform.last_error or None,
            "outbox_depth": now.outbox.depth,
            "dead_letters": now.outbox.dead_letters,
            "devices": len(platform.devices),
            "quarantined": sorted(platform.quarantined),
            # A full disk: no message is taken until it has room (issue [14]).
            "disk_full_for_s": now.pipeline.disk_full_for_s,
        }
        healthy = (down_for is None or down_for < PLATFORM_DOWN_LIMIT) and (
            now.pipeline.disk_full_for_s is None
        )
        return json_response(body, status=200 if healthy else 503)

    async def overview(self, request: Request) -> Response:
        """Everything the status page's overview shows, in one answer."""
        now = self.board.snapshot()
        mqtt, platform, mappings = now.mqtt, now.platform, now.mappings
        counts = {
            **now.pipeline.counts,
            "mapping_reloads": mappings.reloads,
            "mapping_reload_errors": mappings.reload_errors,
        }
        return json_response(
            {
                "mqtt": {
                    "up": mqtt.connected,
                    "client_id": mqtt.client_id,
                    ("up_for_s" if mqtt.connected else "down_for_s"): mqtt.for_s,
                },
                "platform": {
                    "up": platform.ready,
                    "down_for_s": platform.down_for_s,
                    "up_for_s": platform.up_for_s,
                    "gateway": platform.gateway or None,
                    "last_error": platform.last_error or None,
                },
                "outbox_depth": now.outbox.depth,
                "disk_full_for_s": now.pipeline.disk_full_for_s,
                "oldest_waiting_s": now.outbox.oldest_waiting_s,
                "dead_letters": now.outbox.dead_letters,
                "quarantined": dict(platform.quarantined),
                "devices": len(platform.devices),
                "counts": counts,
                "unmapped_topics": [
                    {"topic": topic, "count": count}
                    for topic, count in now.pipeline.unmapped_topics
                ],
            }
        )

    async def explain(self, request: Request) -> Response:
        try:
            body = request.json()
            topic, payload = body["topic"], body.get("payload", "")
            if not isinstance(topic, str) or not topic or not isinstance(payload, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return json_response(
                {"error": 'body must be JSON {"topic": text, "payload": text}'}, status=400
            )
        return json_response(explain_result(self.mappings(), topic, payload.encode("utf-8")))

    async def prometheus(self, request: Request) -> Response:
        return Response(
            200,
            self.metrics.exposition(),
            {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def _response(answer: Answer) -> Response:
    return Response(answer.status, answer.body, dict(answer.headers))


def _refused() -> Response:
    return error_response(401, "a bearer token is required")


def family_of(uri: str, prefix: str) -> str:
    """The family of a device: its uri's namespace (D11), after DEVICE_PREFIX."""
    if prefix and uri.startswith(prefix + ":"):
        uri = uri[len(prefix) + 1 :]
    return uri.split(":", 1)[0] if ":" in uri else ""


def channels_of(readings: Mapping[str, Mapping[str, Any]]) -> dict[str, bool | None]:
    """The on/off state of each channel: the readings `state` and `state_<channel>`."""
    return {
        name: None if entry.get("value") is None else entry["value"] != 0
        for name, entry in readings.items()
        if name == "state" or name.startswith("state_")
    }
