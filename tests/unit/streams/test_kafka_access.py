"""Which client errors stop a process at once (a refusal retrying cannot cure), and what they tell the operator."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from drawdown.settings import Settings
from streams.topics import _refusal

SCRAM = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="ops",
                 kafka_sasl_password="secret-never-shown")


@pytest.mark.parametrize("code, text, says", [
    (KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials",
     "refused this client's credentials (SASL_SSL SCRAM-SHA-256, user 'ops'): check DRAWDOWN_KAFKA_SASL_USERNAME"),
    (KafkaError._SSL, "SSL handshake failed: certificate verify failed", "check DRAWDOWN_KAFKA_SSL_CA_FILE"),
    (KafkaError._TRANSPORT, "Receive failed: error:0A000412:SSL routines::ssl/tls alert bad certificate",
     "refused this client's TLS certificate: check DRAWDOWN_KAFKA_SSL_CERT_FILE"),
])
def test_a_refusal_names_the_settings_to_check(code, text, says) -> None:
    reason = _refusal(KafkaError(code, text), SCRAM)
    assert reason is not None and says in reason
    assert "secret-never-shown" not in reason


@pytest.mark.parametrize("code, text", [
    (KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9092 failed: Connection refused"),
    (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"),
    (KafkaError._TIMED_OUT, "Timed out"),
])
def test_an_unreachable_or_slow_broker_is_waited_for(code, text) -> None:
    assert _refusal(KafkaError(code, text), SCRAM) is None
