"""An independent oracle of drawdown's billing rules (issue 13, item 1).

A small, plainly written model worked out from the written rules (/work/shared/STRIPE.md as the
project copies it into its docs, schemas/FACTS.md, README.md), sharing no code with billing/,
streams/, producers/ or schemas/codec.py. It reads the raw input log back from Kafka
(`wire.py`), decodes it with fastavro and the .avsc files, and folds it with `model.py`.
Slow is fine; obvious is the point.
"""
