"""The embedded local stack: a real Kafka broker and a real PostgreSQL server, no Docker.

- Kafka: a KRaft single-node broker (broker + controller in one JVM) assembled from Maven
  Central with deploy/kafka/pom.xml, cached under the state folder, storage formatted once.
- PostgreSQL: Debian's postgresql package (installed when missing and we may), run as a
  non-root OS user because the server refuses root.
- Engine processes (workers, projector, API) register themselves in ENGINE_PROCESSES.

Everything lives in the git-ignored state folder (settings.state_dir, default .state/):
data, logs/ and pids/. Processes are stopped by the pid they recorded, never by name.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from drawdown.settings import PROJECT_ROOT, Settings, database_name, with_database

POM_FILE = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_READY_TIMEOUT_S = 90.0
POSTGRES_READY_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 30


class LocalStackError(RuntimeError):
    """A local service could not be set up or started; the message says what to do."""


def say(message: str) -> None:
    print(f"[drawdown] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# processes: pid files, liveness, stopping
# --------------------------------------------------------------------------------------------


def pid_file(settings: Settings, name: str) -> Path:
    return settings.state_dir / "pids" / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.logs_dir / f"{name}.log"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


def spawn(settings: Settings, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
          cwd: Path | None = None, user: str | None = None) -> int:
    """Start `argv` in the background in its own session, stdout+stderr to logs/<name>.log."""
    return start_process(settings, name, argv, env, cwd, user).pid


def start_process(settings: Settings, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                  cwd: Path | None = None, user: str | None = None) -> subprocess.Popen:
    """spawn(), returning the child (its parent can read its exit status)."""
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    pid_file(settings, name).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file(settings, name), "ab") as log:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd or PROJECT_ROOT, env={**os.environ, **(env or {})}, start_new_session=True,
            user=user,
        )
    pid_file(settings, name).write_text(f"{process.pid}\n")
    return process


def stop_pid(pid: int, name: str, timeout_s: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL: the process group we started, by its recorded pid."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                say(f"stopped {name} (pid {pid})")
                return
            time.sleep(0.1)
    raise LocalStackError(f"{name} (pid {pid}) did not stop; check it with `ps -p {pid}`")


def wait_until(check: Callable[[], bool], timeout_s: float, alive: Callable[[], bool],
               what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise LocalStackError(f"{what} exited during start-up. Last lines of {log}:\n{tail(log)}")
        time.sleep(0.3)
    raise LocalStackError(f"{what} did not become healthy in {timeout_s:.0f} s. Last lines of {log}:\n{tail(log)}")


def require_free_port(port: int, setting: str, owner: str) -> None:
    if port_open(port):
        raise LocalStackError(
            f"port {port} is already taken by another program, so {owner} cannot listen there; "
            f"free it or move {owner} with the setting {setting}=<port>")


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def kafka_dir(settings: Settings) -> Path:
    return settings.state_dir / "kafka"


def kafka_libs_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / f"libs-{settings.kafka_version}"


def require_tool(tool: str, install_hint: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise LocalStackError(f"`{tool}` is not installed; {install_hint}")
    return found


def java_major_version(java: str) -> int:
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    quoted = output.split('"')[1] if '"' in output else "0"
    major = quoted.split(".")[0]
    return int(major) if major.isdigit() else 0


def ensure_kafka_jars(settings: Settings) -> Path:
    """Resolve the broker's jars from Maven Central once; later runs reuse the cache."""
    libs = kafka_libs_dir(settings)
    done_marker = libs / ".complete"
    if done_marker.exists():
        return libs
    java = require_tool("java", "install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)")
    if java_major_version(java) < 17:
        raise LocalStackError("Kafka needs Java 17 or newer; install it (Debian: apt-get install openjdk-17-jre-headless)")
    mvn = require_tool("mvn", "install Maven (Debian: apt-get install maven)")
    say(f"resolving Apache Kafka {settings.kafka_version} from Maven Central into {libs} (once) ...")
    shutil.rmtree(libs, ignore_errors=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    maven_log = log_file(settings, "maven")
    with open(maven_log, "w") as log:
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(POM_FILE), "dependency:copy-dependencies",
             f"-Dkafka.version={settings.kafka_version}", "-DincludeScope=runtime",
             f"-DoutputDirectory={libs}"],
            stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise LocalStackError(
            f"Maven could not resolve Kafka {settings.kafka_version}. Last lines of {maven_log}:\n{tail(maven_log)}\n"
            "Check that Maven Central is reachable, or set DRAWDOWN_KAFKA_VERSION to a published version.")
    done_marker.write_text(settings.kafka_version)
    return libs


