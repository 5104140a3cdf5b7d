import hashlib
import re

from billing import ids


def test_invoice_id_is_in_plus_24_hex_of_sha256_of_its_parts():
    expected = "in_" + hashlib.sha256("invoice\x1fsub_1\x1f1700000000000".encode()).hexdigest()[:24]
    assert ids.invoice_id("sub_1", 1_700_000_000_000) == expected


def test_ids_are_deterministic_and_prefixed():
    assert ids.invoice_id("sub_1", 0) == ids.invoice_id("sub_1", 0)
    assert re.fullmatch(r"il_[0-9a-f]{24}", ids.invoice_line_id("in_x", "si_1"))
    assert re.fullmatch(r"cbtxn_[0-9a-f]{24}", ids.credit_balance_transaction_id("credits_granted", "credgr_1"))
    assert re.fullmatch(r"lbal_[0-9a-f]{24}", ids.low_balance_alert_id("cus_1", "usd", 500, 1))


def test_ids_differ_when_any_part_differs():
    variants = {
        ids.invoice_id("sub_1", 0),
        ids.invoice_id("sub_1", 1),
        ids.invoice_id("sub_2", 0),
    }
    assert len(variants) == 3
    transaction_ids = {
        ids.credit_balance_transaction_id("credits_applied", "g", "in_1", "il_1"),
        ids.credit_balance_transaction_id("credits_applied", "g", "in_1", "il_2"),
        ids.credit_balance_transaction_id("credits_expired", "g", "in_1", "il_1"),
        ids.credit_balance_transaction_id("credits_expired", "g"),
        ids.low_balance_alert_id("c", "usd", 1, 1),
        ids.low_balance_alert_id("c", "usd", 1, 2),
    }
    assert len(transaction_ids) == 6


def test_joined_parts_cannot_collide_by_shifting_characters():
    assert ids.invoice_line_id("ab", "c") != ids.invoice_line_id("a", "bc")


def test_absent_invoice_and_line_hash_like_empty_strings():
    assert ids.credit_balance_transaction_id("credits_granted", "g") == ids.credit_balance_transaction_id(
        "credits_granted", "g", "", ""
    )
