"""The webhook dispatcher (`drawdown webhooks`): events -> signed POSTs to the registered endpoints.

Two steps, each its own short transaction, so a kill -9 anywhere loses nothing:
1. schedule: for each enabled endpoint, read the events after its cursor (event seq, handed out in
   commit order: events.lock_event_order), make a delivery row for each one the endpoint asked
   for, and move the cursor, together.
2. deliver: claim due deliveries (a lease: a dispatcher killed mid-POST leaves them due again once
   it expires), POST each signed as Stripe signs (`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256
   of "t.payload" keyed with the endpoint's whsec_ secret>`), then record each attempt. A 2xx is
   delivered; anything else is retried with exponential backoff until the retry window (3 days by
   default) has passed since the first attempt. So delivery is at least once: receivers dedupe by
   event id, as Stripe asks of them.
An endpoint with no 2xx answer for `webhook_disable_after_seconds` is disabled, and a
`webhook_endpoint.disabled` event (drawdown's own) says so. Only URLs an operator registered
through /v1/webhook_endpoints are ever called.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from drawdown.settings import Settings
from projections.events import WEBHOOK_ENDPOINT_DISABLED, event_id, event_object, insert_event, lock_event_order
from projections.migrate import migrate
from projections.projector import connect
from projections.retention import RETENTION_INTERVAL_S, purge

log = logging.getLogger("drawdown.webhooks")

SCHEDULE_BATCH = 1000  # events read per endpoint per pass
DELIVER_BATCH = 200  # deliveries claimed per pass
IDLE_WAIT_S = 0.05
MAX_ERROR_TEXT = 500
# The cursor a new (or re-enabled) endpoint starts from: every event already committed is behind it.
CURSOR_AT_HEAD = "(select coalesce(max(seq), 0) from events)"


def sign(payload: bytes, secret: str, timestamp_s: int) -> str:
    """The Stripe-Signature header value for `payload` (what stripe.Webhook.construct_event checks)."""
    signed = f"{timestamp_s}.".encode() + payload
    return f"t={timestamp_s},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def delivery_id(endpoint_id: str, event_id_: str) -> str:
    return "whdel_" + hashlib.sha256(f"{endpoint_id}\x1f{event_id_}".encode()).hexdigest()[:24]


def matches(enabled_events: list[str], event_type: str) -> bool:
    return "*" in enabled_events or event_type in enabled_events


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff: first_s, 2 first_s, 4 first_s ... at most max_s apart, for window_s."""

    first_s: float
    max_s: float
    window_s: float

    def delay_s(self, failed_attempts: int) -> float:
        return min(self.first_s * 2 ** (failed_attempts - 1), self.max_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(settings.webhook_retry_first_seconds, settings.webhook_retry_max_seconds,
                   settings.webhook_retry_window_seconds)


@dataclass
class Attempt:
    delivery_id: str
    endpoint_id: str
    event_id: str
    attempted_ms: int
    duration_ms: int
    status_code: int | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery (as at Stripe), never a call to a URL nobody registered."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def post(url: str, payload: bytes, signature: str, timeout_s: float) -> tuple[int | None, str | None]:
    """(HTTP status or None, error text or None) of one signed POST."""
    request = urllib.request.Request(url, data=payload, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "Stripe-Signature": signature,
        "User-Agent": "drawdown-webhooks/1 (+Stripe-compatible)"})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read(64 * 1024)
            return response.status, None
    except urllib.error.HTTPError as answer:
        return answer.code, None
    except Exception as error:  # noqa: BLE001 - refused, reset, timeout, bad TLS: all a failed attempt
        return None, f"{type(error).__name__}: {error}"[:MAX_ERROR_TEXT]