# Characters the local broker accepts in its SCRAM user and password: both go unescaped into
# server.properties (JAAS) and into `kafka-storage format --add-scram`.
LOCAL_SCRAM_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class BrokerTls:
    """The local broker's own TLS material, for an SSL or SASL_SSL listener (tests make it):
    `keystore` holds its private key (PKCS#8 PEM, unencrypted) and certificate chain, for 127.0.0.1;
    `ca` the CA certificate it trusts (itself, on the inter-broker connection). Clients trust `ca`
    through DRAWDOWN_KAFKA_SSL_CA_FILE."""

    keystore: Path
    ca: Path


@dataclass(frozen=True)
class PostgresTls:
    """The local PostgreSQL server's own TLS material (tests make it): its certificate for
    127.0.0.1 and its private key (PEM). The server then takes TLS connections only (hostssl);
    clients trust its CA through DRAWDOWN_POSTGRES_SSLROOTCERT."""

    certificate: Path
    key: Path


def _install_postgres_tls(tls: PostgresTls, data: Path, owner: Any) -> str:
    """Copy the server's certificate and key into its data folder (the key readable by its user
    alone, as the server demands), make pg_hba.conf accept TLS connections only; -> server options."""
    for source, name in ((tls.certificate, "server.crt"), (tls.key, "server.key")):
        target = data / name
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(source.read_bytes())
        if owner:
            os.chown(target, owner.pw_uid, owner.pw_gid)
    hba = data / "pg_hba.conf"
    lines = [("hostssl" + line[len("host"):]) if line.startswith("host ") else line
             for line in hba.read_text().splitlines(keepends=True)]
    hba.write_text("".join(lines))  # in place: the file keeps its owner (the server's user)
    return " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"


