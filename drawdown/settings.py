"""The one typed settings object every drawdown process reads.

Values come from environment variables (names below, case-insensitive) and then from the
defaults. `make up` and the local stack use the same names, and so do docker-compose.yml and the
Dockerfile: a test checks that they agree.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration for the local stack, the workers, the projector and the API."""

    # hide_input_in_errors: a refused configuration's error must not print the passwords it was given.
    model_config = SettingsConfigDict(env_prefix="DRAWDOWN_", extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

    # --- where the services are -------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "DRAWDOWN_KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers. Empty: the local broker that `make up` starts.",
    )
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_URL", "DRAWDOWN_DATABASE_URL"),
        description="PostgreSQL URL. Empty: the local server that `make up` starts.",
    )
    schema_registry_url: str = Field(
        default="",
        validation_alias=AliasChoices("SCHEMA_REGISTRY_URL", "DRAWDOWN_SCHEMA_REGISTRY_URL"),
        description="Confluent Schema Registry URL. Empty: Avro single-object encoding.",
    )

    # --- securing the connections (README: "Secured clusters") ---------------------------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How every Kafka client (confluent-kafka and Faust's) talks to the "
        "brokers: SSL is TLS, SASL_* authenticate with a user name and password (SASL_SSL over TLS).")
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="", description="SASL mechanism, with SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_username: str = Field(default="", description="SASL user, with SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_password: SecretStr = Field(default=SecretStr(""), description="SASL password, with SASL_PLAINTEXT "
                                           "or SASL_SSL; never printed or logged.")
    kafka_ssl_ca_file: Path | None = Field(default=None, description="PEM file of the CA that signed the brokers' "
                                           "certificates, with SSL or SASL_SSL. Empty: the system's CAs.")
    kafka_ssl_cert_file: Path | None = Field(default=None, description="PEM client certificate for brokers that "
                                             "require one (mutual TLS), with its key file.")
    kafka_ssl_key_file: Path | None = Field(default=None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr = Field(default=SecretStr(""), description="Password of an encrypted client "
                                              "key file; never printed or logged.")
    postgres_sslmode: Literal["", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="", description="libpq's sslmode for every PostgreSQL connection. Empty: the URL's, else libpq's "
        "default (prefer).")
    postgres_sslrootcert: Path | None = Field(default=None, description="PEM file of the CA that signed the "
                                              "PostgreSQL server's certificate (for verify-ca, verify-full).")
    postgres_sslcert: Path | None = Field(default=None, description="PEM client certificate for PostgreSQL, with "
                                          "its key file.")
    postgres_sslkey: Path | None = Field(default=None, description="Private key of the PostgreSQL client "
                                         "certificate (libpq wants it mode 0600).")

    # --- the embedded local stack -----------------------------------------------------------
    state_dir: Path = Field(default=PROJECT_ROOT / ".state", description="Data, logs and pids.")
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka version from Maven Central.")
    kafka_port: int = Field(default=19092, description="Local broker's client port.")
    kafka_controller_port: int = Field(default=19093, description="Local broker's KRaft controller port.")
    kafka_heap_mb: int = Field(default=512, description="Local broker's JVM heap.")
    postgres_port: int = Field(default=15432, description="Local PostgreSQL port.")
    postgres_os_user: str = Field(default="postgres", description="OS user that runs the local PostgreSQL (never root).")

    # --- topics and processing ----------------------------------------------------------------
    topic_prefix: str = Field(default="drawdown", description="Prefix of every topic name.")
    partitions: int = Field(default=6, ge=1, description="Partition count of every customer-keyed topic.")
    replication_factor: int = Field(default=1, ge=1, description="Replication factor of new topics.")
    grace_period_seconds: int = Field(default=3600, ge=0, le=72 * 3600, description="Period end to finalization.")
    dedupe_window_seconds: int = Field(default=35 * 86400, ge=86400, description="Meter event identifier uniqueness window.")
    receipt_bound_seconds: int = Field(default=3600, ge=0, description="How far a meter event's or cancel's "
                                       "received_at (stamped by its producer) may lie from the broker's append time "
                                       "(LogAppendTime on customer-facts), either way; beyond it the fact is "
                                       "dead-lettered (received_at_out_of_bound). Every window keyed on received_at "
                                       "rests on it. 0 trusts the producers' clocks (CreateTime): for loading "
                                       "history that carries its own times, as the tests do.")
    purge_state: bool = Field(default=True, description="Forget the worker's dedupe records and minute buckets "
                              "once nothing to come can read them (billing/retention.py), in its stores and, by "
                              "tombstones, in their changelogs: what bounds the worker's state.")
    live_balance_interval_ms: int = Field(default=250, ge=0, description="Least time between live-balance facts per customer.")
    low_balance_thresholds_minor: list[int] = Field(default=[0], description="Live-balance thresholds that raise an alert when crossed downward.")
    tick_interval_ms: int = Field(default=1000, ge=10, description="How often the ticker writes a time fact to every partition.")
    worker_data_dir: Path | None = Field(default=None, description="Faust worker state (rocksdict). Empty: state_dir/worker.")
    worker_web_port: int = Field(default=6066, description="Faust worker's web port.")

    # --- the API --------------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="API listen address.")
    api_port: int = Field(default=8000, description="API listen port.")
    api_processes: int = Field(default=2, ge=1, description="API processes serving the port (uvicorn workers, "
                               "restarted by uvicorn when one dies; the supervisor restarts the whole API). One "
                               "per core: reads are CPU-bound in Python, and one process holds one core at most.")
    read_your_writes_timeout_ms: int = Field(default=5000, ge=0, description="How long a command waits for its projection.")
    idempotency_lease_ms: int = Field(default=30_000, ge=1000, description="How long a request holds its Idempotency-Key "
                                      "before a retry may resume it; longer than a command can take (publish ack + "
                                      "read-your-writes wait).")
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest request body the API "
                                        "reads; a longer one answers 413 (by its Content-Length, or once that many "
                                        "bytes have streamed in).")
    rate_limit_per_second: float = Field(default=1000.0, ge=0, description="Requests per second each API key may "
                                         "make on average, across the api_processes (each holds a token bucket per "
                                         "key of 1/api_processes of the rate and burst); beyond it the "
                                         "API answers 429 rate_limit. 0 turns the limit off. On by default, and "
                                         "generous: ten times Stripe's 100/s, above the 500 requests/s the API "
                                         "benchmark sends, so the tests and benchmarks never meet it.")
    rate_limit_burst: int = Field(default=2000, ge=1, description="Requests a key may make at once after being idle "
                                  "(the bucket's size).")

    # --- webhooks (projections/webhooks.py) ---------------------------------------------------
    webhook_retry_first_seconds: float = Field(default=60.0, gt=0, description="Wait after a webhook delivery's first "
                                               "failed attempt; doubled after each further one.")
    webhook_retry_max_seconds: float = Field(default=6 * 3600.0, gt=0, description="Longest wait between two attempts "
                                             "of a webhook delivery.")
    webhook_retry_window_seconds: float = Field(default=3 * 86400.0, gt=0, description="How long a failing webhook "
                                                "delivery is retried after its first attempt (Stripe: up to 3 days).")
    webhook_disable_after_seconds: float = Field(default=3 * 86400.0, gt=0, description="An endpoint with no "
                                                 "successful delivery for this long since its first failure is "
                                                 "disabled (with a webhook_endpoint.disabled event).")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="How long a webhook POST may take.")
    webhook_lease_seconds: float = Field(default=30.0, gt=0, description="How long a dispatcher holds the deliveries "
                                         "it claimed: a killed one's are tried again after it. Above the timeout.")
    webhook_concurrency: int = Field(default=16, ge=1, description="Webhook POSTs in flight at once.")

    # --- retention (projections/retention.py) -----------------------------------------------------
    dead_letter_retention_days: int = Field(default=90, ge=0, le=36500, description="Days a dead letter is kept in "
                                            "PostgreSQL (0: for ever); the dead-letters topic keeps them too.")
    usage_bucket_retention_days: int = Field(default=0, ge=0, le=36500, description="Days of minute usage buckets "
                                             "kept in PostgreSQL, by whole months (0: for ever; else at least 45). "
                                             "Invoices keep each period's usage; the replay reads the raw facts.")

    @field_validator("usage_bucket_retention_days")
    @classmethod
    def _usage_buckets_outlive_lateness(cls, days: int) -> int:
        if 0 < days < 45:
            raise ValueError("keep usage buckets 0 (for ever) or at least 45 days: a bucket can still change for "
                             "35 days (the lateness limit) plus the grace period")
        return days

    @field_validator("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file", "postgres_sslrootcert",
                     "postgres_sslcert", "postgres_sslkey", mode="before")
    @classmethod
    def _empty_is_no_file(cls, value: object) -> object:
        return None if value == "" else value  # DRAWDOWN_KAFKA_SSL_CA_FILE= means unset, not "."

    @model_validator(mode="after")
    def _security_settings_agree(self) -> Settings:
        """Refuse combinations a client would ignore or fail on late, naming what to set."""
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        if sasl:
            missing = [name for name, value in (("DRAWDOWN_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                                                ("DRAWDOWN_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                                                ("DRAWDOWN_KAFKA_SASL_PASSWORD",
                                                 self.kafka_sasl_password.get_secret_value())) if not value]
            if missing:
                raise ValueError(f"DRAWDOWN_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)} "
                                 "(mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        elif self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password.get_secret_value():
            raise ValueError(f"the DRAWDOWN_KAFKA_SASL_* settings are set but DRAWDOWN_KAFKA_SECURITY_PROTOCOL="
                             f"{protocol} does not use them: set it to SASL_PLAINTEXT or SASL_SSL, or unset them")
        tls_files = {"DRAWDOWN_KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
                     "DRAWDOWN_KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
                     "DRAWDOWN_KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file}
        if not tls and (any(tls_files.values()) or self.kafka_ssl_key_password.get_secret_value()):
            raise ValueError(f"the DRAWDOWN_KAFKA_SSL_* settings are set but DRAWDOWN_KAFKA_SECURITY_PROTOCOL="
                             f"{protocol} does not use TLS: set it to SSL or SASL_SSL, or unset them")
        pg_files = {"DRAWDOWN_POSTGRES_SSLROOTCERT": self.postgres_sslrootcert,
                    "DRAWDOWN_POSTGRES_SSLCERT": self.postgres_sslcert,
                    "DRAWDOWN_POSTGRES_SSLKEY": self.postgres_sslkey}
        if self.postgres_sslmode == "disable" and any(pg_files.values()):
            raise ValueError("DRAWDOWN_POSTGRES_SSLMODE=disable but PostgreSQL TLS files are set: "
                             "choose require, verify-ca or verify-full, or unset the files")
        files = {**tls_files, **pg_files}
        for cert, key in (("DRAWDOWN_KAFKA_SSL_CERT_FILE", "DRAWDOWN_KAFKA_SSL_KEY_FILE"),
                          ("DRAWDOWN_POSTGRES_SSLCERT", "DRAWDOWN_POSTGRES_SSLKEY")):
            if bool(files[cert]) != bool(files[key]):
                raise ValueError(f"a client certificate goes with its key: set both {cert} and {key}, or neither")
        # A missing file would surface later as a TLS handshake failure that names no setting.
        for name, path in files.items():
            if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
                raise ValueError(f"{name}={path} is not a readable file")
        if self.database_url and self._postgres_tls_parameters():
            import psycopg

            try:
                given = psycopg.conninfo.conninfo_to_dict(self.database_url)
            except psycopg.ProgrammingError:  # a malformed URL: the first connection says so
                given = {}
            for key, value in self._postgres_tls_parameters().items():
                if key in given and given[key] != value:
                    raise ValueError(f"DATABASE_URL sets {key}={given[key]} but DRAWDOWN_POSTGRES_{key.upper()}="
                                     f"{value}: keep one of them")
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def effective_kafka_bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def postgres_password_file(self) -> Path:
        """The local server's password (deploy/local.py writes it, mode 0600, before the server exists)."""
        return self.state_dir / "postgres-password"

    @property
    def effective_database_url(self) -> str:
        """The URL every PostgreSQL connection uses, with the DRAWDOWN_POSTGRES_SSL* settings in its
        query (libpq reads sslmode, sslrootcert, sslcert and sslkey from there)."""
        if self.database_url:
            url = self.database_url
        else:
            try:
                credentials = f"drawdown:{self.postgres_password_file.read_text().strip()}"
            except FileNotFoundError:  # a cluster from before passwords, until `make up` switches it
                credentials = "drawdown"
            url = f"postgresql://{credentials}@127.0.0.1:{self.postgres_port}/drawdown"
        parameters = self._postgres_tls_parameters()
        if not parameters:
            return url
        if "://" not in url:  # a key=value conninfo: libpq reads the parameters there too
            from psycopg.conninfo import make_conninfo

            return make_conninfo(url, **parameters)
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        query.update(parameters)
        # Slashes of file paths quoted too: callers derive sibling databases at the URL's last "/".
        return urlunsplit(parts._replace(query="&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())))

    def _postgres_tls_parameters(self) -> dict[str, str]:
        values = {"sslmode": self.postgres_sslmode, "sslrootcert": self.postgres_sslrootcert,
                  "sslcert": self.postgres_sslcert, "sslkey": self.postgres_sslkey}
        return {key: str(value) for key, value in values.items() if value}

    def kafka_client_config(self) -> dict[str, Any]:
        """bootstrap.servers and the security settings of a confluent-kafka (librdkafka) client:
        every Producer, Consumer and AdminClient starts from this."""
        config: dict[str, Any] = {"bootstrap.servers": self.effective_kafka_bootstrap_servers,
                                  "security.protocol": self.kafka_security_protocol.lower()}
        if self.kafka_security_protocol.startswith("SASL_"):
            config.update({"sasl.mechanism": self.kafka_sasl_mechanism,
                           "sasl.username": self.kafka_sasl_username,
                           "sasl.password": self.kafka_sasl_password.get_secret_value()})
        optional = {"ssl.ca.location": self.kafka_ssl_ca_file, "ssl.certificate.location": self.kafka_ssl_cert_file,
                    "ssl.key.location": self.kafka_ssl_key_file,
                    "ssl.key.password": self.kafka_ssl_key_password.get_secret_value()}
        config.update({key: str(value) for key, value in optional.items() if value})
        return config

    def faust_broker_credentials(self) -> Any:
        """The same security settings for Faust's aiokafka clients (broker_credentials=): None for
        PLAINTEXT, else faust.SSLCredentials or faust.SASLCredentials (over TLS with SASL_SSL)."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return None
        import faust

        context = None
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            context = create_ssl_context(
                cafile=str(self.kafka_ssl_ca_file) if self.kafka_ssl_ca_file else None,
                certfile=str(self.kafka_ssl_cert_file) if self.kafka_ssl_cert_file else None,
                keyfile=str(self.kafka_ssl_key_file) if self.kafka_ssl_key_file else None,
                password=self.kafka_ssl_key_password.get_secret_value() or None)
        if self.kafka_security_protocol == "SSL":
            return faust.SSLCredentials(context)
        return faust.SASLCredentials(username=self.kafka_sasl_username,
                                     password=self.kafka_sasl_password.get_secret_value(),
                                     mechanism=self.kafka_sasl_mechanism, ssl_context=context)

    def kafka_security_env(self) -> dict[str, str]:
        """The security settings as the environment variables a child process reads them from."""
        values = {"DRAWDOWN_KAFKA_SECURITY_PROTOCOL": self.kafka_security_protocol,
                  "DRAWDOWN_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
                  "DRAWDOWN_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
                  "DRAWDOWN_KAFKA_SASL_PASSWORD": self.kafka_sasl_password.get_secret_value(),
                  "DRAWDOWN_KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
                  "DRAWDOWN_KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
                  "DRAWDOWN_KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file,
                  "DRAWDOWN_KAFKA_SSL_KEY_PASSWORD": self.kafka_ssl_key_password.get_secret_value()}
        return {name: str(value or "") for name, value in values.items()}

    def topic(self, name: str) -> str:
        """Full topic name, e.g. topic('customer-facts') -> 'drawdown.customer-facts'."""
        return f"{self.topic_prefix}.{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def database_name(url: str) -> str:
    """The database a PostgreSQL URL (or key=value conninfo) names."""
    if "://" not in url:
        from psycopg.conninfo import conninfo_to_dict

        return str(conninfo_to_dict(url).get("dbname", ""))
    return unquote(urlsplit(url).path.lstrip("/"))


def with_database(url: str, name: str) -> str:
    """The same server, user and parameters (sslmode, ...) with another database: what tests,
    benchmarks and the local stack use to reach a sibling database (cutting a URL at its last "/"
    would keep the query in the name, or drop it)."""
    if "://" not in url:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(url, dbname=name)
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(name, safe="")))
