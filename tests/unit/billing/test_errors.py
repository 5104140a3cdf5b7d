import re

import billing.errors as errors


def test_every_billing_error_has_a_distinct_snake_case_code_under_one_root():
    error_types = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    codes = [error_type.code for error_type in error_types]
    assert all(issubclass(error_type, errors.BillingError) for error_type in error_types)
    assert len(codes) == len(set(codes)) > 10
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in codes)
