"""The Stripe-compatible HTTP API (FastAPI): conventions layer and application factory.

Every endpoint is a plain function `handler(ctx, params, **path) -> dict` run in the thread pool;
api.routing's `route()` wraps it with Stripe's parameter parsing (form brackets or JSON) and error shape.
Auth (Bearer secret key) and Idempotency-Key replay are one middleware around all of /v1 and /v2.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections import defaultdict
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from api import idempotency, publisher
from api.errors import ApiError, rate_limited, too_large, unauthorized
from api.expand import expand, expand_paths
from api.params import request_params
from api.rate_limit import TokenBuckets, retry_after_header_seconds
from api.routing import DIRECT_GETS, Handler, database_unavailable, error_response, json_bytes, json_response
from drawdown.settings import Settings

log = logging.getLogger("drawdown.api")
HEALTH_DATABASE_TIMEOUT_S = 2.0
OPEN_PATHS = ("/healthz", "/metrics", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect")

class Metrics:
    """Request counters and latency sums in Prometheus text format. Per API process: with several
    (Settings.api_processes) a scrape reads the counters of the one that answers it."""

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

    @app.exception_handler(psycopg.OperationalError)  # PoolTimeout is one too
    async def database_error(request: Request, error: psycopg.OperationalError) -> Response:
        return error_response(database_unavailable(error))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError("An internal error occurred.", status=500, type="api_error"))

    app.add_middleware(Conventions, metrics=metrics, settings=settings)

    @app.get("/healthz", include_in_schema=True, summary="Database reachability and engine processes")
    def healthz(request: Request) -> Response:
        """200 {"status": "ok"}, or 503 {"status": "unhealthy", "reason": ...} while the database does
        not answer or a process of the stack this API belongs to is crash-looping (deploy/supervisor.py)."""
        from deploy.supervisor import crash_loops

        ctx = request.app.state.ctx
        reasons = []
        try:
            with ctx.pool.connection(timeout=HEALTH_DATABASE_TIMEOUT_S) as conn:
                conn.execute("select 1")
        except psycopg.OperationalError as error:
            reasons.append(f"database unavailable: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
        reasons += crash_loops(ctx.settings)
        if reasons:
            return json_response({"status": "unhealthy", "reason": "; ".join(reasons)}, 503)
        return json_response({"status": "ok"})

    @app.get("/metrics", include_in_schema=True, summary="Prometheus metrics")
    def prometheus(request: Request) -> Response:
        from api.routes.dead_letters import metrics_lines

        text = metrics.render() + "".join(line + "\n" for line in metrics_lines(request.app.state.ctx.pool))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    for router in all_routers():
        app.include_router(router)
    from dashboard.app import mount

    mount(app, settings)  # the web dashboard under /dashboard: same process, same handlers
    return app


def new_request_id() -> bytes:
    """req_ + 14 alphanumerics, as Stripe's request ids look (random: a request id identifies, it proves nothing)."""
    return b"req_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(14)).encode()


_ALPHANUMERIC = string.ascii_letters + string.digits