def local_kafka_listener(settings: Settings, tls: BrokerTls | None = None) -> str:
    """The local broker's client listener, from the clients' own settings: PLAINTEXT, or
    SASL_PLAINTEXT with SCRAM (its one user is DRAWDOWN_KAFKA_SASL_USERNAME/PASSWORD, created when
    the storage is formatted); SSL or SASL_SSL with SCRAM too when given its TLS material. The
    controller listener stays PLAINTEXT on 127.0.0.1."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    served = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL") if tls else ("PLAINTEXT", "SASL_PLAINTEXT")
    if protocol not in served or (protocol.startswith("SASL_") and not mechanism.startswith("SCRAM-")):
        raise LocalStackError(
            f"the local broker speaks {', '.join(served)} (SASL: SCRAM only), not {protocol}"
            f"{' ' + mechanism if mechanism else ''}: set DRAWDOWN_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT and "
            "DRAWDOWN_KAFKA_SASL_MECHANISM=SCRAM-SHA-512, or point KAFKA_BOOTSTRAP_SERVERS at your cluster")
    if not protocol.startswith("SASL_"):
        return protocol
    for name, value in (("DRAWDOWN_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                        ("DRAWDOWN_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password.get_secret_value())):
        if not set(value) <= LOCAL_SCRAM_CHARACTERS:
            raise LocalStackError(f"for the local broker, {name} may hold only letters, digits, '.', '_' and '-'")
    return protocol


def kafka_server_properties(settings: Settings, tls: BrokerTls | None = None) -> str:
    data = kafka_dir(settings) / "data"
    listener = local_kafka_listener(settings, tls)
    security = []
    if listener.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism
        # The broker talks to itself over the same listener, as the same user.
        security += [f"sasl.enabled.mechanisms={mechanism}",
                     f"sasl.mechanism.inter.broker.protocol={mechanism}",
                     f"listener.name.{listener.lower()}.{mechanism.lower()}.sasl.jaas.config="
                     "org.apache.kafka.common.security.scram.ScramLoginModule required "
                     f'username="{settings.kafka_sasl_username}" '
                     f'password="{settings.kafka_sasl_password.get_secret_value()}";']
    if tls and listener.endswith("SSL"):
        security += ["ssl.keystore.type=PEM", f"ssl.keystore.location={tls.keystore}",
                     "ssl.truststore.type=PEM", f"ssl.truststore.location={tls.ca}"]
    if listener == "SSL":  # without SASL, a client certificate signed by the CA is the login (mutual TLS)
        security.append("ssl.client.auth=required")
    return "\n".join([
        "# Written by deploy/local.py: a single-node KRaft broker+controller for development and tests.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{settings.kafka_controller_port}",
        f"listeners={listener}://127.0.0.1:{settings.kafka_port},CONTROLLER://127.0.0.1:{settings.kafka_controller_port}",
        f"advertised.listeners={listener}://127.0.0.1:{settings.kafka_port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={listener}",
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
        *security,
        f"log.dirs={data}",
        "num.partitions=1",
        # One node: every internal topic at replication factor 1, and few partitions, because the
        # defaults (50 partitions for offsets/transactions) make the first group join slow on 2 cores.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=3",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Topics are created explicitly with their partition count and retention (co-partitioning).
        "auto.create.topics.enable=false",
        # Meter events must stay replayable for the whole 35-day lateness window and beyond.
        "log.retention.hours=-1",
        "",
    ])


def kafka_log4j_properties(settings: Settings) -> str:
    return "\n".join([
        "status = warn",
        # Rolled at 64 MiB, three kept: a broker that runs for weeks must not fill the disk.
        "appender.file.type = RollingFile",
        "appender.file.name = file",
        f"appender.file.fileName = {log_file(settings, 'kafka')}",
        f"appender.file.filePattern = {log_file(settings, 'kafka')}.%i",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "appender.file.policies.type = Policies",
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
        "appender.file.policies.size.size = 64MB",
        "appender.file.strategy.type = DefaultRolloverStrategy",
        "appender.file.strategy.max = 3",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = file",
        "logger.state.name = state.change.logger",
        "logger.state.level = WARN",
        "",
    ])


def kafka_ready(settings: Settings, bootstrap: str | None = None) -> bool:
    """Whether the broker at `bootstrap` (default: the settings') answers a client with the settings' security."""
    from confluent_kafka.admin import AdminClient
    bootstrap = bootstrap or settings.effective_kafka_bootstrap_servers
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    # Probe the socket first: a client against a closed port floods stderr with connect errors.
    if port.isdigit() and not port_open(int(port), host or "127.0.0.1"):
        return False
    try:
        admin = AdminClient({**settings.kafka_client_config(), "bootstrap.servers": bootstrap,
                             "socket.timeout.ms": 2000})
        admin.list_topics(timeout=2)
        return True
    except Exception:  # noqa: BLE001 - any failure just means "not yet"
        return False


def kafka_running(settings: Settings) -> bool:
    return pid_alive(read_pid(pid_file(settings, "kafka")))


def start_kafka(settings: Settings, jars: Settings | None = None, tls: BrokerTls | None = None) -> str:
    """Start the local broker unless it already runs; return its bootstrap address. Its client
    listener follows the settings' security (local_kafka_listener; `tls`: its own certificate for
    SSL or SASL_SSL); `jars`: settings whose state folder already caches the broker's jars
    (default: these)."""
    bootstrap = f"127.0.0.1:{settings.kafka_port}"
    listener = local_kafka_listener(settings, tls)
    if kafka_running(settings):
        wait_until(lambda: kafka_ready(settings, bootstrap), KAFKA_READY_TIMEOUT_S, lambda: kafka_running(settings),
                   "Kafka", log_file(settings, "kafka"))
        return bootstrap
    require_free_port(settings.kafka_port, "DRAWDOWN_KAFKA_PORT", "the local Kafka broker")
    require_free_port(settings.kafka_controller_port, "DRAWDOWN_KAFKA_CONTROLLER_PORT", "the local Kafka controller")
    home = kafka_dir(settings)
    # The SCRAM user exists only from format time: storage formatted for another listener would
    # refuse (or not need) the clients' credentials.
    formatted_for = home / "data-listener"
    if (home / "data" / "meta.properties").exists():
        before = formatted_for.read_text().strip() if formatted_for.exists() else "PLAINTEXT"
        if before != listener:
            raise LocalStackError(
                f"the local broker's storage in {home / 'data'} was formatted for a {before} listener, but the settings "
                f"ask for {listener}: use another DRAWDOWN_STATE_DIR (and ports), or `drawdown reset` this one")
    libs = ensure_kafka_jars(jars or settings)
    java = require_tool("java", "install Java 17 or newer")
    (home / "data").mkdir(parents=True, exist_ok=True)
    properties = home / "server.properties"
    # Mode 0600 before the text goes in: with SCRAM it holds the broker's password.
    with open(os.open(properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(kafka_server_properties(settings, tls))
    log4j = home / "log4j2.properties"
    log4j.write_text(kafka_log4j_properties(settings))
    classpath = f"{libs}/*"
    logging_flag = f"-Dlog4j2.configurationFile={log4j}"
    if not (home / "data" / "meta.properties").exists():
        say("formatting Kafka storage (once) ...")
        cluster_id = base64_uuid()
        scram = []
        if listener.startswith("SASL_"):  # KIP-900: SCRAM users of a KRaft cluster are created at format time
            scram = ["--add-scram", f'{settings.kafka_sasl_mechanism}=[name="{settings.kafka_sasl_username}",'
                                    f'password="{settings.kafka_sasl_password.get_secret_value()}"]']
        result = subprocess.run(
            [java, "-cp", classpath, logging_flag, "kafka.tools.StorageTool", "format",
             "-t", cluster_id, "-c", str(properties), *scram], capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalStackError(f"Kafka storage format failed:\n{result.stdout}{result.stderr}")
        formatted_for.write_text(listener + "\n")
    say(f"starting Kafka on {bootstrap} ({listener}) ...")
    pid = spawn(settings, "kafka", [
        java, f"-Xms{min(256, settings.kafka_heap_mb)}m", f"-Xmx{settings.kafka_heap_mb}m", "-XX:+UseG1GC",
        "-XX:TieredStopAtLevel=1",  # faster start-up on 2 cores; the broker is I/O bound here
        "-cp", classpath, logging_flag, "kafka.Kafka", str(properties)],
    )
    # log4j2 and the JVM's own stdout/stderr both append (O_APPEND) to logs/kafka.log (after a
    # roll-over the JVM's rare own lines land in kafka.log.1: start-up failures come before any).
    wait_until(lambda: kafka_ready(settings, bootstrap), KAFKA_READY_TIMEOUT_S, lambda: pid_alive(pid),
               "Kafka", log_file(settings, "kafka"))
    return bootstrap


def base64_uuid() -> str:
    """A random cluster id as Kafka makes one (Uuid.randomUuid): base64 of a UUID, drawn again when
    it begins with "-", which `kafka-storage format -t` would read as an option."""
    import base64
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """Debian's server binaries live in /usr/lib/postgresql/<major>/bin; take the newest."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def ensure_postgres_installed() -> Path:
    found = postgres_bin_dir()
    if found:
        return found
    if os.geteuid() != 0 and not shutil.which("sudo"):
        raise LocalStackError("PostgreSQL is not installed; install Debian's package: sudo apt-get install postgresql, "
                              "or set DATABASE_URL to a server you have")
    say("installing PostgreSQL from Debian's packages (once) ...")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        result = subprocess.run(prefix + argv, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalStackError(f"`{' '.join(argv)}` failed:\n{result.stderr[-2000:]}\n"
                                  "Install PostgreSQL yourself or set DATABASE_URL.")
    found = postgres_bin_dir()
    if not found:
        raise LocalStackError("PostgreSQL installed but pg_ctl not found under /usr/lib/postgresql/*/bin")
    return found


def postgres_os_user(settings: Settings) -> str | None:
    """The user that runs the server: ourselves, or (as root, which it refuses) a system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(settings.postgres_os_user)
    except KeyError as exc:
        raise LocalStackError(f"PostgreSQL refuses to run as root and there is no OS user "
                              f"{settings.postgres_os_user!r}; create one or set DRAWDOWN_POSTGRES_OS_USER") from exc
    return settings.postgres_os_user


def run_as(user: str | None, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    # From "/": the server's user may not be allowed into the current folder (a clone under /root).
    kwargs.setdefault("cwd", "/")
    return subprocess.run(list(argv), user=user, capture_output=True, text=True, **kwargs)


def postgres_home(settings: Settings, create: bool = True) -> Path:
    """Where the cluster lives: in the state folder, unless the server's OS user cannot reach it
    (a clone under /root, say); then in a folder of its own under /var/tmp, recorded in a link.
    With create=False (status) nothing is made: the recorded place, else the state folder."""
    in_state = settings.state_dir / "postgres"
    user = postgres_os_user(settings)
    if user is None:
        return in_state
    link = settings.state_dir / "postgres-home"
    if link.is_symlink() or link.exists():
        return Path(os.readlink(link)) if link.is_symlink() else link
    if not create:
        return in_state
    in_state.mkdir(parents=True, exist_ok=True)
    os.chown(in_state, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    if run_as(user, ["test", "-w", str(in_state)]).returncode == 0:
        return in_state
    digest = hashlib.sha256(str(settings.state_dir.resolve()).encode()).hexdigest()[:12]
    elsewhere = Path("/var/tmp") / f"drawdown-postgres-{digest}"
    elsewhere.mkdir(parents=True, exist_ok=True)
    os.chown(elsewhere, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    link.symlink_to(elsewhere)
    return elsewhere


def postgres_log_file(settings: Settings, create: bool = True) -> Path:
    """The server's own log: in logs/ with the others, unless the cluster had to move out of the
    state folder; then next to the cluster, where the server's OS user can write it."""
    home = postgres_home(settings, create)
    return log_file(settings, "postgres") if home == settings.state_dir / "postgres" else home / "postgres.log"


def postgres_password(settings: Settings) -> str:
    """The local server's password for the role drawdown, generated once into the state folder (0600)."""
    path = settings.postgres_password_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_hex(24) + "\n")
    return path.read_text().strip()


