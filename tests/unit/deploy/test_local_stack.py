"""The local stack's failures say what failed and what to do next."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from deploy import local
from drawdown.settings import Settings


def test_a_taken_port_names_the_port_and_the_setting_that_moves_it() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(local.LocalStackError) as failure:
            local.require_free_port(port, "DRAWDOWN_KAFKA_PORT", "the local Kafka broker")
    assert str(port) in str(failure.value)
    assert "DRAWDOWN_KAFKA_PORT" in str(failure.value)


def test_a_free_port_passes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    local.require_free_port(port, "DRAWDOWN_KAFKA_PORT", "the local Kafka broker")


@pytest.mark.parametrize("missing, hint", [("java", "Java 17"), ("mvn", "Maven")])
def test_missing_java_or_maven_names_what_to_install(monkeypatch, tmp_path: Path, missing: str, hint: str) -> None:
    real_which = local.shutil.which
    monkeypatch.setattr(local.shutil, "which", lambda tool: None if tool == missing else real_which(tool))
    settings = Settings(state_dir=tmp_path)
    with pytest.raises(local.LocalStackError) as failure:
        local.ensure_kafka_jars(settings)
    assert hint in str(failure.value)
    assert "install" in str(failure.value)


def test_a_component_that_dies_during_start_up_shows_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\nFATAL address already in use\n")
    with pytest.raises(local.LocalStackError) as failure:
        local.wait_until(lambda: False, 5, lambda: False, "Kafka", log)
    assert "exited during start-up" in str(failure.value)
    assert "FATAL address already in use" in str(failure.value)
    assert "line 0\n" not in str(failure.value)


def test_a_component_that_never_becomes_healthy_times_out_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "postgres.log"
    log.write_text("waiting for lock\n")
    with pytest.raises(local.LocalStackError) as failure:
        local.wait_until(lambda: False, 0.5, lambda: True, "PostgreSQL", log)
    assert "did not become healthy" in str(failure.value)
    assert "waiting for lock" in str(failure.value)


def test_the_broker_configuration_uses_the_configured_ports_and_keeps_facts_forever(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)
    properties = local.kafka_server_properties(settings)
    assert "listeners=PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093" in properties
    assert "controller.quorum.voters=1@127.0.0.1:29093" in properties
    assert "log.retention.hours=-1" in properties
    assert "auto.create.topics.enable=false" in properties


def test_stopping_a_recorded_process_stops_exactly_that_process(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    pid = local.spawn(settings, "sleeper", ["sleep", "60"])
    assert local.pid_alive(pid)
    local.stop_recorded(settings, "sleeper")
    assert not local.pid_alive(pid)
    assert not local.pid_file(settings, "sleeper").exists()


@pytest.mark.parametrize("formatted_for, asked", [("SASL_PLAINTEXT", "PLAINTEXT"), (None, "SASL_PLAINTEXT")])
def test_a_broker_storage_formatted_for_another_listener_is_refused_before_starting(tmp_path: Path, formatted_for,
                                                                                    asked) -> None:
    """Its SCRAM user exists from format time on, so the storage keeps the listener kind it was made for
    (storage from before the marker was PLAINTEXT)."""
    security = {} if asked == "PLAINTEXT" else {
        "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "u", "kafka_sasl_password": "p"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(state_dir=tmp_path, kafka_port=port, kafka_controller_port=port, **security)
    (local.kafka_dir(settings) / "data").mkdir(parents=True)
    (local.kafka_dir(settings) / "data" / "meta.properties").write_text("version=1\n")
    if formatted_for:
        (local.kafka_dir(settings) / "data-listener").write_text(formatted_for + "\n")
    with pytest.raises(local.LocalStackError) as refused:
        local.start_kafka(settings)
    assert f"formatted for a {formatted_for or 'PLAINTEXT'} listener, but the settings ask for {asked}" in \
        str(refused.value)
    assert "DRAWDOWN_STATE_DIR" in str(refused.value)
