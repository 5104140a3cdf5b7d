"""The high-volume producer SDK for meter events and the other input facts, and the load generator."""
