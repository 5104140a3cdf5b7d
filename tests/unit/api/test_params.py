"""Stripe-style parameters: bracket parsing, typed reads that name the parameter, unknown ones refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import ApiError
from api.objects import decimal_text, number
from api.params import Params, parse_form


def test_brackets_build_the_same_tree_as_json():
    tree = parse_form("amount[monetary][value]=1000&amount[type]=monetary&items[0][price]=p1&items[1][price]=p2")
    assert tree == {"amount": {"monetary": {"value": "1000"}, "type": "monetary"},
                    "items": {"0": {"price": "p1"}, "1": {"price": "p2"}}}
    params = Params(tree)
    assert [item.str("price") for item in params.objects("items")] == ["p1", "p2"]
    assert params.object("amount").object("monetary").int("value") == 1000


def test_empty_brackets_append_to_a_list():
    assert Params(parse_form("expand[]=a&expand[]=b")).list("expand") == ["a", "b"]


def test_a_malformed_parameter_name_is_refused():
    with pytest.raises(ApiError) as error:
        parse_form("amount[monetary=1")
    assert error.value.param == "amount[monetary"


def test_a_value_that_is_also_an_object_is_refused():
    with pytest.raises(ApiError):
        parse_form("amount=1&amount[type]=monetary")


def test_unread_parameters_are_named_with_their_full_bracket_path():
    params = Params(parse_form("amount[monetary][value]=5&amount[monetary][extra]=x"))
    params.object("amount").object("monetary").int("value")
    with pytest.raises(ApiError) as error:
        params.done()
    assert (error.value.param, error.value.code) == ("amount[monetary][extra]", "parameter_unknown")


def test_expand_is_accepted_everywhere():
    Params(parse_form("expand[0]=data.customer")).done()


def test_a_missing_required_parameter_is_named():
    with pytest.raises(ApiError) as error:
        Params({}).str("customer", required=True)
    assert (error.value.param, error.value.code) == ("customer", "parameter_missing")


@pytest.mark.parametrize("text", ["1.5", "ten", "", "1e3", "99999999999999999999"])
def test_integers_must_be_whole_numbers_in_range(text):
    with pytest.raises(ApiError) as error:
        Params({"limit": text}).int("limit", required=True)
    assert error.value.param == "limit"


def test_integers_respect_their_bounds():
    with pytest.raises(ApiError):
        Params({"limit": "101"}).int("limit", maximum=100)
    assert Params({"limit": "100"}).int("limit", maximum=100) == 100


def test_booleans_are_true_or_false_only():
    assert Params({"a": "true", "b": False}).bool("a") is True
    with pytest.raises(ApiError):
        Params({"a": "yes"}).bool("a")


def test_metadata_is_limited_to_short_strings():
    assert Params({"metadata": {"a": "1"}}).metadata() == {"a": "1"}
    with pytest.raises(ApiError):
        Params({"metadata": {"a": "x" * 501}}).metadata()


@given(st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda s: "[" not in s and "]" not in s),
                       st.text(max_size=5), max_size=5))
def test_parsing_any_flat_form_never_raises_anything_but_an_api_error(values):
    from urllib.parse import urlencode

    try:
        tree = parse_form(urlencode(values))
    except ApiError:
        return
    assert set(tree) <= set(values)


@pytest.mark.parametrize("value, text", [(Decimal("3"), "3"), (Decimal("3.000"), "3"),
                                         (Decimal("0.000125"), "0.000125"), (Decimal("1E+3"), "1000")])
def test_decimals_are_written_exactly_without_exponent_or_trailing_zeros(value, text):
    assert decimal_text(value) == text


def test_whole_decimals_become_json_integers_and_fractions_strings_never_floats():
    assert number(Decimal("3000")) == 3000
    assert number(Decimal("2.5")) == "2.5"


# --- shape limits: each a Stripe-style 400, never a 500 (issue 12, finding 4) -----------------------


def test_more_fields_than_the_limit_are_refused_before_parsing():
    from api.params import MAX_PARAMETERS

    with pytest.raises(ApiError) as error:
        parse_form("&".join(["a=1"] * (MAX_PARAMETERS + 1)))
    assert (error.value.status, error.value.code) == (400, "parameter_invalid")
    assert len(parse_form("&".join(f"metadata[k{i}]=v" for i in range(MAX_PARAMETERS)))["metadata"]) == MAX_PARAMETERS


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 1000 + b"1" + b"}" * 1000,
                                  b'{"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}'])
def test_json_deeper_than_the_limit_is_refused(body):
    from api.params import parse_json

    with pytest.raises(ApiError) as error:
        parse_json(body)
    assert (error.value.status, error.value.code) == (400, "parameter_invalid")


def test_json_at_the_depth_limit_and_with_many_leaves_within_the_limit_is_read():
    from api.params import MAX_PARAMETERS, parse_json

    assert parse_json(b'{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}')["a"]["b"]["c"]["d"]["e"]["f"] == 1
    assert len(parse_json(("{\"x\": [" + ",".join(["1"] * MAX_PARAMETERS) + "]}").encode())["x"]) == MAX_PARAMETERS
    with pytest.raises(ApiError):
        parse_json(("{\"x\": [" + ",".join(["1"] * (MAX_PARAMETERS + 1)) + "]}").encode())


@pytest.mark.parametrize("index", ["20", "5000", "9" * 5000, "0020"])
def test_a_list_index_past_the_lists_limit_is_refused_naming_the_list(index):
    params = Params(parse_form(f"items[{index}][price]=p"))
    with pytest.raises(ApiError) as error:
        params.objects("items", max_items=20)
    assert (error.value.param, error.value.code) == ("items", "parameter_invalid")


def test_integer_errors_carry_stripes_integer_code():
    with pytest.raises(ApiError) as error:
        Params({"quantity": "1000000001"}).int("quantity", maximum=10**9)
    assert (error.value.param, error.value.code) == ("quantity", "parameter_invalid_integer")
