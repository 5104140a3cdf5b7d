"""The dashboard's session cookie, its amounts and its forms, without services."""

from __future__ import annotations

from api.errors import invalid
from dashboard import session as sessions
from dashboard.formats import money, parse_datetime_local, unit_price, when
from dashboard.forms import run_form

SECRET = b"s" * 32
NOW_S = 1_767_225_600


def a_session() -> sessions.Session:
    return sessions.new_session("ab" * 32, "sk_test_abcd", read_only=True, now_s=NOW_S)


def test_a_session_cookie_reads_back_as_it_was_written():
    session = a_session()
    assert sessions.decode(sessions.encode(session, SECRET), SECRET, NOW_S + 1) == session


def test_a_session_cookie_changed_by_the_client_or_signed_with_another_secret_is_refused():
    cookie = sessions.encode(a_session(), SECRET)
    payload, signature = cookie.split(".")
    forged_payload = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    assert sessions.decode(f"{forged_payload}.{signature}", SECRET, NOW_S) is None
    assert sessions.decode(cookie, b"t" * 32, NOW_S) is None
    assert sessions.decode("not a cookie", SECRET, NOW_S) is None


def test_a_session_ends_after_its_max_age():
    cookie = sessions.encode(a_session(), SECRET)
    assert sessions.decode(cookie, SECRET, NOW_S + sessions.SESSION_MAX_AGE_S) is None


def test_the_csrf_token_must_match_the_sessions_own():
    session = a_session()
    assert sessions.csrf_matches(session, session.csrf_token)
    assert not sessions.csrf_matches(session, session.csrf_token + "x")
    assert not sessions.csrf_matches(session, None)


def test_amounts_show_in_major_units_with_the_currency_symbol_exactly():
    assert money(9000, "usd") == "$90.00"
    assert money(-1000, "usd") == "-$10.00"
    assert money(123456789, "usd") == "$1,234,567.89"
    assert money(500, "jpy") == "¥500"
    assert money(1234, "kwd") == "1.234 KWD"
    assert unit_price("3", "usd") == "$0.03"
    assert unit_price("0.0125", "usd") == "$0.000125"


def test_times_show_and_parse_as_utc():
    assert when(NOW_S) == "2026-01-01 00:00 UTC"
    assert parse_datetime_local("2026-01-01T00:00") == NOW_S


def test_a_form_runs_the_handler_on_the_apis_parameter_tree_without_its_blank_fields():
    seen = {}

    def handler(ctx, params):
        seen["value"] = params.int("amount", required=False)
        seen["currency"] = params.object("money").str("currency")
        params.done()
        return {"id": "x"}

    result = run_form("csrf_token=t&amount=&money%5Bcurrency%5D=usd", handler, ctx=None)
    assert result.ok and result.answer == {"id": "x"}
    assert seen == {"value": None, "currency": "usd"}


def test_a_form_error_names_the_field_with_the_apis_message():
    def handler(ctx, params):
        raise invalid("amount[monetary][value]", "amount[monetary][value] must be at least 1")

    result = run_form("amount%5Bmonetary%5D%5Bvalue%5D=0", handler, ctx=None)
    assert result.errors == {"amount[monetary][value]": "amount[monetary][value] must be at least 1"}
    assert result.values == {"amount[monetary][value]": "0"}
    assert result.error_for("amount[monetary][value]") and result.unshown_errors() == []


def test_a_datetime_field_reaches_the_api_as_unix_seconds_and_a_bad_one_is_an_error_on_that_field():
    result = run_form("frozen_time=2026-01-01T00%3A00", lambda ctx, params: params.int("frozen_time"), ctx=None,
                      datetime_fields=("frozen_time",))
    assert result.answer == NOW_S
    failed = run_form("frozen_time=tomorrow", lambda ctx, params: None, ctx=None, datetime_fields=("frozen_time",))
    assert list(failed.errors) == ["frozen_time"]
