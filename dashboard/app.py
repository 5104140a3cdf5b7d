"""The web dashboard: server-rendered pages under /dashboard, served by the API process.

Pages read through the API's read side (its handlers and api.store) and change things only through
the API's handlers (dashboard.forms), so there is one copy of every rule. Login takes an API key
and keeps a signed session cookie (dashboard.session); every POST carries the session's CSRF token;
a read-only key's session can look but not change (checked once, in `authenticated`).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from api.rate_limit import TokenBuckets, retry_after_header_seconds
from dashboard import session as sessions
from dashboard.formats import FILTERS
from dashboard.forms import CSRF_FIELD, FormResult
from drawdown.settings import Settings

PREFIX = "/dashboard"
HERE = Path(__file__).parent
LOGIN_CSRF_COOKIE = "drawdown_login_csrf"
FAILED_LOGINS_PER_MINUTE = 10  # per client address and API process, with a burst of as many
# No inline script or style, nothing from another origin (every asset is served from /dashboard/static).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(FILTERS)
templates.env.globals["blank_form"] = FormResult
templates.env.filters["map_pairs"] = lambda rows, value, text: [(row[value], row[text]) for row in rows]
templates.env.globals["clock_options"] = lambda clocks: [
    (clock["id"], f"{clock['name'] or clock['id']} (at {FILTERS['when'](clock['frozen_time'])})") for clock in clocks]


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class DashboardState:
    secret: bytes
    # Failed logins per client address (per API process): brute-forcing a key is refused early.
    failed_logins: TokenBuckets = field(
        default_factory=lambda: TokenBuckets(FAILED_LOGINS_PER_MINUTE / 60, FAILED_LOGINS_PER_MINUTE))


def now_s() -> int:
    return int(time.time())


def with_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = getattr(request.state, "session", None)
    response = templates.TemplateResponse(request, template, {"session": session, "prefix": PREFIX, **context},
                                          status_code=status)
    return with_security_headers(response)


def redirect(url: str) -> Response:
    return with_security_headers(RedirectResponse(url, status_code=303))


def set_session_cookie(response: Response, value: str, max_age_s: int) -> None:
    # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it (with the CSRF
    # token, a forged form cannot act). Not Secure: the API serves plain HTTP on localhost; put TLS in
    # front of it (and set secure) when it is served to other machines.
    response.set_cookie(sessions.COOKIE_NAME, value, max_age=max_age_s, path=PREFIX, httponly=True, samesite="strict")


async def authenticated(request: Request) -> sessions.Session:
    """Every page but the login: a valid session of a key that is not revoked. A POST must carry the
    session's CSRF token and come from a key that may write; its form body is kept for the handler."""
    state: DashboardState = request.app.state.dashboard
    session = sessions.decode(request.cookies.get(sessions.COOKIE_NAME), state.secret, now_s())
    if session is None:
        raise LoginRequired()
    caller = await run_in_threadpool(request.app.state.ctx.keys.caller_by_sha256, session.key_sha256, True)
    if caller is None:  # revoked since the login
        raise LoginRequired()
    request.state.session = session
    if request.method != "GET":
        body = (await request.body()).decode("utf-8", errors="replace")
        submitted = dict(parse_qsl(body)).get(CSRF_FIELD) or request.headers.get("x-csrf-token")
        if not sessions.csrf_matches(session, submitted):
            raise Forbidden("The form has expired or did not come from this dashboard: reload the page and try again.")
        if caller.read_only or session.read_only:
            raise Forbidden(f"The key {session.key_prefix}... is a read-only restricted key: it can look but not change.")
        request.state.form_body = body
    return session


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard from `app` under /dashboard."""
    from dashboard.pages import router

    app.state.dashboard = DashboardState(secret=sessions.session_secret(settings))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
    app.include_router(router, prefix=PREFIX, include_in_schema=False)
    app.include_router(_login_router(), prefix=PREFIX, include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, error: LoginRequired) -> Response:
        target = f"{PREFIX}/login?next={quote(request.url.path)}"
        if request.headers.get("hx-request"):  # a partial update: send the whole page to the login
            return with_security_headers(Response(status_code=200, headers={"hx-redirect": target}))
        return redirect(target)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden) -> Response:
        return render(request, "forbidden.html", status=403, message=error.message)


def _login_router() -> Any:
    from fastapi import APIRouter

    from api.auth import key_prefix

    router = APIRouter()

    def login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
        token = secrets.token_urlsafe(24)  # double-submit: a login form of another site cannot know it
        response = render(request, "login.html", status=status, error=error, login_csrf=token,
                          next=_safe_next(request.query_params.get("next")))
        response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path=PREFIX, httponly=True, samesite="strict")
        return response

    @router.get("/login")
    def show_login(request: Request) -> Response:
        return login_page(request)

    @router.post("/login")
    async def log_in(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", errors="replace")))
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not expected or not secrets.compare_digest(expected, form.get(CSRF_FIELD, "")):
            return login_page(request, "The login form has expired: try again.", 403)
        failed_logins = request.app.state.dashboard.failed_logins
        client = request.client.host if request.client else "unknown"
        wait_s = failed_logins.wait(client)
        if wait_s > 0:  # (the right key too: a guesser must not learn that it guessed right)
            return login_page(request, f"Too many failed logins from your address: try again in "
                                       f"{retry_after_header_seconds(wait_s)} s.", 429)
        key = form.get("api_key", "").strip()
        caller = await run_in_threadpool(request.app.state.ctx.keys.caller, key) if key else None
        if caller is None:
            failed_logins.take(client)
            # The API's own words for a bad key (api.app: "Invalid API Key provided").
            message = (f"Invalid API Key provided: {key[:8]}{'*' * 8}" if key else
                       "You did not provide an API key.")
            return login_page(request, message, 401)
        session = sessions.new_session(caller.key_sha256, key_prefix(key), caller.read_only, now_s())
        response = redirect(_safe_next(form.get("next")))
        set_session_cookie(response, sessions.encode(session, request.app.state.dashboard.secret),
                           sessions.SESSION_MAX_AGE_S)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
        return response

    @router.post("/logout")
    def log_out(request: Request) -> Response:
        response = redirect(f"{PREFIX}/login")
        response.delete_cookie(sessions.COOKIE_NAME, path=PREFIX)
        return response

    return router


def _safe_next(target: str | None) -> str:
    """Only a dashboard path (never another site) after the login."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target \
            and not target.startswith(f"{PREFIX}/login"):
        return target
    return f"{PREFIX}/customers"
