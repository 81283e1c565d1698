"""Errors as RFC 9457 problem details (``application/problem+json``), for every error the API answers.

``type`` is a URI naming the kind of problem (``https://fleet-enrich.dev/problems/<slug>``), ``title`` its
fixed summary, ``status`` the HTTP status, ``detail`` what went wrong with this request, ``instance`` the
request path. Validation errors add ``errors`` (field path and message per problem, never the rejected
input itself: a 5,000-digit id is not echoed back). Unexpected errors answer a plain 500 problem; the
stack trace goes to the log, not to the client.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
BASE = "https://fleet-enrich.dev/problems/"
TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}
MAX_ERRORS = 20


class Problem(Exception):  # noqa: N818 (it is the answer, not an error of ours)
    """Raise to answer a problem; ``extra`` members are added to the body."""

    def __init__(
        self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra


def problem_response(
    status: int, detail: str, instance: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    slug, title = TITLES.get(status, ("error", "Error"))
    body = {
        "type": BASE + slug,
        "title": title,
        "status": status,
        "detail": detail[:500],
        "instance": instance[:200],
        **extra,
    }
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc(loc: Any) -> str:
    return ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else str(loc)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, request.url.path, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, ("", "Error"))[1]
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of every route on this path, not just the first route's
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods))
        return problem_response(exc.status_code, detail, request.url.path, headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": _loc(e.get("loc", ())), "message": str(e.get("msg", ""))[:200]}
            for e in exc.errors()[:MAX_ERRORS]
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
        return problem_response(422, detail, request.url.path, errors=errors)

    @app.exception_handler(RedisError)
    async def on_redis(request: Request, exc: RedisError) -> Response:
        log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, "the state store is unavailable; retry shortly", request.url.path,
                                {"Retry-After": "1"})  # fmt: skip

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "the server could not answer this request", request.url.path)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def problem(status: int, description: str, example_detail: str) -> dict[str, Any]:
    """OpenAPI ``responses`` entry of a problem answer."""
    slug, title = TITLES[status]
    example = {
        "type": BASE + slug,
        "title": title,
        "status": status,
        "detail": example_detail,
        "instance": "/v1/vehicles/1042",
    }
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}},
    }


COMMON: dict[int | str, dict[str, Any]] = {
    401: problem(
        401, "No valid API key (missing, malformed, unknown, revoked or expired)", "no valid API key"
    ),
    422: problem(422, "A parameter or the body is out of bounds or malformed", "query.limit: must be <= 500"),
}
