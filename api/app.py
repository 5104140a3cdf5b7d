"""The Stripe-compatible HTTP API (FastAPI): conventions layer and application factory.

Every endpoint is a plain function `handler(ctx, params, **path) -> dict` run in the thread pool;
`route()` wraps it with Stripe's parameter parsing (form brackets or JSON) and error shape.
Auth (Bearer secret key) and Idempotency-Key replay are one middleware around all of /v1 and /v2.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from api import idempotency
from api.errors import ApiError, unauthorized
from api.params import request_params
from drawdown.settings import Settings

log = logging.getLogger("drawdown.api")

Handler = Callable[..., Any]
OPEN_PATHS = ("/healthz", "/metrics", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect")


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=_json_default, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status)


def route(router: APIRouter, method: str, path: str, handler: Handler, *, summary: str,
          query: dict[str, str] | None = None, form: dict[str, Any] | None = None) -> None:
    """Register `handler(ctx, params, **path_params)` at `method path`, documented for OpenAPI.

    `query` / `form` map parameter names to JSON-schema types (for the OpenAPI document only: the
    handler's Params reads and validates the real request).
    """

    async def endpoint(request: Request) -> Response:
        params = await request_params(request)
        result = await run_in_threadpool(handler, request.app.state.ctx, params, **request.path_params)
        return json_response(result)

    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}
                  for name in re.findall(r"{(\w+)}", path)]
    parameters += [{"name": name, "in": "query", "required": False, "schema": _schema(kind)}
                   for name, kind in (query or {}).items()]
    extra: dict[str, Any] = {"parameters": parameters}
    if form:
        schema = {"type": "object", "properties": {name: _schema(kind) for name, kind in form.items()}}
        extra["requestBody"] = {"content": {"application/x-www-form-urlencoded": {"schema": schema}}}
    endpoint.__name__ = handler.__name__
    router.add_api_route(path, endpoint, methods=[method], summary=summary, openapi_extra=extra,
                         response_class=JSONResponse)


def _schema(kind: Any) -> dict[str, Any]:
    if isinstance(kind, dict):
        return kind
    return {"type": kind}


class Metrics:
    """Request counters and latency sums in Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route_path: str, status: int, elapsed_s: float) -> None:
        self.requests[(method, route_path, status)] += 1
        self.seconds[(method, route_path)] += elapsed_s

    def render(self) -> str:
        lines = ["# HELP drawdown_api_requests_total Requests answered, by route and status.",
                 "# TYPE drawdown_api_requests_total counter"]
        for (method, path, status), count in sorted(self.requests.items()):
            lines.append(f'drawdown_api_requests_total{{method="{method}",route="{path}",status="{status}"}} {count}')
        lines += ["# HELP drawdown_api_request_seconds_total Time spent answering, by route.",
                  "# TYPE drawdown_api_request_seconds_total counter"]
        for (method, path), total in sorted(self.seconds.items()):
            lines.append(f'drawdown_api_request_seconds_total{{method="{method}",route="{path}"}} {total:.6f}')
        return "\n".join(lines) + "\n"


def create_app(settings: Settings, *, schema: str = "public", context: Any = None) -> FastAPI:
    """The API application. `context` (an ApiContext) is built on startup unless given."""
    from contextlib import asynccontextmanager

    from api.routes import all_routers

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        owned = None
        if getattr(app.state, "ctx", None) is None:
            owned = app.state.ctx = build_context(settings, schema)
        yield
        if owned is not None:
            owned.publisher.close()
            owned.pool.close()

    app = FastAPI(title="drawdown", version="0.1.0", lifespan=lifespan,
                  description="Stripe-compatible usage-based billing with prepaid credits.")
    app.state.ctx = context
    metrics = Metrics()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response(error)

    @app.exception_handler(404)
    async def missing_route(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(f"Unrecognized request URL ({request.method}: {request.url.path}).",
                                       status=404, code="resource_missing"))

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(f"Unrecognized request URL ({request.method}: {request.url.path}).",
                                       status=404, code="resource_missing"))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError("An internal error occurred.", status=500, type="api_error"))

    @app.middleware("http")
    async def conventions(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        try:
            response = await _authorize_and_replay(request, call_next)
        except ApiError as error:
            response = error_response(error)
        route_path = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.observe(request.method, route_path, response.status_code, time.perf_counter() - started)
        return response

    @app.get("/healthz", include_in_schema=True, summary="Liveness and database reachability")
    def healthz(request: Request) -> Response:
        ctx = request.app.state.ctx
        with ctx.pool.connection() as conn:
            conn.execute("select 1")
        return json_response({"status": "ok"})

    @app.get("/metrics", include_in_schema=True, summary="Prometheus metrics")
    def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    for router in all_routers():
        app.include_router(router)
    return app


async def _authorize_and_replay(request: Request, call_next: Callable[[Request], Any]) -> Response:
    path = request.url.path
    if path in OPEN_PATHS or not (path.startswith("/v1/") or path.startswith("/v2/")):
        return await call_next(request)
    ctx = request.app.state.ctx
    key = _bearer_key(request)
    caller = await run_in_threadpool(ctx.keys.caller, key)
    if caller is None:
        raise unauthorized(f"Invalid API Key provided: {key[:8]}{'*' * 8}")
    if caller.read_only and request.method != "GET":
        raise ApiError(f"The provided key '{key[:8]}{'*' * 8}' is a read-only restricted key: it can only GET.",
                       status=403, type="invalid_request_error", code="secret_key_required")
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None or request.method not in ("POST", "DELETE"):
        return await call_next(request)
    body = await request.body()
    fingerprint = idempotency.request_sha256(request.method, path, request.url.query, body)
    stored = await run_in_threadpool(idempotency.claim, ctx.pool, caller.key_sha256, idempotency_key, fingerprint)
    if stored is not None:
        return Response(stored.body, status_code=stored.status_code, media_type="application/json",
                        headers={"Idempotent-Replayed": "true", "Idempotency-Key": idempotency_key})
    try:
        response = await call_next(request)
        chunks = [chunk async for chunk in response.body_iterator]
        response_body = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks)
    except BaseException:
        await run_in_threadpool(idempotency.complete, ctx.pool, caller.key_sha256, idempotency_key, 500, b"")
        raise
    await run_in_threadpool(idempotency.complete, ctx.pool, caller.key_sha256, idempotency_key,
                            response.status_code, response_body)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    headers["Idempotency-Key"] = idempotency_key
    return Response(response_body, status_code=response.status_code, headers=headers,
                    media_type=response.media_type)


def _bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme.lower() == "basic" and credentials.strip():  # curl -u sk_...: ; Stripe accepts both
        import base64

        try:
            return base64.b64decode(credentials.strip()).decode().split(":", 1)[0]
        except ValueError:
            pass
    raise unauthorized("You did not provide an API key. Provide it as 'Authorization: Bearer sk_...'.")


def build_context(settings: Settings, schema: str = "public") -> Any:
    from api.auth import KeyRing
    from api.context import ApiContext
    from api.publisher import Publisher
    from api.store import open_pool
    from projections.migrate import migrate

    migrate(settings.effective_database_url, schema)
    pool = open_pool(settings.effective_database_url, schema)
    return ApiContext(settings=settings, pool=pool, publisher=Publisher(settings), keys=KeyRing(pool))