class Dispatcher:
    def __init__(self, settings: Settings, schema: str = "public") -> None:
        self.settings = settings
        self.schema = schema
        self.retry = RetrySchedule.from_settings(settings)
        self.timeout_s = settings.webhook_timeout_seconds
        self.lease_ms = int(settings.webhook_lease_seconds * 1000)
        self.disable_after_ms = int(settings.webhook_disable_after_seconds * 1000)
        self._pool = ThreadPoolExecutor(max_workers=settings.webhook_concurrency, thread_name_prefix="webhook-post")
        self._conn: psycopg.Connection | None = None
        self.delivered = 0
        self._next_purge_s = 0.0  # (the first loop purges)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            migrate(self.settings.effective_database_url, self.schema)
            self._conn = connect(self.settings.effective_database_url, self.schema, row_factory=dict_row)
        return self._conn

    def run(self, stop: threading.Event) -> None:
        retry_s = 0.0
        try:
            while not stop.is_set():
                try:
                    busy = self.schedule() + self.deliver_due()
                    self._purge_when_due()
                    retry_s = 0.0
                except psycopg.OperationalError as error:
                    self._conn = None
                    retry_s = min(max(retry_s * 2, 0.5), 5.0)
                    log.warning("database unavailable (%s); retrying in %.1f s", str(error).splitlines()[0], retry_s)
                    stop.wait(retry_s)
                    continue
                if not busy:
                    stop.wait(IDLE_WAIT_S)
        finally:
            self._pool.shutdown(wait=True)
            if self._conn is not None:
                self._conn.close()

    def _purge_when_due(self) -> None:
        """PostgreSQL's bookkeeping past its retention (projections/retention.py), hourly."""
        if time.monotonic() < self._next_purge_s:
            return
        self._next_purge_s = time.monotonic() + RETENTION_INTERVAL_S
        with connect(self.settings.effective_database_url, self.schema, autocommit=True) as conn:
            purge(conn, now_ms(), self.settings.dead_letter_retention_days, self.settings.usage_bucket_retention_days)

    # --- 1. events -> delivery rows ----------------------------------------------------------

    def schedule(self) -> int:
        """Delivery rows for the events after each enabled endpoint's cursor; returns events read."""
        conn = self._connection()
        read = 0
        with conn.transaction():
            endpoints = conn.execute("select id, enabled_events, cursor_seq from webhook_endpoints"
                                     " where status = 'enabled' for update skip locked").fetchall()
            now = now_ms()
            for endpoint in endpoints:
                rows = conn.execute("select id, type, seq from events where seq > %s order by seq limit %s",
                                    (endpoint["cursor_seq"], SCHEDULE_BATCH)).fetchall()
                if not rows:
                    continue
                read += len(rows)
                wanted = [row["id"] for row in rows if matches(endpoint["enabled_events"], row["type"])]
                if wanted:
                    with conn.cursor() as cursor:
                        cursor.executemany(
                            "insert into webhook_deliveries (id, endpoint_id, event_id, status, next_attempt_ms,"
                            " created_ms) values (%s, %s, %s, 'pending', %s, %s) on conflict do nothing",
                            [(delivery_id(endpoint["id"], event), endpoint["id"], event, now, now) for event in wanted])
                conn.execute("update webhook_endpoints set cursor_seq = %s where id = %s",
                             (rows[-1]["seq"], endpoint["id"]))
        return read

    # --- 2. due deliveries -> POSTs -> attempts ------------------------------------------------

    def deliver_due(self) -> int:
        """Claim, POST and record up to DELIVER_BATCH due deliveries; returns how many were tried."""
        conn = self._connection()
        now = now_ms()
        with conn.transaction():
            claimed = conn.execute(
                "with due as (select d.id from webhook_deliveries d join webhook_endpoints w on w.id = d.endpoint_id"
                "  where d.status = 'pending' and d.next_attempt_ms <= %s and w.status = 'enabled'"
                "  order by d.next_attempt_ms, d.created_ms limit %s for update of d skip locked)"
                " update webhook_deliveries d set next_attempt_ms = %s from due where d.id = due.id"
                " returning d.id, d.endpoint_id, d.event_id",
                (now, DELIVER_BATCH, now + self.lease_ms)).fetchall()
            if not claimed:
                return 0
            endpoints = {row["id"]: row for row in conn.execute(
                "select id, url, secret from webhook_endpoints where id = any(%s)",
                ([row["endpoint_id"] for row in claimed],)).fetchall()}
            bodies = {row["id"]: row["body"].encode() for row in conn.execute(
                "select id, body::text as body from events where id = any(%s)",
                ([row["event_id"] for row in claimed],)).fetchall()}
        attempts = list(self._pool.map(lambda row: self._attempt(row, endpoints[row["endpoint_id"]],
                                                                  bodies[row["event_id"]]), claimed))
        self._record(attempts)
        return len(attempts)

    def _attempt(self, delivery: dict[str, Any], endpoint: dict[str, Any], payload: bytes) -> Attempt:
        started_ms, started = now_ms(), time.monotonic()
        status, error = post(endpoint["url"], payload, sign(payload, endpoint["secret"], int(time.time())),
                             self.timeout_s)
        return Attempt(delivery["id"], delivery["endpoint_id"], delivery["event_id"], started_ms,
                       int((time.monotonic() - started) * 1000), status, error)

    def _record(self, attempts: list[Attempt]) -> None:
        conn = self._connection()
        now = now_ms()
        with conn.transaction():
            with conn.cursor() as cursor:
                cursor.executemany(
                    "insert into webhook_attempts (delivery_id, endpoint_id, event_id, attempted_ms, duration_ms,"
                    " status_code, outcome, error) values (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(a.delivery_id, a.endpoint_id, a.event_id, a.attempted_ms, a.duration_ms, a.status_code,
                      "succeeded" if a.succeeded else "failed", a.error) for a in attempts])
            succeeded = [attempt for attempt in attempts if attempt.succeeded]
            if succeeded:  # one statement each for the whole batch: the common case costs no round trip per POST
                self.delivered += len(succeeded)
                conn.execute("update webhook_deliveries d set status = 'succeeded', attempts = d.attempts + 1,"
                             " first_attempt_ms = coalesce(d.first_attempt_ms, a.attempted_ms), next_attempt_ms = null"
                             " from unnest(%s::text[], %s::bigint[]) as a(id, attempted_ms) where d.id = a.id",
                             ([a.delivery_id for a in succeeded], [a.attempted_ms for a in succeeded]))
                conn.execute("update webhook_endpoints set failing_since_ms = null where id = any(%s)"
                             " and failing_since_ms is not null", (list({a.endpoint_id for a in succeeded}),))
            for attempt in attempts:
                if attempt.succeeded:
                    continue
                row = conn.execute(
                    "update webhook_deliveries set attempts = attempts + 1, first_attempt_ms ="
                    " coalesce(first_attempt_ms, %s) where id = %s returning attempts, first_attempt_ms",
                    (attempt.attempted_ms, attempt.delivery_id)).fetchone()
                if row is None:
                    continue  # its endpoint was deleted meanwhile
                if now - row["first_attempt_ms"] >= self.retry.window_s * 1000:
                    conn.execute("update webhook_deliveries set status = 'failed', next_attempt_ms = null"
                                 " where id = %s", (attempt.delivery_id,))
                else:
                    conn.execute("update webhook_deliveries set next_attempt_ms = %s where id = %s",
                                 (now + int(self.retry.delay_s(row["attempts"]) * 1000), attempt.delivery_id))
                self._failed(conn, attempt.endpoint_id, attempt.attempted_ms, now)

    def _failed(self, conn: psycopg.Connection, endpoint_id: str, attempted_ms: int, now: int) -> None:
        """Note the endpoint failing; disable it (with an event saying so) once it has failed too long."""
        endpoint = conn.execute(
            "update webhook_endpoints set failing_since_ms = coalesce(failing_since_ms, %s) where id = %s"
            " returning *", (attempted_ms, endpoint_id)).fetchone()
        if endpoint is None or endpoint["status"] != "enabled" or \
                now - endpoint["failing_since_ms"] < self.disable_after_ms:
            return
        conn.execute("update webhook_endpoints set status = 'disabled' where id = %s", (endpoint_id,))
        endpoint["status"] = "disabled"
        log.warning("webhook endpoint %s (%s) failed since %d: disabled", endpoint_id, endpoint["url"],
                    endpoint["failing_since_ms"])
        lock_event_order(conn)
        disabled_id = event_id(WEBHOOK_ENDPOINT_DISABLED, endpoint_id, endpoint["failing_since_ms"])
        insert_event(conn, event_object(disabled_id, WEBHOOK_ENDPOINT_DISABLED, now, endpoint_object(endpoint)), now)


def endpoint_object(row: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
    """Stripe's webhook_endpoint object (the secret only on create, as Stripe shows it)."""
    body = {"id": row["id"], "object": "webhook_endpoint", "api_version": row["api_version"], "application": None,
            "created": row["created_ms"] // 1000, "description": row["description"],
            "enabled_events": list(row["enabled_events"]), "livemode": False, "metadata": row["metadata"],
            "status": row["status"], "url": row["url"]}
    if with_secret:
        body["secret"] = row["secret"]
    return body


def now_ms() -> int:
    return int(time.time() * 1000)
