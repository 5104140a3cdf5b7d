"""docker-compose.yml, deploy/Dockerfile and .dockerignore agree with the code.

No Docker engine runs where these tests run, so nothing here starts a container: the files are
parsed and checked against drawdown.settings.Settings, pyproject.toml and the repository tree.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, AliasPath, TypeAdapter

from deploy.local import engine_processes
from drawdown.settings import PROJECT_ROOT, Settings

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
PYPROJECT = PROJECT_ROOT / "pyproject.toml"

# Every process `make up` runs (the one registry of them) is a compose service running the same command.
ENGINE_COMMANDS = {process.name: ["drawdown", *process.command] for process in engine_processes()}
INFRASTRUCTURE = {"kafka", "schema-registry", "postgres"}


# --- helpers ----------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def engine_services() -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services().items() if name in ENGINE_COMMANDS}


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as a list of NAME=value."""
    env = spec.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):  # short form: no condition
        return {name: {} for name in deps}
    return {name: cond or {} for name, cond in deps.items()}


def settings_env_names() -> dict[str, str]:
    """Every environment variable name Settings reads (upper case) -> the field it sets.

    Derived the way pydantic-settings derives them: a field with a validation alias is read
    from each alias (the first element of an AliasPath); a field without one, or any field when
    populate_by_name / validate_by_name is on, is also read from env_prefix + field name.
    """
    config = Settings.model_config
    prefix = config.get("env_prefix", "")
    prefix_target = config.get("env_prefix_target", "variable")
    by_name = config.get("populate_by_name") or config.get("validate_by_name")
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            aliases = [c.path[0] if isinstance(c, AliasPath) else c for c in alias.choices]
        elif isinstance(alias, AliasPath):
            aliases = [alias.path[0]]
        elif isinstance(alias, str):
            aliases = [alias]
        else:
            aliases = []
        alias_prefix = prefix if prefix_target in ("alias", "all") else ""
        for a in aliases:
            names[(alias_prefix + str(a)).upper()] = field_name
        if not aliases or by_name:
            name_prefix = prefix if prefix_target in ("variable", "all") else ""
            names[(name_prefix + field_name).upper()] = field_name
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_copy_sources() -> list[str]:
    """Sources of every COPY/ADD that reads the build context (not --from= another stage)."""
    sources: list[str] = []
    for keyword, args in dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        parts = shlex.split(args)
        if any(p.startswith("--from=") for p in parts):
            continue
        operands = [p for p in parts if not p.startswith("--")]
        sources.extend(operands[:-1])
    return sources


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# --- the services -----------------------------------------------------------------------------


def test_compose_defines_kafka_schema_registry_postgres_and_every_engine_process():
    assert INFRASTRUCTURE | set(ENGINE_COMMANDS) <= set(services())


def test_each_engine_service_runs_its_own_drawdown_command():
    for name, command in ENGINE_COMMANDS.items():
        actual = services()[name].get("command")
        if isinstance(actual, str):
            actual = shlex.split(actual)
        assert actual == command, f"{name} runs {actual!r}"


def test_engine_services_build_from_deploy_dockerfile_with_the_repo_root_as_context():
    for name, spec in engine_services().items():
        build = spec.get("build")
        assert isinstance(build, dict), f"{name} has no build section"
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        assert context == PROJECT_ROOT.resolve(), f"{name} builds from {context}"
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE.resolve(), name


def test_every_image_is_pinned_to_a_version_not_latest():
    images = {name: spec["image"] for name, spec in services().items() if "image" in spec}
    assert set(INFRASTRUCTURE) <= set(images), "kafka, schema-registry and postgres run published images"
    for name, image in images.items():
        if name in ENGINE_COMMANDS:
            continue  # the locally built image; its base image is checked below
        assert image_is_pinned(image), f"{name} uses unpinned image {image!r}"
    bases = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    stages = {args.split()[-1] for keyword, args in dockerfile_instructions() if keyword == "FROM" and " AS " in args.upper()}
    for base in bases:
        if base not in stages:
            assert image_is_pinned(base), f"Dockerfile base image {base!r} is not pinned"


def test_the_compose_broker_runs_the_same_kafka_version_as_the_local_stack():
    image = services()["kafka"]["image"]
    assert image.startswith("apache/kafka:"), image
    assert image.split(":", 1)[1] == Settings.model_fields["kafka_version"].default


