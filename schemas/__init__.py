"""Avro schemas, one .avsc per fact, and the codec that frames facts for Kafka."""
