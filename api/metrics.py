"""Prometheus metrics of the API (one registry per app) and the ASGI middleware that records requests."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "enrich_api_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "enrich_api_request_seconds",
            "HTTP request latency (to the response start)",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.decisions = Counter(
            "enrich_api_authz_decisions_total",
            "Access decisions (served from the per-class cache or Cedar)",
            ["action", "result"],
            registry=r,
        )
        self.scanned = Histogram(
            "enrich_api_list_index_entries",
            "Index entries a list request looked at",
            ["kind"],
            buckets=(10, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.sse_clients = Gauge("enrich_api_sse_clients", "Connected server-sent-event clients", registry=r)
        self.sse_dropped = Counter(
            "enrich_api_sse_overflows_total",
            "SSE clients cut off for reading too slowly (they resume with Last-Event-ID)",
            registry=r,
        )
        self.redis_errors = Counter(
            "enrich_api_redis_errors_total", "Requests that failed on Redis", registry=r
        )


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                route: Any = scope.get("route")
                name = getattr(route, "path", "unmatched")
                key = (name, scope["method"], status[0])
                children = self._children.get(key)
                if children is None:
                    children = self._children[key] = (
                        self.metrics.latency.labels(name),
                        self.metrics.requests.labels(name, scope["method"], str(status[0])),
                    )
                children[0].observe(time.perf_counter() - start)
                children[1].inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413 problem (declared length or streamed)."""

    def __init__(self, app: ASGIApp, limit: int = 16_384) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        from api.problems import problem_response

        def too_big() -> Any:
            path = str(scope.get("path", ""))
            return problem_response(413, f"request body over {self.limit} bytes", path)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await too_big()(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLargeError:
            await too_big()(scope, receive, send)


class _TooLargeError(Exception):
    pass
