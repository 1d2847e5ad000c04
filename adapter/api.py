"""The adapter's local HTTP API (aiohttp): devices, the average query, health, metrics."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapter.history import QueryError, UnknownDevice, parse_query
from adapter.mapping.report import explain_result
from adapter.web import add_status_page

if TYPE_CHECKING:
    from adapter.app import Adapter

log = logging.getLogger("adapter.api")

PLATFORM_DOWN_LIMIT = 60.0  # /healthz answers 503 once the platform link is down this long
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics(Collector):
    """Reads the adapter's counters at scrape time, so nothing is counted twice."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "sepl_adapter_event_latency_seconds",
            "From MQTT receive to the platform's acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        a = self.adapter
        counts = a.counts
        delivery = a.sender.stats
        connector = a.connector.stats
        counters: dict[str, tuple[str, float]] = {
            "messages_received": ("MQTT messages received", counts.get("received", 0)),
            "messages_mapped": ("messages a rule turned into an event", counts.get("mapped", 0)),
            "messages_unmapped": ("messages no rule takes", counts.get("unmapped", 0)),
            "messages_rejected": ("payloads a rule refused", counts.get("rejected", 0)),
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
            "events_dropped": ("events dropped at the outbox limits", a.outbox.dropped),
            "platform_connects": ("websocket sessions opened", connector.connects),
            "platform_malformed_frames": (
                "frames from the platform that broke the protocol",
                connector.malformed_frames,
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
            "outbox_depth": ("events waiting in the outbox", len(a.outbox)),
            "dead_letters": ("events in the dead-letter store", a.outbox.dead_letter_count()),
            "events_in_flight": ("events sent and not yet answered", a.sender.in_flight),
            "platform_up": ("1 when the platform link is ready", 1.0 if a.connector.ready else 0.0),
            "mqtt_up": (
                "1 when connected to the broker",
                1.0 if a.mqtt.connected.is_set() else 0.0,
            ),
            "devices": ("devices the gateway manages", len(a.connector.devices)),
        }
        for name, (text, value) in gauges.items():
            gauge = GaugeMetricFamily(f"sepl_adapter_{name}", text)
            gauge.add_metric([], float(value))
            yield gauge


class Api:
    def __init__(self, adapter: Adapter, token: str | None = None) -> None:
        self.adapter = adapter
        self.token = token
        self.metrics = Metrics(adapter)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.add_routes(
            [
                web.get("/devices", self.devices),
                web.get(r"/devices/{id:.+}/average", self.average),
                web.get(r"/devices/{id:.+}", self.device),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.prometheus),
                web.get("/api/overview", self.overview),
                web.post("/api/explain", self.explain),
            ]
        )
        add_status_page(app, "adapter")
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return web.json_response({"error": "a bearer token is required"}, status=401)
        return await handler(request)

    async def serve(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            log.error("local API not started: cannot listen on %s:%d: %s", host, port, exc)
            await runner.cleanup()
            return
        log.info("local API on http://%s:%d (/devices, /healthz, /metrics)", host, port)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    # --- handlers ------------------------------------------------------------------------

    def _device_view(self, uri: str, stored: dict[str, Any] | None) -> dict[str, Any]:
        a = self.adapter
        managed = a.connector.devices.get(uri)
        view = {
            "uri": uri,
            "name": managed.name if managed else (stored or {}).get("name", ""),
            "type": managed.device_type if managed else (stored or {}).get("type", ""),
            "online": a.online.get(uri),
            "last_seen": (stored or {}).get("last_seen"),
            "last_readings": (stored or {}).get("last_readings", {}),
            "primary": (stored or {}).get("primary"),
            "attached": uri in a.connector.attached,
            "quarantined": uri in a.connector.quarantined,
        }
        if uri in a.connector.quarantined:
            view["quarantine_reason"] = a.connector.quarantined[uri]
        return view

    async def devices(self, request: web.Request) -> web.Response:
        stored = {row["uri"]: row for row in self.adapter.history.devices()}
        uris = sorted(set(stored) | set(self.adapter.connector.devices) | set(self.adapter.online))
        return web.json_response([self._device_view(uri, stored.get(uri)) for uri in uris])

    def _known(self, uri: str) -> dict[str, Any] | None:
        stored = self.adapter.history.device(uri)
        if stored is None and uri not in self.adapter.connector.devices:
            return None
        return self._device_view(uri, stored)

    async def device(self, request: web.Request) -> web.Response:
        uri = unquote(request.match_info["id"])
        view = self._known(uri)
        if view is None:
            return web.json_response({"error": f"unknown device {uri!r}"}, status=404)
        return web.json_response(view)

    async def average(self, request: web.Request) -> web.Response:
        return average_response(self.adapter.history, request)

    async def healthz(self, request: web.Request) -> web.Response:
        a = self.adapter
        down_for = a.platform_down_for()
        body = {
            "mqtt": "up" if a.mqtt.connected.is_set() else "down",
            "platform": "up" if a.connector.ready else "down",
            "platform_down_for_s": None if down_for is None else round(down_for, 1),
            "platform_last_error": a.connector.last_error or None,
            "outbox_depth": len(a.outbox),
            "dead_letters": a.outbox.dead_letter_count(),
            "devices": len(a.connector.devices),
            "quarantined": sorted(a.connector.quarantined),
        }
        healthy = down_for is None or down_for < PLATFORM_DOWN_LIMIT
        return web.json_response(body, status=200 if healthy else 503)

    async def overview(self, request: web.Request) -> web.Response:
        """Everything the status page's overview shows, in one answer."""
        a = self.adapter
        down_for = a.platform_down_for()
        return web.json_response(
            {
                "mqtt": {
                    "up": a.mqtt.connected.is_set(),
                    "client_id": a.mqtt.client_id,
                    ("up_for_s" if a.mqtt.connected.is_set() else "down_for_s"): round(
                        time.monotonic() - a.mqtt.changed_at, 1
                    ),
                },
                "platform": {
                    "up": a.connector.ready,
                    "down_for_s": None if down_for is None else round(down_for, 1),
                    "up_for_s": a.platform_up_for(),
                    "gateway": a.connector.gid or None,
                    "last_error": a.connector.last_error or None,
                },
                "outbox_depth": len(a.outbox),
                "oldest_waiting_s": a.oldest_waiting(),
                "dead_letters": a.outbox.dead_letter_count(),
                "quarantined": a.connector.quarantined,
                "devices": len(a.connector.devices),
                "counts": a.counts,
                "unmapped_topics": [
                    {"topic": topic, "count": count}
                    for topic, count in a.unmapped_topics.most_common(10)
                ],
            }
        )

    async def explain(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            topic, payload = body["topic"], body.get("payload", "")
            if not isinstance(topic, str) or not topic or not isinstance(payload, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": 'body must be JSON {"topic": text, "payload": text}'}, status=400
            )
        return web.json_response(
            explain_result(self.adapter.mappings, topic, payload.encode("utf-8"))
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def average_response(history: Any, request: web.Request) -> web.Response:
    """`GET /devices/{id}/average` (D9), shared by the adapter's API and the sandbox."""
    uri = unquote(request.match_info["id"])
    try:
        query = parse_query(request.query)
        rows = history.average(uri, query, time.time())
    except QueryError as exc:
        return web.json_response(exc.as_json(), status=400)
    except UnknownDevice:
        return web.json_response({"error": f"unknown device {uri!r}"}, status=404)
    return web.json_response(rows)