def hide_password(url: str) -> str:
    """A database URL fit for a terminal or a log: the password, if any, replaced by ***."""
    scheme, separator, rest = url.partition("://")
    credentials, at, where = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{separator}{credentials.split(':', 1)[0]}:***@{where}"


def require_password_authentication(settings: Settings, url: str, data: Path) -> None:
    """Switch a cluster created with `trust` (before drawdown used passwords) to scram-sha-256:
    set the role's password while trust still lets us in, then rewrite pg_hba.conf and reload."""
    hba = data / "pg_hba.conf"
    lines = hba.read_text().splitlines(keepends=True)
    trusting = [i for i, line in enumerate(lines)
                if line.strip() and not line.lstrip().startswith("#") and line.split()[-1] == "trust"]
    if not trusting:
        return
    import psycopg
    from psycopg import sql

    say("switching the local PostgreSQL from trust to password authentication (once) ...")
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as connection:
        connection.execute("set password_encryption = 'scram-sha-256'")
        connection.execute(sql.SQL("alter role drawdown password {}").format(sql.Literal(postgres_password(settings))))
        for i in trusting:
            lines[i] = lines[i].rstrip()[: -len("trust")] + "scram-sha-256\n"
        hba.write_text("".join(lines))  # in place: the file keeps its owner (the server's user)
        connection.execute("select pg_reload_conf()")


