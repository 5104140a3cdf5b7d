"""Faust stream workers: validation, dedupe, event-time usage buckets, credit state, invoice finalization.

- worker.py: the Faust app (`drawdown worker`). One agent reads customer-facts in batches
  (what is buffered, up to a maximum; manual acks after the batch), decodes with schemas.codec (value_serializer "raw"), folds each partition's
  facts in offset order (processor.py), sends the derived facts and awaits their acks, and only
  then writes the touched state records (local rocksdict store + changelog, acks awaited). Faust
  owns group membership, assignment, table recovery and source-offset commits.
- processor.py: one partition's fold, no Kafka I/O: routes each fact to billing/usage.py (dedupe,
  cancellation, minute buckets) and billing/customer.py (grants, subscriptions, periods,
  finalization, expiry, void, live balance), keeps the due-time index, turns rejections and
  undecodable bytes into DeadLetter facts. The fault test's reference runs the same code over
  dicts.
- state.py: how records are stored (write-back caches per batch, compact encodings).
- catalog_follower.py: every worker reads the one-partition catalog topic to its end whenever a fact names
  something unknown (not a GlobalTable: see its docstring).
- ticker.py: `drawdown ticker` writes TimeTicked to every partition each tick interval.
- commands.py: the commands and ENGINE_PROCESSES for `make up`.

Exactly once without Kafka transactions: every record carries the last offset it applied (facts
at or below it are replays and change nothing), meter events are deduplicated by (customer, event
name, identifier), derived ids are deterministic, outputs are acknowledged before state is written,
and each partition's record carries the last source offset whose batch is wholly acknowledged
(`durable_offset`): on every assignment the worker re-reads from there, whatever offset Faust
committed. (The fault test's intermittent loss: a kill while a batch's state was being written left
the customers table's records, the partition record among them, in the local store but not all of
the usage table's; Faust can commit past such a batch (it commits the first run of
acked offsets even when it starts beyond an unacked batch, and acks messages it skips around
rebalances), and the restart resumed after the partition record's applied offset, and the batch's
usage records never came back.)
"""
