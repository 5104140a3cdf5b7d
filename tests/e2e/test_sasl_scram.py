"""The engine end to end against a broker that requires SASL/SCRAM (issue 16): a local broker of
this module's own (deploy/local.py, a SASL_PLAINTEXT listener with SCRAM-SHA-512, its user made
when its storage is formatted; then the same over TLS, SASL_SSL, with a CA of the test's own),
and the walkthrough through the API, the stream worker (Faust's aiokafka clients and
confluent-kafka ones) and the projector, every client logging in with the settings. The broker
must start: a failure to start it is an error, never a skip."""

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
from tests.e2e.conftest import free_port, own_engine, running_projector, running_worker, serving, started_app
from tests.tls import certificate_authority, issue

USER = "drawdown-e2e"
PASSWORD = "scram-e2e-password-5813"


@pytest.fixture(scope="module", params=["SASL_PLAINTEXT", "SASL_SSL"])
def scram_broker(request, local_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker that accepts only SCRAM-SHA-512 logins (over TLS with SASL_SSL): own state folder,
    free ports; stopped at the end. Yields the clients' settings for it."""
    home = tmp_path_factory.mktemp(f"scram-broker-{request.param.lower()}")
    port = free_port()
    tls, ca_file = None, None
    if request.param == "SASL_SSL":
        ca = certificate_authority(home / "pki")
        tls = local.BrokerTls(keystore=issue(home / "pki", "broker", ca).combined(), ca=ca.certificate)
        ca_file = ca.certificate
    broker = Settings(state_dir=home / "state", kafka_port=port, kafka_controller_port=free_port(),
                      kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_security_protocol=request.param,
                      kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=USER, kafka_sasl_password=PASSWORD,
                      kafka_ssl_ca_file=ca_file)
    try:
        local.start_kafka(broker, jars=local_settings, tls=tls)  # raises LocalStackError with the broker's log tail
        yield broker
    finally:
        local.stop_recorded(broker, "kafka")


@pytest.fixture(scope="module")
def scram_engine(settings: Settings, database_url: str, scram_broker: Settings) -> Iterator[Settings]:
    """The session's settings pointed at the SCRAM broker, with topics and a database of their own."""
    secured = settings.model_copy(update={name: getattr(scram_broker, name) for name in (
        "kafka_bootstrap_servers", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
        "kafka_sasl_password", "kafka_ssl_ca_file")})
    with own_engine(secured, database_url, scram_broker.kafka_security_protocol.lower()) as own:
        yield own


@pytest.fixture(scope="module")
def scram_api(scram_engine: Settings) -> Iterator[tuple[str, str]]:
    """The API (in process, served over HTTP) and the projector on the SCRAM broker: (base URL, key)."""
    from api.auth import create_key

    with running_projector(scram_engine), started_app(scram_engine) as app, serving(app) as base:
        yield base, create_key(scram_engine.effective_database_url)


def test_the_walkthrough_bills_through_a_broker_that_requires_scram(scram_engine, scram_api, tmp_path) -> None:
    import stripe

    from api import walkthrough

    base, key = scram_api
    with running_worker(scram_engine, tmp_path) as worker:
        walkthrough.configure(stripe, base, key)
        result = walkthrough.run(stripe, say=lambda line: None, invoice_timeout_s=90)
        assert worker.poll() is None
    invoice = result["invoice"]
    assert invoice.status == "open"
    assert [(line.quantity, line.amount) for line in invoice.lines.data] == [(3000, 9000), (0, 0)]
    assert (invoice.subtotal, invoice.amount_due) == (9000, 8000)
    assert [credit.amount for credit in invoice.total_pretax_credit_amounts] == [1000]
    assert sum(s.aggregated_value for s in result["summaries"]) == 3000
    # No client fell back to an unauthenticated connection: the broker has no PLAINTEXT listener.
    from streams.topics import KafkaAccessError, connect_admin

    with pytest.raises(KafkaAccessError):
        connect_admin(scram_engine.model_copy(update={"kafka_security_protocol": "PLAINTEXT"}), timeout_s=3)


def test_a_client_with_a_wrong_password_fails_fast_naming_the_settings(scram_engine) -> None:
    from streams.topics import KafkaAccessError, connect_admin

    wrong = scram_engine.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
    started = time.monotonic()
    with pytest.raises(KafkaAccessError) as refused:
        connect_admin(wrong, timeout_s=60)
    assert time.monotonic() - started < 15, "an authentication failure waited for the whole timeout"
    message = str(refused.value)
    assert "refused this client's credentials" in message and f"user '{USER}'" in message
    assert "DRAWDOWN_KAFKA_SASL_PASSWORD" in message and "invalid credentials" in message
    assert "not-the-password" not in message


def test_a_worker_with_a_wrong_password_exits_with_the_reason_instead_of_hanging(scram_engine, tmp_path) -> None:
    wrong = scram_engine.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")})
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
    assert "not-the-password" not in output

