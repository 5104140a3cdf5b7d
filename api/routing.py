"""How a plain handler becomes a Stripe-style endpoint: `route()` (parameter parsing, the
Idempotency-Key's derived ids, the error shape, the OpenAPI entry) and the JSON answers.

Route modules import this, never api.app, so the application factory can import them without a
cycle.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api import idempotency
from api.errors import ApiError
from api.expand import expand, expand_paths
from api.params import Params, request_params

log = logging.getLogger("drawdown.api")

Handler = Callable[..., Any]
# Reads answered without FastAPI's routing (Conventions._answer_directly): GET routes without path
# parameters, by path. Routing one request through FastAPI's ~40 routes cost about as much CPU as
# the read itself; the handler, its parameters, its errors and its JSON are the same either way.
DIRECT_GETS: dict[str, Handler] = {}


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def json_bytes(body: Any) -> bytes:
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json_bytes(body), status_code=status, media_type="application/json")


def error_response(error: ApiError) -> Response:
    response = json_response(error.body(), error.status)
    for name, value in error.headers:
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    return response


def database_unavailable(error: psycopg.OperationalError) -> ApiError:
    """A request the database could not serve (away, restarting, no free connection): a 503 the
    client may retry. The pool replaces broken connections, so it ends when the database is back."""
    log.warning("database unavailable: %s", str(error).splitlines()[0] if str(error) else type(error).__name__)
    return ApiError("The database is unavailable; retry the request in a moment.", status=503, type="api_error")


def route(router: APIRouter, method: str, path: str, handler: Handler, *, summary: str,
          query: dict[str, str] | None = None, form: dict[str, Any] | None = None,
          answers_with: Handler | None = None, creates: str | None = None) -> None:
    """Register `handler(ctx, params, **path_params)` at `method path`, documented for OpenAPI.

    `query` / `form` map parameter names to JSON-schema types (for the OpenAPI document only: the
    handler's Params reads and validates the real request). A command names how a retry that
    resumes it is answered once its first attempt took effect (api.idempotency): `answers_with`
    (its retrieve handler) renders the object with the path's id, or, for a create, the object
    with the id its first attempt derived from the key (`creates`: that id's prefix).
    """

    def parse_and_handle(ctx: Any, request: Request, body: bytes) -> Any:
        # In the thread pool: parsing a large body (up to Settings.max_request_body_bytes) must not
        # hold up the event loop, and it costs no extra thread hop.
        params = request_params(request.method, request.url.path, request.path_params, request.url.query, body,
                                request.headers.get("content-type", ""))
        paths = expand_paths(params)
        answer = handler(ctx, params, **request.path_params)
        return expand(ctx, answer, paths) if paths else answer

    async def endpoint(request: Request) -> Response:
        body = await request.body() if request.method in ("POST", "DELETE", "PUT", "PATCH") else b""
        ctx = request.app.state.ctx
        claim = idempotency.current()
        resumed = answers_with is not None and claim is not None and claim.resumed
        if resumed and creates is not None:  # created already: answer it, publish nothing again
            existing = await _answer_if_present(answers_with, ctx, claim.nth_id(creates))
            if existing is not None:
                return json_response(existing)
        try:
            result = await run_in_threadpool(parse_and_handle, ctx, request, body)
        except ApiError as refused:  # e.g. "already voided": by the first attempt, when resumed
            object_id = request.path_params.get("id") or (claim.first_id if claim else None)
            if not resumed or refused.status >= 500 or object_id is None:
                raise
            result = await _answer_if_present(answers_with, ctx, object_id)
            if result is None:
                raise
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
    if method == "GET" and "{" not in path:
        DIRECT_GETS[path] = handler
    router.add_api_route(path, endpoint, methods=[method], summary=summary, openapi_extra=extra,
                         response_class=JSONResponse)


async def _answer_if_present(retrieve: Handler, ctx: Any, object_id: str) -> Any:
    try:
        return await run_in_threadpool(retrieve, ctx, Params({}), id=object_id)
    except ApiError:
        return None


def _schema(kind: Any) -> dict[str, Any]:
    if isinstance(kind, dict):
        return kind
    return {"type": kind}
