"""The differential tests use the stream tests' fixtures (real Kafka, a real worker subprocess)."""

from tests.integration.streams.conftest import stream_settings  # noqa: F401 - a fixture, re-exported
