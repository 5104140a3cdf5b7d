"""Running drawdown: the embedded local stack (Kafka from Maven Central, Debian's PostgreSQL), container files."""
