"""API errors in Stripe's shape: {"error": {"type", "code", "message", "param"}} with an HTTP status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Root of every error the API answers with. Rendered by api.app as Stripe's error object."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers  # extra response headers, e.g. Retry-After on a 429

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def invalid(param: str, message: str, code: str = "parameter_invalid") -> ApiError:
    """A parameter whose value is not acceptable."""
    return ApiError(message, code=code, param=param)


def missing(param: str) -> ApiError:
    return ApiError(f"Missing required param: {param}.", code="parameter_missing", param=param)


def unknown(param: str) -> ApiError:
    return ApiError(f"Received unknown parameter: {param}", code="parameter_unknown", param=param)


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(f"No such {kind}: '{object_id}'", status=404, code="resource_missing", param=param)


def conflict(message: str, code: str, param: str | None = None) -> ApiError:
    """A command the current state refuses (e.g. voiding an applied grant)."""
    return ApiError(message, code=code, param=param)


def unauthorized(message: str) -> ApiError:
    return ApiError(message, status=401, code="api_key_invalid" if "Invalid" in message else "api_key_missing")


def too_large(limit_bytes: int) -> ApiError:
    return ApiError(f"The request body is larger than {limit_bytes} bytes.", status=413, code="request_too_large")


def rate_limited(retry_after_s: int) -> ApiError:
    """Stripe's answer to a key that sends too fast: 429, code rate_limit; safe to retry later."""
    return ApiError("Too many requests hit the API too quickly: slow down and retry after a moment.",
                    status=429, code="rate_limit", headers=((b"retry-after", str(retry_after_s).encode()),))
