"""The engine end to end against brokers that require a login (issue 16): a local broker of this
module's own (deploy/local.py) that requires SASL/SCRAM-SHA-512 (its user made when its storage is
formatted), over SASL_PLAINTEXT and over TLS (SASL_SSL), or a client certificate (SSL, mutual
TLS), with a CA of the test's own (tests/tls.py). The walkthrough goes through the API, the stream
worker (Faust's aiokafka clients and confluent-kafka ones) and the projector, every client logging
in with the settings; the broker has no PLAINTEXT listener to fall back on. A wrong password or
certificate fails in seconds, naming the settings. The broker must start: a failure to start it
is an error, never a skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from deploy import local
from drawdown.settings import PROJECT_ROOT, Settings
from streams.topics import KafkaAccessError, connect_admin
from tests.e2e.conftest import free_port, own_engine, running_projector, running_worker, serving, started_app
from tests.tls import certificate_authority, issue

USER = "drawdown-e2e"
PASSWORD = "scram-e2e-password-5813"
SCRAM = ["SASL_PLAINTEXT", "SASL_SSL"]
# The client settings the engine under test copies from the broker's.
SECURITY_FIELDS = ("kafka_bootstrap_servers", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                   "kafka_sasl_password", "kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")


@pytest.fixture(scope="module")
def secured_broker(request, local_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker for the protocol `request.param` that accepts only logged-in clients: own state
    folder, free ports; stopped at the end. Yields the clients' settings for it."""
    protocol = request.param
    home = tmp_path_factory.mktemp(f"broker-{protocol.lower()}")
    port = free_port()
    security = {}
    tls = None
    if protocol.startswith("SASL_"):
        security.update(kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=USER, kafka_sasl_password=PASSWORD)
    if protocol.endswith("SSL"):
        ca = certificate_authority(home / "pki")
        tls = local.BrokerTls(keystore=issue(home / "pki", "broker", ca).combined(), ca=ca.certificate)
        security.update(kafka_ssl_ca_file=ca.certificate)
    if protocol == "SSL":
        client = issue(home / "pki", "client", ca)
        security.update(kafka_ssl_cert_file=client.certificate, kafka_ssl_key_file=client.key)
    broker = Settings(state_dir=home / "state", kafka_port=port, kafka_controller_port=free_port(),
                      kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_security_protocol=protocol, **security)
    try:
        local.start_kafka(broker, jars=local_settings, tls=tls)  # raises LocalStackError with the broker's log tail
        yield broker
    finally:
        local.stop_recorded(broker, "kafka")


@pytest.fixture(scope="module")
def secured_engine(settings: Settings, database_url: str, secured_broker: Settings) -> Iterator[Settings]:
    """The session's settings pointed at the secured broker, with topics and a database of their own."""
    secured = settings.model_copy(update={name: getattr(secured_broker, name) for name in SECURITY_FIELDS})
    with own_engine(secured, database_url, secured_broker.kafka_security_protocol.lower()) as own:
        yield own


@pytest.fixture(scope="module")
def secured_api(secured_engine: Settings) -> Iterator[tuple[str, str]]:
    """The API (in process, served over HTTP) and the projector on the secured broker: (base URL, key)."""
    from api.auth import create_key

    with running_projector(secured_engine), started_app(secured_engine) as app, serving(app) as base:
        yield base, create_key(secured_engine.effective_database_url)


@pytest.mark.parametrize("secured_broker", [*SCRAM, "SSL"], indirect=True)
def test_the_walkthrough_bills_through_a_broker_that_requires_a_login(secured_engine, secured_api, tmp_path) -> None:
    import stripe

    from api import walkthrough

    base, key = secured_api
    with running_worker(secured_engine, tmp_path) as worker:
        walkthrough.configure(stripe, base, key)
        result = walkthrough.run(stripe, say=lambda line: None, invoice_timeout_s=90)
        assert worker.poll() is None
    invoice = result["invoice"]
    assert invoice.status == "open"
    assert [(line.quantity, line.amount) for line in invoice.lines.data] == [(3000, 9000), (0, 0)]
    assert (invoice.subtotal, invoice.amount_due) == (9000, 8000)
    assert [credit.amount for credit in invoice.total_pretax_credit_amounts] == [1000]
    assert sum(s.aggregated_value for s in result["summaries"]) == 3000
    # No client could have fallen back to an unauthenticated connection: the broker refuses one.
    anonymous = secured_engine.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    with pytest.raises(KafkaAccessError):
        connect_admin(anonymous, timeout_s=3)


@pytest.mark.parametrize("secured_broker", SCRAM, indirect=True)
def test_a_client_with_a_wrong_password_fails_fast_naming_the_settings(secured_engine) -> None:
    wrong = secured_engine.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    message = refusal(wrong)
    assert "refused this client's credentials" in message and f"user '{USER}'" in message
    assert "DRAWDOWN_KAFKA_SASL_PASSWORD" in message and "invalid credentials" in message
    assert "not-the-password" not in message


@pytest.mark.parametrize("secured_broker", SCRAM, indirect=True)
def test_a_worker_with_a_wrong_password_exits_with_the_reason_instead_of_hanging(secured_engine, tmp_path) -> None:
    wrong = secured_engine.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=wrong.effective_kafka_bootstrap_servers,
               DATABASE_URL=wrong.effective_database_url, DRAWDOWN_TOPIC_PREFIX=wrong.topic_prefix,
               DRAWDOWN_WORKER_DATA_DIR=str(tmp_path / "worker"), DRAWDOWN_WORKER_WEB_PORT=str(free_port()),
               DRAWDOWN_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1", PYTHONPATH=str(PROJECT_ROOT),
               **wrong.kafka_security_env())
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "drawdown", "worker"], cwd=PROJECT_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        exit_code = process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        pytest.fail(f"the worker still ran after 60 s with a wrong password:\n{log_path.read_text()[-3000:]}")
    output = log_path.read_text()
    assert exit_code != 0
    assert "refused this client's credentials" in output and "DRAWDOWN_KAFKA_SASL_PASSWORD" in output, output[-3000:]
    assert "Traceback" not in output, "the reason is one line, not a stack"
    assert "not-the-password" not in output


@pytest.mark.parametrize("secured_broker", ["SSL"], indirect=True)
def test_a_client_without_a_trusted_certificate_or_with_the_wrong_ca_fails_fast_naming_the_settings(
        secured_engine, tmp_path) -> None:
    stranger_ca = certificate_authority(tmp_path / "stranger")
    stranger = issue(tmp_path / "stranger", "client", stranger_ca)
    for untrusted in ({"kafka_ssl_cert_file": None, "kafka_ssl_key_file": None},
                      {"kafka_ssl_cert_file": stranger.certificate, "kafka_ssl_key_file": stranger.key}):
        message = refusal(secured_engine.model_copy(update=untrusted))
        assert "refused this client's TLS certificate" in message and "DRAWDOWN_KAFKA_SSL_CERT_FILE" in message
    message = refusal(secured_engine.model_copy(update={"kafka_ssl_ca_file": stranger_ca.certificate}))
    assert "could not be verified over TLS" in message and "DRAWDOWN_KAFKA_SSL_CA_FILE" in message


def refusal(settings: Settings) -> str:
    """The message connect_admin fails with for `settings`, which it must know in seconds, not at its timeout."""
    started = time.monotonic()
    with pytest.raises(KafkaAccessError) as refused:
        connect_admin(settings, timeout_s=60)
    assert time.monotonic() - started < 15, "a refusal waited for the whole timeout"
    return str(refused.value)
