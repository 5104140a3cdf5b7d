"""The security settings: what each Kafka client and PostgreSQL connection gets, the combinations
refused (naming what to set), and passwords kept out of repr, errors, logs and `drawdown status`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy import local
from drawdown.settings import Settings, database_name, with_database
from tests.tls import certificate_authority

PASSWORD = "pw-never-shown-4711"
SCRAM = dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
             kafka_sasl_username="drawdown", kafka_sasl_password=PASSWORD)


@pytest.fixture()
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "file.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_plaintext_is_the_default_and_gives_the_clients_only_the_bootstrap_servers() -> None:
    settings = Settings(kafka_bootstrap_servers="kafka:9092")
    assert settings.kafka_client_config() == {"bootstrap.servers": "kafka:9092", "security.protocol": "plaintext"}
    assert settings.faust_broker_credentials() is None


def test_sasl_scram_reaches_confluent_kafka_and_faust_alike() -> None:
    import faust

    settings = Settings(kafka_bootstrap_servers="kafka:9092", **SCRAM)
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "kafka:9092", "security.protocol": "sasl_plaintext", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "drawdown", "sasl.password": PASSWORD}
    credentials = settings.faust_broker_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value, credentials.username, credentials.password,
            credentials.ssl_context) == ("SASL_PLAINTEXT", "SCRAM-SHA-512", "drawdown", PASSWORD, None)


def test_sasl_ssl_with_a_ca_file_gives_both_clients_tls(tmp_path: Path) -> None:
    import faust

    ca = certificate_authority(tmp_path).certificate
    settings = Settings(**{**SCRAM, "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256"},
                        kafka_ssl_ca_file=ca)
    config = settings.kafka_client_config()
    assert (config["security.protocol"], config["sasl.mechanism"], config["ssl.ca.location"]) == (
        "sasl_ssl", "SCRAM-SHA-256", str(ca))
    credentials = settings.faust_broker_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is not None


def test_mutual_tls_passes_the_client_certificate_and_key(tmp_path: Path) -> None:
    import faust

    ca = certificate_authority(tmp_path).certificate
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=ca, kafka_ssl_cert_file=ca,
                        kafka_ssl_key_file=tmp_path / "ca.key")
    config = settings.kafka_client_config()
    assert (config["ssl.certificate.location"], config["ssl.key.location"]) == (str(ca), str(tmp_path / "ca.key"))
    assert isinstance(settings.faust_broker_credentials(), faust.SSLCredentials)


@pytest.mark.parametrize("given, named", [
    ({"kafka_security_protocol": "SASL_SSL"}, "DRAWDOWN_KAFKA_SASL_MECHANISM, DRAWDOWN_KAFKA_SASL_USERNAME, "
                                              "DRAWDOWN_KAFKA_SASL_PASSWORD"),
    ({**SCRAM, "kafka_sasl_password": ""}, "needs DRAWDOWN_KAFKA_SASL_PASSWORD"),
    ({"kafka_sasl_username": "drawdown"}, "set it to SASL_PLAINTEXT or SASL_SSL"),
    ({"kafka_ssl_ca_file": "/etc/hostname"}, "set it to SSL or SASL_SSL"),
    ({**SCRAM, "kafka_ssl_ca_file": "/etc/hostname"}, "does not use TLS"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/etc/hostname"},
     "set both DRAWDOWN_KAFKA_SSL_CERT_FILE and DRAWDOWN_KAFKA_SSL_KEY_FILE"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nonexistent/ca.pem"},
     "DRAWDOWN_KAFKA_SSL_CA_FILE=/nonexistent/ca.pem is not a readable file"),
    ({"kafka_security_protocol": "SASL_SSL ", **{k: v for k, v in SCRAM.items() if k != "kafka_security_protocol"}},
     "kafka_security_protocol"),
    ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ({"postgres_sslmode": "disable", "postgres_sslrootcert": "/etc/hostname"}, "DRAWDOWN_POSTGRES_SSLMODE=disable"),
    ({"postgres_sslkey": "/etc/hostname"}, "set both DRAWDOWN_POSTGRES_SSLCERT and DRAWDOWN_POSTGRES_SSLKEY"),
    ({"database_url": "postgresql://h/db?sslmode=disable", "postgres_sslmode": "require"},
     "DATABASE_URL sets sslmode=disable but DRAWDOWN_POSTGRES_SSLMODE=require"),
])
def test_a_combination_a_client_would_ignore_or_fail_on_is_refused_naming_what_to_set(given, named) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**given)
    assert named in str(refused.value)


def test_settings_from_the_environment_are_checked_the_same_way(monkeypatch) -> None:
    monkeypatch.setenv("DRAWDOWN_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRAWDOWN_KAFKA_SASL_PASSWORD", PASSWORD)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "needs DRAWDOWN_KAFKA_SASL_MECHANISM, DRAWDOWN_KAFKA_SASL_USERNAME" in str(refused.value)
    assert PASSWORD not in str(refused.value), "a refused configuration's error printed the password"
    for name, value in (("DRAWDOWN_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"), ("DRAWDOWN_KAFKA_SASL_USERNAME", "u")):
        monkeypatch.setenv(name, value)
    assert Settings().kafka_sasl_password.get_secret_value() == PASSWORD


def test_passwords_stay_out_of_repr_dumps_errors_logs_and_status(tmp_path: Path, caplog) -> None:
    settings = Settings(state_dir=tmp_path, kafka_ssl_key_password="", **SCRAM)
    shown = [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json(),
             repr(settings.faust_broker_credentials()), "\n".join(local.status_lines(settings))]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("drawdown").info("settings: %s %r", settings, settings)
    shown.append(caplog.text)
    with pytest.raises(ValidationError) as refused:
        Settings(kafka_sasl_password=PASSWORD, kafka_ssl_key_password=PASSWORD)
    shown.append(str(refused.value))
    for text in shown:
        assert PASSWORD not in text
    assert settings.kafka_client_config()["sasl.password"] == PASSWORD  # only the client gets it


def test_the_security_settings_round_trip_through_a_child_process_environment(monkeypatch, pem: Path) -> None:
    plaintext = Settings().kafka_security_env()
    settings = Settings(**{**SCRAM, "kafka_security_protocol": "SASL_SSL"}, kafka_ssl_ca_file=pem)
    for name, value in settings.kafka_security_env().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.kafka_client_config() == {**settings.kafka_client_config(),
                                           "bootstrap.servers": child.effective_kafka_bootstrap_servers}
    for name, value in plaintext.items():  # the defaults (empty strings) round-trip too
        monkeypatch.setenv(name, value)
    assert Settings().kafka_client_config()["security.protocol"] == "plaintext"


def test_postgres_tls_settings_are_merged_into_the_database_url(pem: Path) -> None:
    settings = Settings(database_url="postgresql://drawdown:pw@db.example:5432/billing?application_name=x",
                        postgres_sslmode="verify-full", postgres_sslrootcert=pem, postgres_sslcert=pem,
                        postgres_sslkey=pem)
    url = settings.effective_database_url
    quoted = str(pem).replace("/", "%2F")
    assert url == ("postgresql://drawdown:pw@db.example:5432/billing?application_name=x&sslmode=verify-full"
                   f"&sslrootcert={quoted}&sslcert={quoted}&sslkey={quoted}")
    # a sibling database keeps the server and every parameter (tests and benchmarks make them)
    assert (database_name(url), database_name(with_database(url, "billing_test"))) == ("billing", "billing_test")
    assert with_database(url, "billing_test") == url.replace("/billing?", "/billing_test?")
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)  # libpq's own reading of it
    assert (info["sslmode"], info["sslrootcert"], info["sslcert"], info["sslkey"]) == (
        "verify-full", str(pem), str(pem), str(pem))


def test_without_postgres_tls_settings_the_database_url_is_untouched(tmp_path: Path) -> None:
    assert Settings(database_url="postgresql://h/db?sslmode=require").effective_database_url == \
        "postgresql://h/db?sslmode=require"
    local_url = Settings(database_url="", state_dir=tmp_path, postgres_port=15432, postgres_sslmode="require").effective_database_url
    assert local_url == "postgresql://drawdown@127.0.0.1:15432/drawdown?sslmode=require"


def test_the_same_value_in_the_url_and_the_settings_is_not_a_conflict() -> None:
    settings = Settings(database_url="postgresql://h/db?sslmode=require", postgres_sslmode="require")
    assert settings.effective_database_url == "postgresql://h/db?sslmode=require"


def test_the_local_broker_requires_scram_when_the_clients_use_it(tmp_path: Path) -> None:
    properties = local.kafka_server_properties(Settings(state_dir=tmp_path, kafka_port=39092, **SCRAM))
    assert "listeners=SASL_PLAINTEXT://127.0.0.1:39092,CONTROLLER://" in properties
    assert "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT" in properties
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in properties
    assert "PLAINTEXT://127.0.0.1:39092" not in properties.replace("SASL_PLAINTEXT://", "")


@pytest.mark.parametrize("given, named", [
    ({"kafka_security_protocol": "SASL_SSL"}, "speaks PLAINTEXT, SASL_PLAINTEXT (SASL: SCRAM only), not SASL_SSL"),
    ({"kafka_sasl_mechanism": "PLAIN"}, "not SASL_PLAINTEXT PLAIN"),
    ({"kafka_sasl_password": 'a"b'}, "DRAWDOWN_KAFKA_SASL_PASSWORD may hold only"),
])
def test_the_local_broker_refuses_what_it_cannot_serve(tmp_path: Path, given, named) -> None:
    with pytest.raises(local.LocalStackError) as refused:
        local.kafka_server_properties(Settings(state_dir=tmp_path, **{**SCRAM, **given}))
    assert named in str(refused.value)



def test_the_command_line_shows_a_refused_configuration_without_a_traceback_or_the_password(monkeypatch,
                                                                                           capsys) -> None:
    from drawdown import cli
    from drawdown.settings import get_settings

    monkeypatch.setenv("DRAWDOWN_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DRAWDOWN_KAFKA_SASL_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    try:
        assert cli.main(["status"]) == 2
    finally:
        get_settings.cache_clear()
    error = capsys.readouterr().err
    assert error.startswith("drawdown: settings: ") and "needs DRAWDOWN_KAFKA_SASL_MECHANISM" in error
    assert "Traceback" not in error and PASSWORD not in error


def test_a_key_value_database_url_gets_the_postgres_tls_settings_too(pem: Path) -> None:
    import psycopg

    settings = Settings(database_url="host=db.example dbname=billing user=drawdown", postgres_sslmode="verify-ca",
                        postgres_sslrootcert=pem)
    info = psycopg.conninfo.conninfo_to_dict(settings.effective_database_url)
    assert info == {"host": "db.example", "dbname": "billing", "user": "drawdown", "sslmode": "verify-ca",
                    "sslrootcert": str(pem)}
    with pytest.raises(ValidationError, match="DATABASE_URL sets sslmode=require but DRAWDOWN_POSTGRES_SSLMODE="):
        Settings(database_url="host=db.example sslmode=require", postgres_sslmode="verify-ca")


def test_given_its_certificate_the_local_broker_serves_sasl_ssl(tmp_path: Path) -> None:
    tls = local.BrokerTls(keystore=tmp_path / "broker.keystore.pem", ca=tmp_path / "ca.pem")
    settings = Settings(state_dir=tmp_path, kafka_port=39092, **{**SCRAM, "kafka_security_protocol": "SASL_SSL"})
    properties = local.kafka_server_properties(settings, tls)
    assert "listeners=SASL_SSL://127.0.0.1:39092,CONTROLLER://" in properties
    assert "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=" in properties
    assert f"ssl.keystore.location={tls.keystore}" in properties and f"ssl.truststore.location={tls.ca}" in properties
