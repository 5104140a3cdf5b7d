"""The engine's derived topics against the oracle, field by field.

Everything is read back from Kafka and decoded with the oracle's own decoder (tests/oracle/wire.py),
so the comparison shares no code with the engine either."""

from __future__ import annotations

from decimal import Decimal

from tests.oracle import model, wire

DERIVED = ("invoices", "credit-balance-transactions", "usage-buckets", "live-balances", "dead-letters")
STRIPE_METER_EVENT_CODES = {  # STRIPE.md "Meter events": the codes the oracle states exactly
    "meter_event_customer_not_found", "meter_event_no_customer_defined", "archived_meter",
    "timestamp_too_far_in_past", "timestamp_in_future", "meter_event_value_not_found",
    "meter_event_invalid_value", "no_meter"}


def oracle_results(settings) -> model.Results:
    return model.run_from_kafka(settings.kafka_client_config(), settings.topic_prefix,
                                settings.grace_period_seconds * 1000, settings.dedupe_window_seconds * 1000)


def engine_outputs(settings) -> dict[str, list[dict]]:
    """Record name -> the facts of that name on the derived topics, each partition in offset order."""
    outputs: dict[str, list[dict]] = {}
    for short_name in DERIVED:
        for rows in wire.read_facts(settings.kafka_client_config(), settings.topic(short_name)).values():
            for _, name, fields in rows:
                assert name is not None, f"undecodable record on {short_name}"
                outputs.setdefault(name, []).append(fields)
    return outputs


def _unique(facts: list[dict], key: str) -> dict:
    """Facts by id; a re-emitted fact must be the same fact."""
    by_id: dict = {}
    for fact in facts:
        assert by_id.setdefault(fact[key], fact) == fact, f"two different facts with {key} {fact[key]}"
    return by_id


def _latest(facts: list[dict], key) -> dict:
    latest = {}
    for fact in facts:  # a customer's derived facts are on one partition, in order
        latest[key(fact)] = fact
    return latest


def _invoice(fact: dict) -> dict:
    lines = [{**line, "quantity": Decimal(line["quantity"]), "unit_amount_decimal": Decimal(line["unit_amount_decimal"])}
             for line in fact["lines"]]
    return {**fact, "lines": lines}


def differences(kind: str, expected: dict, actual: dict, limit: int = 4) -> list[str]:
    missing = sorted(set(expected) - set(actual), key=str)
    extra = sorted(set(actual) - set(expected), key=str)
    wrong = sorted((k for k in set(expected) & set(actual) if expected[k] != actual[k]), key=str)
    found = []
    for k in missing[:limit]:
        found.append(f"{kind} {k}: oracle has it, the engine not: {expected[k]}")
    for k in extra[:limit]:
        found.append(f"{kind} {k}: the engine has it, the oracle not: {actual[k]}")
    for k in wrong[:limit]:
        e, a = expected[k], actual[k]
        if isinstance(e, dict):
            fields = {f: (e.get(f), a.get(f)) for f in set(e) | set(a) if e.get(f) != a.get(f)}
            found.append(f"{kind} {k}: field (oracle, engine): {fields}")
        else:
            found.append(f"{kind} {k}: oracle {e}, engine {a}")
    if len(missing) + len(extra) + len(wrong) > 3 * limit:
        found.append(f"{kind}: {len(missing)} missing, {len(extra)} extra, {len(wrong)} different in all")
    return found


def compare(settings, customers: set[str] | None = None, what: tuple[str, ...] = (
        "invoices", "voided", "paid", "transactions", "ledgers", "buckets", "live", "dead_letters")) -> list[str]:
    """Every difference between the engine's outputs and the oracle (of `customers`, or all)."""
    oracle = oracle_results(settings)
    outputs = engine_outputs(settings)
    mine = (lambda customer_id: True) if customers is None else customers.__contains__

    def pick(by_key: dict, customer_of) -> dict:
        return {k: v for k, v in by_key.items() if mine(customer_of(k, v))}

    found: list[str] = []
    if "invoices" in what:
        engine = {k: _invoice(v) for k, v in _unique(outputs.get("InvoiceFinalized", []), "invoice_id").items()}
        found += differences("invoice", pick(oracle.invoices, lambda k, v: v["customer_id"]),
                             pick(engine, lambda k, v: v["customer_id"]))
    if "voided" in what:
        found += differences("voided invoice", pick(oracle.voided_invoices, lambda k, v: v["customer_id"]),
                             pick(_unique(outputs.get("InvoiceVoided", []), "invoice_id"), lambda k, v: v["customer_id"]))
    if "paid" in what:
        for kind, expected, name in (("paid invoice", oracle.paid_invoices, "InvoicePaid"),
                                     ("uncollectible invoice", oracle.uncollectible_invoices,
                                      "InvoiceMarkedUncollectible")):
            found += differences(kind, pick(expected, lambda k, v: v["customer_id"]),
                                 pick(_unique(outputs.get(name, []), "invoice_id"), lambda k, v: v["customer_id"]))
    transactions = _unique(outputs.get("CreditBalanceTransaction", []), "transaction_id")
    if "transactions" in what:
        found += differences("transaction", pick(oracle.transactions, lambda k, v: v["customer_id"]),
                             pick(transactions, lambda k, v: v["customer_id"]))
    if "ledgers" in what:
        ledgers: dict[str, int] = {}
        for t in transactions.values():
            if mine(t["customer_id"]):
                ledgers[t["grant_id"]] = ledgers.get(t["grant_id"], 0) + (1 if t["type"] == "credit" else -1) * t["amount_minor"]
        expected = {grant_id: balances[0] for grant_id, balances in oracle.grant_balances.items()
                    if mine(oracle_customer_of_grant(oracle, grant_id))}
        found += differences("grant ledger", expected, ledgers)
    if "buckets" in what:
        engine = {k: (Decimal(v["value"]), v["event_count"]) for k, v in _latest(
            outputs.get("UsageBucketUpdated", []), lambda f: (f["customer_id"], f["meter_id"], f["bucket_start_ms"])).items()}
        found += differences("usage bucket", pick(oracle.buckets, lambda k, v: k[0]), pick(engine, lambda k, v: k[0]))
    if "live" in what:
        engine = {k: (v["available_credits_minor"], v["accrued_usage_minor"], v["live_balance_minor"]) for k, v in _latest(
            outputs.get("LiveBalanceChanged", []), lambda f: (f["customer_id"], f["currency"])).items()}
        found += differences("live balance (available, accrued, live)", pick(oracle.live_balances, lambda k, v: k[0]),
                             pick(engine, lambda k, v: k[0]))
    if "dead_letters" in what:
        # A partition's "not here" about a cancel without customer is half a verdict (the projector
        # makes `meter_event_not_found` of all partitions' together): the rules know only the whole.
        engine = {(f["partition"], f["offset"]): f["reason_code"] for f in outputs.get("DeadLetter", [])
                  if f["reason_code"] != "meter_event_not_in_partition"}

        def stated(codes: dict) -> dict:  # the oracle states the position always, the code for Stripe's codes
            return {k: code if code in STRIPE_METER_EVENT_CODES else "(rejected)" for k, code in codes.items()}
        if customers is None:
            found += differences("dead letter", stated(oracle.rejected), stated(engine))
    return found


def oracle_customer_of_grant(oracle: model.Results, grant_id: str) -> str:
    for customer in oracle.customers.values():
        if grant_id in customer.grants:
            return customer.customer_id
    return ""
