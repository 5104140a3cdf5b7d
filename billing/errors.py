"""Errors of the billing rules: one root, names that say what is wrong, a stable snake_case code each.

Bad *input* from outside (a malformed meter event) is not an error here: validation returns a typed
rejection. These errors are for commands that the rules refuse (voiding an applied grant) and for
broken invariants.
"""

from __future__ import annotations


class BillingError(Exception):
    """Root of every error raised by the billing rules. `code` is stable and safe to show to API clients."""

    code = "billing_error"


class UnknownCurrency(BillingError):
    code = "unknown_currency"


class CurrencyMismatch(BillingError):
    code = "currency_mismatch"


class InexactAmount(BillingError):
    """A money value that must be exact (no float, no fraction of a minor unit) was not."""

    code = "inexact_amount"


class GracePeriodOutOfRange(BillingError):
    code = "grace_period_out_of_range"


class AnchorBeforeSubscriptionStart(BillingError):
    code = "anchor_before_subscription_start"


class InstantBeforeSubscriptionStart(BillingError):
    code = "instant_before_subscription_start"


class GrantAlreadyApplied(BillingError):
    """A grant can be voided only if none of it was ever applied (Stripe)."""

    code = "credit_grant_already_applied"


class GrantAlreadyVoided(BillingError):
    code = "credit_grant_already_voided"


class GrantAlreadyExpired(BillingError):
    code = "credit_grant_already_expired"


class TooManyUnusedGrants(BillingError):
    """At most 100 unused grants per customer (Stripe)."""

    code = "too_many_unused_credit_grants"


class InvoiceAlreadyVoided(BillingError):
    code = "invoice_already_voided"


class UnknownPrice(BillingError):
    code = "unknown_price"


class MeteredPriceWithoutMeter(BillingError):
    code = "metered_price_without_meter"


class MixedRecurringIntervals(BillingError):
    """All prices of one subscription must share one recurring interval, as in Stripe."""

    code = "mixed_recurring_intervals"


class InvariantViolation(BillingError):
    """A money invariant does not hold: a bug, never bad input. Never caught to carry on."""

    code = "invariant_violation"