def test_infrastructure_services_have_healthchecks():
    for name in INFRASTRUCTURE:
        test = services()[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    assert "pg_isready" in str(services()["postgres"]["healthcheck"]["test"])


# --- configuration ----------------------------------------------------------------------------


def test_every_service_comes_back_after_a_crash():
    assert {name: spec.get("restart") for name, spec in services().items()} == {
        name: "unless-stopped" for name in services()}


def test_settings_env_names_are_derived_from_fields_aliases_and_the_prefix():
    names = settings_env_names()
    # The three service URLs use their conventional names; everything else is DRAWDOWN_<FIELD>.
    assert names["KAFKA_BOOTSTRAP_SERVERS"] == "kafka_bootstrap_servers"
    assert names["DATABASE_URL"] == "database_url"
    assert names["DRAWDOWN_PARTITIONS"] == "partitions"
    assert "PARTITIONS" not in names


def test_every_environment_variable_an_engine_service_sets_is_one_settings_reads():
    accepted = settings_env_names()
    for name, spec in engine_services().items():
        unknown = sorted(v for v in environment(spec) if v.upper() not in accepted)
        assert not unknown, f"{name} sets variables Settings never reads: {unknown}"


def test_every_drawdown_variable_the_dockerfile_sets_is_one_settings_reads():
    accepted = settings_env_names()
    ours = [v for v in dockerfile_env() if v.upper().startswith("DRAWDOWN_") or v.upper() in accepted]
    assert ours, "the Dockerfile sets no drawdown settings"
    unknown = sorted(v for v in ours if v.upper() not in accepted)
    assert not unknown, f"Dockerfile sets variables Settings never reads: {unknown}"


def test_every_engine_service_sets_kafka_bootstrap_servers_and_database_url():
    for name, spec in engine_services().items():
        env = environment(spec)
        for required in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
            assert env.get(required), f"{name} does not set {required}"


def test_engine_services_reach_kafka_and_postgres_by_their_compose_service_names():
    for name, spec in engine_services().items():
        env = environment(spec)
        assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka", name
        assert "@postgres:" in env["DATABASE_URL"], name
        if env.get("SCHEMA_REGISTRY_URL"):
            assert "//schema-registry:" in env["SCHEMA_REGISTRY_URL"], name


@pytest.mark.parametrize("service", sorted(ENGINE_COMMANDS))
def test_each_engine_environment_loads_into_settings_and_sets_the_field_it_names(service, monkeypatch):
    accepted = settings_env_names()
    for var in accepted:  # only the service's own environment counts
        monkeypatch.delenv(var, raising=False)
    env = {**dockerfile_env(), **environment(services()[service])}
    env = {k: v for k, v in env.items() if k.upper() in accepted}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = Settings()  # raises if a value breaks a type or a bound
    for var, value in env.items():
        field_name = accepted[var.upper()]
        expected = TypeAdapter(Settings.model_fields[field_name].annotation).validate_python(value)
        assert getattr(settings, field_name) == expected, f"{service}: {var}={value!r}"


def test_every_depends_on_names_a_defined_service_and_waits_until_it_is_healthy():
    defined = set(services())
    for name, spec in services().items():
        for dep, cond in depends_on(spec).items():
            assert dep in defined, f"{name} depends on undefined service {dep!r}"
            assert cond.get("condition") == "service_healthy", f"{name} -> {dep} does not wait for health"
            assert services()[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_engine_services_wait_for_kafka_and_postgres():
    for name, spec in engine_services().items():
        assert {"kafka", "postgres"} <= set(depends_on(spec)), name


def test_the_api_listens_on_all_interfaces_and_publishes_its_port():
    spec = services()["api"]
    env = {**dockerfile_env(), **environment(spec)}
    assert env.get("DRAWDOWN_API_HOST") == "0.0.0.0"
    port = env.get("DRAWDOWN_API_PORT", str(Settings.model_fields["api_port"].default))
    container_ports = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in spec.get("ports", [])]
    assert port in container_ports, f"api listens on {port}, publishes {container_ports}"


def named_volume_mounts(spec: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name, for volumes declared at the top level."""
    declared = set(load_compose().get("volumes") or {})
    mounts: dict[str, str] = {}
    for volume in spec.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if source in declared:
            mounts[target.rstrip("/")] = source
    return mounts


def test_the_worker_keeps_its_state_on_a_named_volume_at_its_data_dir():
    spec = services()["worker"]
    data_dir = environment(spec).get("DRAWDOWN_WORKER_DATA_DIR")
    assert data_dir, "the worker does not set DRAWDOWN_WORKER_DATA_DIR"
    assert data_dir.rstrip("/") in named_volume_mounts(spec)


def test_postgres_and_kafka_keep_their_data_on_named_volumes():
    assert "/var/lib/postgresql/data" in named_volume_mounts(services()["postgres"])
    kafka = services()["kafka"]
    assert environment(kafka)["KAFKA_LOG_DIRS"].rstrip("/") in named_volume_mounts(kafka)


# --- the image --------------------------------------------------------------------------------


def test_every_copy_source_in_the_dockerfile_exists_in_the_repo():
    sources = dockerfile_copy_sources()
    assert sources
    for source in sources:
        path = source.rstrip("/") or "."
        found = list(PROJECT_ROOT.glob(path)) if any(c in path for c in "*?[") else (PROJECT_ROOT / path).exists()
        assert found, f"COPY source {source!r} is not in the repo"


def test_the_dockerfile_copies_pyproject_and_every_package_it_installs():
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in config["include"]}
    copied = {source.strip("/").removeprefix("./") for source in dockerfile_copy_sources()}
    assert "pyproject.toml" in copied
    missing = sorted(packages - copied)
    assert not missing, f"packages pyproject.toml installs but the Dockerfile never copies: {missing}"


def test_the_image_runs_as_a_non_root_user_and_defaults_to_drawdown_api():
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    assert final_stage[0][1].split()[0] == "python:3.11-slim"
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"final USER is {users}"
    cmds = [args for keyword, args in final_stage if keyword == "CMD"]
    assert cmds and yaml.safe_load(cmds[-1]) == ["drawdown", "api"]


def test_dockerignore_keeps_state_venv_git_and_caches_out_and_hides_nothing_the_dockerfile_copies():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for required in (".git", ".state", ".venv", "**/__pycache__"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    for source in dockerfile_copy_sources():
        path = source.strip("/")
        hidden = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(path, p.removeprefix("**/"))]
        assert not hidden, f".dockerignore {hidden} hides COPY source {source!r}"


def test_the_image_keeps_worker_state_where_the_compose_volume_is_mounted():
    env = dockerfile_env()
    assert env.get("DRAWDOWN_WORKER_DATA_DIR") == environment(services()["worker"])["DRAWDOWN_WORKER_DATA_DIR"]
    # The directory must exist in the image (owned by the runtime user) so that the named
    # volume starts out writable; it is created by a RUN line.
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert re.search(r"mkdir -p \S*" + re.escape(env["DRAWDOWN_WORKER_DATA_DIR"]), runs)
