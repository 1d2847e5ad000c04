"""The adapter's local HTTP API: devices, the average query, health, metrics and the status
page, served by adapter/httpserver.py."""

from __future__ import annotations

import hmac
import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from adapter import httpserver
from adapter.history import average_answer
from adapter.httpserver import Request, Response, Router, error_response, json_response
from adapter.mapping.report import explain_result
from adapter.web import TOKEN_COOKIE, Answer, assets, cookie_authorization, login_answer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from adapter.app import Adapter

log = logging.getLogger("adapter.api")

PLATFORM_DOWN_LIMIT = 60.0  # /healthz answers 503 once the platform link is down this long
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)


class Latency:
    """Event latencies, counted into the histogram's buckets as they come."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le`: bound included
        self.sum += seconds

    def family(self) -> Metric:
        """What prometheus_client's Histogram with these buckets would expose."""
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        cumulative, buckets = 0, []
        for bound, count in zip([*LATENCY_BUCKETS, float("inf")], self.counts, strict=True):
            cumulative += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            buckets.append((le, float(cumulative)))
        return HistogramMetricFamily(
            "sepl_adapter_event_latency_seconds",
            "From MQTT receive to the platform's acknowledgement",
            buckets=buckets,
            sum_value=self.sum,
        )


class Metrics:
    """Reads the adapter's counters at scrape time, so nothing is counted twice.

    prometheus_client is imported at the first scrape: 1.2 MB that an adapter nobody
    scrapes does without."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.latency = Latency()
        self._registry: CollectorRegistry | None = None

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry()
            self._registry.register(self)
        return generate_latest(self._registry)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
                1.0 if a.mqtt.connected else 0.0,
            ),
            "devices": ("devices the gateway manages", len(a.connector.devices)),
        }
        for name, (text, value) in gauges.items():
            gauge = GaugeMetricFamily(f"sepl_adapter_{name}", text)
            gauge.add_metric([], float(value))
            yield gauge
        yield self.latency.family()


class Api:
    def __init__(self, adapter: Adapter, token: str | None = None) -> None:
        self.adapter = adapter
        self.token = token
        self.metrics = Metrics(adapter)
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
        """Every request: the token check, then the status page's files or the routes.

        A page file may be loaded with the token's cookie instead of the header (see
        adapter/web); a refused page load gets the login form."""
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

    async def serve(self, host: str, port: int) -> None:
        def ready(bound: int) -> None:
            log.info("local API on http://%s:%d (/devices, /healthz, /metrics)", host, bound)

        try:
            await httpserver.serve(self.handle, host, port, ready=ready)
        except OSError as exc:
            log.error("local API not started: cannot listen on %s:%d: %s", host, port, exc)

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

    async def devices(self, request: Request) -> Response:
        stored = {row["uri"]: row for row in self.adapter.history.devices()}
        uris = sorted(set(stored) | set(self.adapter.connector.devices) | set(self.adapter.online))
        return json_response([self._device_view(uri, stored.get(uri)) for uri in uris])

    def _known(self, uri: str) -> dict[str, Any] | None:
        stored = self.adapter.history.device(uri)
        if stored is None and uri not in self.adapter.connector.devices:
            return None
        return self._device_view(uri, stored)

    async def device(self, request: Request) -> Response:
        uri = request.params["id"]
        view = self._known(uri)
        if view is None:
            return json_response({"error": f"unknown device {uri!r}"}, status=404)
        return json_response(view)

    async def average(self, request: Request) -> Response:
        status, body = average_answer(
            self.adapter.history, request.params["id"], request.query, time.time()
        )
        return json_response(body, status)

    async def healthz(self, request: Request) -> Response:
        a = self.adapter
        down_for = a.platform_down_for()
        body = {
            "mqtt": "up" if a.mqtt.connected else "down",
            "platform": "up" if a.connector.ready else "down",
            "platform_down_for_s": None if down_for is None else round(down_for, 1),
            "platform_last_error": a.connector.last_error or None,
            "outbox_depth": len(a.outbox),
            "dead_letters": a.outbox.dead_letter_count(),
            "devices": len(a.connector.devices),
            "quarantined": sorted(a.connector.quarantined),
        }
        healthy = down_for is None or down_for < PLATFORM_DOWN_LIMIT
        return json_response(body, status=200 if healthy else 503)

    async def overview(self, request: Request) -> Response:
        """Everything the status page's overview shows, in one answer."""
        a = self.adapter
        down_for = a.platform_down_for()
        return json_response(
            {
                "mqtt": {
                    "up": a.mqtt.connected,
                    "client_id": a.mqtt.client_id,
                    ("up_for_s" if a.mqtt.connected else "down_for_s"): round(
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
        return json_response(explain_result(self.adapter.mappings, topic, payload.encode("utf-8")))

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