def postgres_ready(settings: Settings, url: str) -> bool:
    import psycopg
    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            connection.execute("select 1")
        return True
    except Exception:  # noqa: BLE001 - any failure just means "not yet"
        return False


def postgres_pid(settings: Settings, create: bool = True) -> int | None:
    return read_pid(postgres_home(settings, create) / "data" / "postmaster.pid")


def start_postgres(settings: Settings, tls: PostgresTls | None = None) -> str:
    """Start the local server unless DATABASE_URL points elsewhere; return the URL to use. With
    `tls`, the server takes TLS connections only, with that certificate."""
    if settings.database_url:
        if not postgres_ready(settings, settings.database_url):
            raise LocalStackError("DATABASE_URL is set but the server does not answer; start it or unset DATABASE_URL")
        return settings.database_url
    password = postgres_password(settings)
    url = settings.effective_database_url
    bin_dir = ensure_postgres_installed()
    user = postgres_os_user(settings)
    home = postgres_home(settings)
    data = home / "data"
    sockets = home / "run"
    log = postgres_log_file(settings)
    if pid_alive(postgres_pid(settings)):
        wait_until(lambda: postgres_ready(settings, url), POSTGRES_READY_TIMEOUT_S,
                   lambda: pid_alive(postgres_pid(settings)), "PostgreSQL", log)
        require_password_authentication(settings, url, data)
        return url
    require_free_port(settings.postgres_port, "DRAWDOWN_POSTGRES_PORT", "the local PostgreSQL server")
    home.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    owner = pwd.getpwnam(user) if user else None
    if owner:
        for path in (home, sockets, log):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    if not (data / "PG_VERSION").exists():
        say(f"creating a PostgreSQL cluster in {data} (once) ...")
        # initdb reads the password from a file its user can read; it lives only as long as initdb runs.
        password_file = home / ".initdb-password"
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(password + "\n")
        if owner:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        try:
            result = run_as(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", "drawdown",
                                   "--auth=scram-sha-256", f"--pwfile={password_file}", "--encoding=UTF8",
                                   "--no-instructions"])
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LocalStackError(f"initdb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    say(f"starting PostgreSQL on 127.0.0.1:{settings.postgres_port} ...")
    options = (f"-p {settings.postgres_port} -c listen_addresses=127.0.0.1 -k {sockets} "
               # Development and test server: durability of single commits is not worth the fsyncs.
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    if tls is not None:
        options += _install_postgres_tls(tls, data, owner)
    result = run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                           "-w", "-t", str(int(POSTGRES_READY_TIMEOUT_S)), "start"])
    if result.returncode != 0:
        raise LocalStackError(f"PostgreSQL did not start. Last lines of {log}:\n{tail(log)}\n{result.stderr}")
    wait_until(lambda: postgres_ready(settings, with_database(url, "postgres")), POSTGRES_READY_TIMEOUT_S,
               lambda: pid_alive(postgres_pid(settings)), "PostgreSQL", log)
    require_password_authentication(settings, url, data)
    ensure_database(url)
    return url


