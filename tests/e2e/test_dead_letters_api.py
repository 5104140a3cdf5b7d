"""Dead letters are visible (issue 12): an API list with reason codes, the CLI, and /metrics."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid

from billing.facts import DeadLetter
from drawdown.settings import PROJECT_ROOT

AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _letters(worker_fact, reason_code: str, customer_id: str, count: int) -> list[DeadLetter]:
    """`count` dead letters as the workers write them, one second apart (the last is the newest), at
    offsets of their own (a dead letter is unique by where it was read)."""
    base = uuid.uuid4().int % 10**12
    letters = [DeadLetter(original_bytes=f"fact {n}".encode(), topic="drawdown.customer-facts", partition=3,
                          offset=base + n, reason_code=reason_code, message=f"amount {n} is beyond a long",
                          customer_id=customer_id, dead_lettered_at_ms=AT_MS + n * 1000)
               for n in range(count)]
    for letter in letters:
        worker_fact("dead-letters", letter)
    return letters


def test_dead_letters_list_newest_first_filtered_by_customer_and_reason_and_paged(client, worker_fact):
    customer_id, reason = f"cus_{uuid.uuid4().hex[:10]}", f"amount_out_of_range_{uuid.uuid4().hex[:6]}"
    base = _letters(worker_fact, reason, customer_id, 3)[0].offset
    _letters(worker_fact, "fold_failed", customer_id, 1)

    first = client.get("/v1/dead_letters", params={"customer": customer_id, "reason_code": reason, "limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["object"] == "list" and page["url"] == "/v1/dead_letters" and page["has_more"] is True
    assert [letter["message"] for letter in page["data"]] == ["amount 2 is beyond a long", "amount 1 is beyond a long"]
    newest = page["data"][0]
    assert newest == {"id": newest["id"], "object": "dead_letter", "created": newest["created"], "reason_code": reason,
                      "message": "amount 2 is beyond a long", "customer": customer_id,
                      "source": {"topic": "drawdown.customer-facts", "partition": 3, "offset": base + 2}}
    assert "original_bytes" not in newest  # never the raw bytes unless asked

    rest = client.get("/v1/dead_letters", params={"customer": customer_id, "reason_code": reason,
                                                  "starting_after": page["data"][-1]["id"]}).json()
    assert [letter["message"] for letter in rest["data"]] == ["amount 0 is beyond a long"]
    assert rest["has_more"] is False

    everything = client.get("/v1/dead_letters", params={"customer": customer_id,
                                                        "include_original_bytes": "true"}).json()
    assert sorted(letter["reason_code"] for letter in everything["data"]) == sorted(["fold_failed", reason, reason, reason])
    assert {base64.b64decode(letter["original_bytes"]) for letter in everything["data"]} == {
        b"fact 0", b"fact 1", b"fact 2"}

    unknown = client.get("/v1/dead_letters", params={"starting_after": "dl_nope"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "starting_after"


def test_metrics_count_dead_letters_by_reason_code(client, worker_fact):
    reason = f"unencodable_output_{uuid.uuid4().hex[:6]}"
    _letters(worker_fact, reason, f"cus_{uuid.uuid4().hex[:10]}", 2)
    text = client.get("/metrics").text
    assert f'drawdown_dead_letters_total{{reason_code="{reason}"}} 2\n' in text
    assert "# TYPE drawdown_dead_letters_total counter" in text
    assert "drawdown_api_requests_total" in text  # the request metrics are still there


def test_the_cli_prints_dead_letters_as_a_table(worker_fact, engine_settings):
    customer_id, reason = f"cus_{uuid.uuid4().hex[:10]}", f"fold_failed_{uuid.uuid4().hex[:6]}"
    base = _letters(worker_fact, reason, customer_id, 3)[0].offset
    env = dict(os.environ, DATABASE_URL=engine_settings.database_url, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run([sys.executable, "-m", "drawdown", "dead-letters", "--reason", reason, "--limit", "2"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "(UTC)", "REASON", "CUSTOMER", "SOURCE", "MESSAGE"]
    assert len(lines) == 4  # header, two letters, "more"
    assert reason in lines[1] and customer_id in lines[1] and f"drawdown.customer-facts[3]@{base + 2}" in lines[1]
    assert lines[1].endswith("amount 2 is beyond a long") and lines[2].endswith("amount 1 is beyond a long")
    assert lines[3].startswith("(more")