class Conventions:
    """Pure ASGI middleware (no per-request task group, unlike @app.middleware): the Request-Id
    header, the request body limit, Bearer-key auth, read-only keys limited to GET, the per-key rate limit, Idempotency-Key
    claim/replay, and request metrics."""

    def __init__(self, app: Any, metrics: Metrics, settings: Settings) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = settings.max_request_body_bytes
        self.rate_limit = (TokenBuckets.share(settings.rate_limit_per_second, settings.rate_limit_burst,
                                              settings.api_processes)
                           if settings.rate_limit_per_second > 0 else None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        request_id = new_request_id()

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                # Stripe's Request-Id on every answer (errors and replays too): what a user quotes to find a request
                message = {**message, "headers": [*message.get("headers", ()), (b"request-id", request_id)]}
            await send(message)

        idempotency_key = _header(scope, b"idempotency-key")
        bound = publisher.bind_request(request_id, None if idempotency_key is None else idempotency_key.encode())
        try:
            declared = _header(scope, b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                raise too_large(self.max_body_bytes)
            await self._handle(scope, _bounded(receive, self.max_body_bytes), send_and_note)
        except ApiError as error:
            await _send_response(send_and_note, error.status, json_bytes(error.body()), list(error.headers))
        except psycopg.OperationalError as error:  # key lookup or Idempotency-Key claim: before any answer
            unavailable = database_unavailable(error)
            await _send_response(send_and_note, unavailable.status, json_bytes(unavailable.body()))
        finally:
            publisher.unbind_request(bound)
            route_path = scope.get("direct_path") or getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route_path, status[0], time.perf_counter() - started)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        if path in OPEN_PATHS or not (path.startswith("/v1/") or path.startswith("/v2/")):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        ctx = scope["app"].state.ctx
        key = _bearer_key(headers)
        caller = ctx.keys.cached(key)
        if caller is None:
            caller = await run_in_threadpool(ctx.keys.caller, key)
        if caller is None:
            raise unauthorized(f"Invalid API Key provided: {key[:8]}{'*' * 8}")
        if caller.session_expires_ms is not None:
            _check_session(caller, path)
        scope["drawdown.caller"] = caller  # for handlers that act as the key (a meter event session)
        if caller.read_only and method != "GET":
            raise ApiError(f"The provided key '{key[:8]}{'*' * 8}' is a read-only restricted key: it can only GET.",
                           status=403, type="invalid_request_error", code="secret_key_required")
        if self.rate_limit is not None:
            wait_s = self.rate_limit.take(caller.key_sha256)
            if wait_s > 0:  # before the Idempotency-Key is claimed: a 429 is never stored, a retry is safe
                raise rate_limited(retry_after_header_seconds(wait_s))
        if method == "GET" and path in DIRECT_GETS and _utf8(scope.get("query_string", b"")):
            await self._answer_directly(DIRECT_GETS[path], ctx, scope, send)
            return
        idempotency_key = headers.get("idempotency-key")
        if idempotency_key is None or method not in ("POST", "DELETE"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        fingerprint = idempotency.request_sha256(method, path, query, body)
        held = await run_in_threadpool(idempotency.claim, ctx.pool, caller.key_sha256, idempotency_key, fingerprint,
                                       ctx.settings.idempotency_lease_ms)
        if isinstance(held, idempotency.StoredResponse):
            await _send_response(send, held.status_code, held.body,
                                 [(b"idempotent-replayed", b"true"), (b"idempotency-key", idempotency_key.encode())])
            return
        replayed = False

        async def receive_body() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        response: dict[str, Any] = {"status": 500, "headers": [], "body": []}

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response["status"], response["headers"] = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                response["body"].append(message.get("body", b""))

        token = idempotency.bind(held)
        try:
            await self.app(scope, receive_body, capture)
        except BaseException:
            await run_in_threadpool(idempotency.complete, ctx.pool, held, 500, b"")
            raise
        finally:
            idempotency.unbind(token)
        response_body = b"".join(response["body"])
        await run_in_threadpool(idempotency.complete, ctx.pool, held, response["status"], response_body)
        extra = [(name, value) for name, value in response["headers"] if name.lower() != b"content-length"]
        if response["status"] >= 500 and (held.published or held.resumed):
            # The command may have taken effect: tell the SDKs that a retry with this key is safe.
            extra.append((b"stripe-should-retry", b"true"))
        await _send_response(send, response["status"], response_body,
                             extra + [(b"idempotency-key", idempotency_key.encode())])


    @staticmethod
    async def _answer_directly(handler: Handler, ctx: Any, scope: dict[str, Any], send: Any) -> None:
        """A plain GET (DIRECT_GETS): its handler in the thread pool, as route()'s endpoint would run
        it, without the router. ApiError and OperationalError are answered by __call__."""
        scope["direct_path"] = path = scope["path"]
        query = scope.get("query_string", b"").decode()  # as Starlette's request.url.query does

        def parse_and_handle() -> Any:
            params = request_params("GET", path, {}, query, b"", "")
            paths = expand_paths(params)
            answer = handler(ctx, params)
            return expand(ctx, answer, paths) if paths else answer

        try:
            result = await run_in_threadpool(parse_and_handle)
        except (ApiError, psycopg.OperationalError):
            raise
        except Exception:  # as the app's server_error handler answers it
            log.exception("unhandled error on GET %s", path)
            raise ApiError("An internal error occurred.", status=500, type="api_error") from None
        await _send_response(send, 200, json_bytes(result))


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:  # left to the router, which answers it as it always has
        return False


METER_EVENT_STREAM_PATH = "/v2/billing/meter_event_stream"


def _check_session(caller: Any, path: str) -> None:
    """A meter event session's token authenticates the v2 meter event stream only, until it expires."""
    if path != METER_EVENT_STREAM_PATH:
        raise ApiError(f"A meter event session token authenticates only POST {METER_EVENT_STREAM_PATH};"
                       " use a secret key.", status=401, code="api_key_invalid")
    if time.time() * 1000 >= caller.session_expires_ms:
        raise ApiError("The meter event session has expired: create a new one with POST"
                       " /v2/billing/meter_event_session.", status=401, type="temporary_session_expired",
                       code="billing_meter_event_session_expired")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for header_name, value in scope.get("headers", ()):
        if header_name.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _bounded(receive: Any, limit_bytes: int) -> Any:
    """`receive` that counts the body's bytes as they stream in and refuses past `limit_bytes` (a
    chunked body has no Content-Length to check up front)."""
    seen = 0

    async def receive_bounded() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit_bytes:
                raise too_large(limit_bytes)
        return message

    return receive_bounded


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_response(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    names = {name.lower() for name, _ in headers or []}
    all_headers = list(headers or [])
    if b"content-type" not in names:
        all_headers.append((b"content-type", b"application/json"))
    all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def _bearer_key(headers: dict[str, str]) -> str:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
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