def ensure_database(url: str) -> None:
    """Create the URL's database if it does not exist yet."""
    import psycopg
    from psycopg import sql
    database = database_name(url)
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as connection:
        exists = connection.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
        if not exists:
            connection.execute(sql.SQL("create database {}").format(sql.Identifier(database)))


def stop_postgres(settings: Settings) -> None:
    if settings.database_url:
        return
    bin_dir = postgres_bin_dir()
    pid = postgres_pid(settings) if bin_dir else None
    if not pid_alive(pid):
        return
    data = postgres_home(settings) / "data"
    result = run_as(postgres_os_user(settings), [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    if result.returncode != 0:
        stop_pid(pid, "postgres")
    else:
        say(f"stopped postgres (pid {pid})")


# --------------------------------------------------------------------------------------------
# engine processes and the whole stack
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineProcess:
    """A drawdown process that `make up` runs: `drawdown <command>`, healthy when `ready()`."""

    name: str
    command: tuple[str, ...]
    describe: Callable[[Settings], str]
    ready: Callable[[Settings], bool] = lambda settings: True


def engine_processes() -> list[EngineProcess]:
    """The engine's long-running processes, in start order, from each package's commands module."""
    from drawdown.cli import command_modules

    return [process for module in command_modules() for process in getattr(module, "ENGINE_PROCESSES", ())]


def engine_env(settings: Settings, bootstrap: str, database_url: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url,
            "DRAWDOWN_STATE_DIR": str(settings.state_dir), "PYTHONUNBUFFERED": "1"}


def supervisor_running(settings: Settings) -> bool:
    return pid_alive(read_pid(pid_file(settings, "supervisor")))


def start_engine(settings: Settings, bootstrap: str, database_url: str) -> None:
    """Start the supervisor (deploy/supervisor.py), which starts the engine processes and restarts
    them when they exit; wait until each is ready."""
    from deploy.supervisor import read_status

    if not supervisor_running(settings):
        say("starting the supervisor of the engine processes ...")
        spawn(settings, "supervisor", [sys.executable, "-m", "drawdown", "supervise"],
              env=engine_env(settings, bootstrap, database_url))

    def running(name: str) -> bool:
        status = read_status(settings) if supervisor_running(settings) else None
        if status is None or name not in status["processes"]:
            return supervisor_running(settings)  # still starting the ones before it
        return status["processes"][name]["quick_exits"] == 0

    for process in engine_processes():
        wait_until(lambda p=process: p.ready(settings), 90, lambda p=process: running(p.name), process.name,
                   log_file(settings, process.name))


def up(settings: Settings, with_engine: bool = True) -> dict[str, str]:
    """Bring the stack up (idempotent) and return what listens where."""
    started_at = time.monotonic()
    bootstrap = settings.kafka_bootstrap_servers or start_kafka(settings)
    if settings.kafka_bootstrap_servers and not kafka_ready(settings, bootstrap):
        raise LocalStackError(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer; start that broker or unset the variable")
    database_url = start_postgres(settings)
    if with_engine:
        start_engine(settings, bootstrap, database_url)
    say(f"up in {time.monotonic() - started_at:.1f} s")
    return {"kafka": bootstrap, "postgres": database_url}


def down(settings: Settings) -> None:
    """Stop what `up` started, newest first, by recorded pid."""
    stop_recorded(settings, "supervisor", timeout_s=60.0)  # it stops the engine processes first
    for process in reversed(engine_processes()):
        stop_recorded(settings, process.name)
    stop_postgres(settings)
    stop_recorded(settings, "kafka")


def stop_recorded(settings: Settings, name: str, timeout_s: float = 20.0) -> None:
    path = pid_file(settings, name)
    pid = read_pid(path)
    if pid_alive(pid):
        stop_pid(pid, name, timeout_s)
    path.unlink(missing_ok=True)


def status_lines(settings: Settings) -> list[str]:
    lines = []
    kafka_pid = read_pid(pid_file(settings, "kafka"))
    lines.append(_status("kafka", pid_alive(kafka_pid), kafka_pid,
                         settings.effective_kafka_bootstrap_servers, log_file(settings, "kafka")))
    if settings.database_url:
        lines.append(f"  postgres   external        {hide_password(settings.database_url)}")
    else:
        pg_pid = postgres_pid(settings, create=False) if postgres_bin_dir() else None
        where = (f"{hide_password(settings.effective_database_url)} "
                 f"(password in {settings.postgres_password_file}, mode 0600)")
        lines.append(_status("postgres", pid_alive(pg_pid), pg_pid, where, postgres_log_file(settings, create=False)))
    from deploy.supervisor import describe, read_status

    supervisor_pid = read_pid(pid_file(settings, "supervisor"))
    supervised = read_status(settings)
    lines.append(_status("supervisor", pid_alive(supervisor_pid), supervisor_pid,
                         "restarts an engine process that exits (1 s, 2 s, 4 s ... 30 s)",
                         log_file(settings, "supervisor")))
    for process in engine_processes():
        pid = read_pid(pid_file(settings, process.name))
        entry = supervised["processes"].get(process.name) if supervised else None
        trouble = describe(entry) if entry else None
        if trouble:  # crash-looping or waiting to restart: say so, not just "down"
            lines.append(f"  {process.name:<10} {trouble}\n  {'':<10} {'':<15} {process.describe(settings)}")
            continue
        state = None
        if pid_alive(pid) and entry and entry["restarts"]:
            state = f"up (pid {pid}), restarted {entry['restarts']}x, last {entry['last_exit']}"
        elif pid_alive(pid) and not supervised:
            state = f"up (pid {pid}), not supervised"
        lines.append(_status(process.name, pid_alive(pid), pid, process.describe(settings),
                             log_file(settings, process.name), state))
    return lines


def _status(name: str, alive: bool, pid: int | None, where: str, log: Path, state: str | None = None) -> str:
    state = state or (f"up (pid {pid})" if alive else "down")
    return f"  {name:<10} {state:<15} {where}\n  {'':<10} {'':<15} log: {log}"


def reset(settings: Settings) -> None:
    """Stop everything and delete all local state (including a Postgres home outside it)."""
    down(settings)
    link = settings.state_dir / "postgres-home"
    if link.is_symlink():
        shutil.rmtree(os.readlink(link), ignore_errors=True)
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    say(f"deleted {settings.state_dir}")
