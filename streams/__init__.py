"""Faust stream workers: validation, dedupe, event-time usage buckets, credit state, invoice finalization."""
