"""The container files agree with the project and with each other: docker-compose.yml,
deploy/docker/Dockerfile and .env.example against the CLI, the settings classes and pyproject.toml.

Static and offline: nothing is built or started, so no container engine is needed. The compose checks
need PyYAML and skip without it. Validation against the Compose specification's JSON schema is not
done here (no offline copy of the schema); the deploy issue adds it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings

from common.settings import CoreSettings
from gateway.settings import GatewaySettings
from services.registry import SERVICES
from worker.settings import WorkerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
OUR_DOCKERFILE = "deploy/docker/Dockerfile"

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (CoreSettings, WorkerSettings, GatewaySettings)
# variables of .env.example that only docker-compose.yml reads; no container sees them
COMPOSE_ONLY = {"ATELIER_IMAGE", "POSTGRES_PASSWORD", "GATEWAY_PUBLISH", "FLOWER_PUBLISH"}
# settings whose value in the containers differs from the code's default on purpose
DEPLOYMENT_VALUES = {"ATELIER_ENVIRONMENT", "ATELIER_DATABASE_URL", "ATELIER_REDIS_URL"}
ONE_SHOT = {"migrate"}
POOLS = {"solo", "threads", "prefork"}
RUNTIME_UID = "10001"


# --- the settings' environment variables --------------------------------------------------------


def settings_env_names() -> tuple[set[str], set[str]]:
    """(leaves, groups): every variable the settings classes read, e.g. ATELIER_FETCH__MAX_BYTES, and
    the nested groups that can also be given whole as JSON, e.g. ATELIER_FETCH."""
    leaves: set[str] = set()
    groups: set[str] = set()
    for cls in SETTINGS_CLASSES:
        prefix = cls.model_config.get("env_prefix", "")
        delimiter = cls.model_config.get("env_nested_delimiter")
        for name, field in cls.model_fields.items():
            group = field.annotation
            if delimiter and isinstance(group, type) and issubclass(group, BaseModel):
                groups.add(f"{prefix}{name}".upper())
                leaves |= {f"{prefix}{name}{delimiter}{sub}".upper() for sub in group.model_fields}
            else:
                leaves.add(f"{prefix}{name}".upper())
    return leaves, groups


def settings_values(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting, keyed by its variable, as the settings classes read it from exactly ``env``."""
    for key in list(os.environ):
        if key.startswith("ATELIER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    values: dict[str, Any] = {}
    for cls in SETTINGS_CLASSES:
        instance = cls()
        prefix = cls.model_config.get("env_prefix", "")
        delimiter = cls.model_config.get("env_nested_delimiter")
        for name in cls.model_fields:
            value = getattr(instance, name)
            if delimiter and isinstance(value, BaseModel):
                for sub in type(value).model_fields:
                    values[f"{prefix}{name}{delimiter}{sub}".upper()] = getattr(value, sub)
            else:
                values[f"{prefix}{name}".upper()] = value
    return values


# --- compose's variable interpolation and .env.example -------------------------------------------

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$$``, ``${VAR}`` and ``${VAR:-default}`` (defaults may nest). Other forms are
    refused, and so is a ``${VAR}`` that ``env`` lacks."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_substitute(text[i + 2 : end], env))
            i = end + 1
        elif text[i] == "$":
            raise ValueError(f"bare $ in {text!r}: write ${{VAR:-default}}, or $$ for a dollar")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text.startswith("${", j):
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unclosed ${{ in {text!r}")


def _substitute(expression: str, env: Mapping[str, str]) -> str:
    match = _VARIABLE.match(expression)
    if match is None:
        raise ValueError(f"not a variable: ${{{expression}}}")
    name, rest = match.group(), expression[match.end() :]
    if rest == "":
        if name not in env:
            raise KeyError(f"${{{name}}} is not set and has no default")
        return env[name]
    if rest.startswith(":-"):
        return env.get(name) or interpolate(rest[2:], env)
    raise ValueError(f"unsupported interpolation ${{{expression}}}; expected ${{VAR}} or ${{VAR:-default}}")


@dataclass(frozen=True)
class EnvExample:
    values: dict[str, str]  # the KEY=value lines, as written
    documented: set[str]  # the "# KEY=value" lines: settings described but not set from .env

    def resolved(self, **overrides: str) -> dict[str, str]:
        """The values as compose reads the file: quotes removed, ``${VAR}`` of earlier lines expanded."""
        out: dict[str, str] = {}
        for key, raw in {**self.values, **overrides}.items():
            if len(raw) >= 2 and raw[0] == raw[-1] == "'":
                out[key] = raw[1:-1]
            else:
                out[key] = interpolate(raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw, out)
        return out


_ASSIGNMENT = re.compile(r"([A-Z][A-Z0-9_]*)=(.*)")


def read_env_example() -> EnvExample:
    values: dict[str, str] = {}
    documented: set[str] = set()
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            if commented := _ASSIGNMENT.fullmatch(line[1:].strip()):
                documented.add(commented[1])
            continue
        assignment = _ASSIGNMENT.fullmatch(line)
        if assignment is None:
            raise ValueError(f".env.example line {number}: {line!r} is not KEY=value")
        if assignment[1] in values:
            raise ValueError(f".env.example line {number}: {assignment[1]} is set twice")
        values[assignment[1]] = assignment[2]
    return EnvExample(values, documented)


# --- the Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def args(self, keyword: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == keyword]

    def env(self) -> dict[str, str]:
        pairs = (pair.split("=", 1) for args in self.args("ENV") for pair in shlex.split(args))
        return {key: value for key, value in pairs}


def read_dockerfile() -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None, []))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with their continuation lines joined; comment and blank lines dropped."""
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield pending + stripped
        pending = ""


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return read_dockerfile()[-1]


def run_atelier_help(command: list[str]) -> subprocess.CompletedProcess[str]:
    """``atelier <command> --help``: exit status 0 proves the sub-command and each option exist
    (an unknown one exits 2). Nothing runs: --help stops before the command's body."""
    return subprocess.run(
        [sys.executable, "-m", "atelier", *command, "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dockerfile_entrypoint_is_atelier(runtime: Stage) -> None:
    assert [json.loads(args) for args in runtime.args("ENTRYPOINT")] == [["atelier"]]


def test_dockerfile_default_command_is_an_atelier_command(runtime: Stage) -> None:
    [command] = [json.loads(args) for args in runtime.args("CMD")]
    result = run_atelier_help(command)
    assert result.returncode == 0, f"atelier {' '.join(command)}: {result.stderr}"


def test_dockerfile_stages_are_slim_and_the_runtime_is_unprivileged(runtime: Stage) -> None:
    stages = read_dockerfile()
    assert [stage.base for stage in stages] == ["python:3.11-slim"] * len(stages)
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    assert [user.split(":")[0] for user in runtime.args("USER")] == [RUNTIME_UID]
    installs = [args for args in runtime.args("RUN") if re.search(r"pip install|apt-get install", args)]
    assert installs == [], "the runtime stage installs nothing; the builder does"
    copies = runtime.args("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"], f"the runtime takes only the venv: {copies}"


def test_dockerfile_runtime_env_and_healthcheck(runtime: Stage) -> None:
    env = runtime.env()
    assert env["ATELIER_BLOB_DIR"] == "/data/blobs"
    assert env["ATELIER_MODEL_REPOSITORY"] == "/models"
    [healthcheck] = runtime.args("HEALTHCHECK")
    [command] = [json.loads(args) for args in runtime.args("CMD")]
    port = command[command.index("--port") + 1]
    assert "urllib" in healthcheck and f"127.0.0.1:{port}/healthz" in healthcheck


def test_dockerfile_extras_are_dependency_groups() -> None:
    [builder] = [stage for stage in read_dockerfile() if stage.name == "builder"]
    [extras] = [args.split("=", 1)[1] for args in builder.args("ARG") if args.startswith("EXTRAS=")]
    groups = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.split(",")) <= set(groups), f"EXTRAS={extras}; pyproject.toml has {sorted(groups)}"


def test_dockerfile_copies_every_package() -> None:
    # given the packages pyproject.toml installs
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    packages = {p for p in patterns if (REPO_ROOT / p / "__init__.py").is_file()}
    # when the builder copies its sources
    [builder] = [stage for stage in read_dockerfile() if stage.name == "builder"]
    copied = {args.split()[0] for args in builder.args("COPY")}
    # then every package is among them, and .dockerignore keeps none of them out
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    ignored = {line.strip().strip("/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert not (copied & ignored), f".dockerignore excludes {sorted(copied & ignored)}"


# --- .env.example -------------------------------------------------------------------------------


def test_env_example_names_every_setting_and_only_settings() -> None:
    example = read_env_example()
    leaves, groups = settings_env_names()
    named = set(example.values) | example.documented
    assert leaves <= named, f"settings missing from .env.example: {sorted(leaves - named)}"
    unknown = {k for k in named - COMPOSE_ONLY if k not in leaves | groups}
    assert unknown == set(), f".env.example names no setting: {sorted(unknown)}"


def test_env_example_is_refused_until_the_password_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    example = read_env_example()
    assert example.resolved()["ATELIER_ENVIRONMENT"] == "production"

    with pytest.raises(ValidationError, match="placeholder database password"):
        settings_values(monkeypatch, example.resolved())

    values = settings_values(monkeypatch, example.resolved(POSTGRES_PASSWORD="0d9f3c1e7b"))
    assert values["ATELIER_DATABASE_URL"] == "postgresql+psycopg://atelier:0d9f3c1e7b@postgres:5432/atelier"


def test_env_example_values_are_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # given .env.example with a real password, and no environment at all
    example = read_env_example()
    configured = settings_values(monkeypatch, example.resolved(POSTGRES_PASSWORD="0d9f3c1e7b"))
    defaults = settings_values(monkeypatch, {})
    # then each setting it gives has the value the code would have used anyway
    keys = set(example.values) - COMPOSE_ONLY - DEPLOYMENT_VALUES
    differ = {k: (configured[k], defaults[k]) for k in sorted(keys) if configured[k] != defaults[k]}
    assert differ == {}, f"(.env.example, code default): {differ}"


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose checks need it")
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from our Dockerfile."""
    built = {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == OUR_DOCKERFILE
    }
    assert {"migrate", "gateway", "worker", "properties"} <= set(built)
    return built


def is_worker(service: dict[str, Any]) -> bool:
    return bool(service.get("command")) and service["command"][0] == "worker"


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return node


def flatten(node: Any, path: str = "") -> dict[str, Any]:
    """{"services.gateway.ports.0": "127.0.0.1:8000:8000", ...}"""
    if isinstance(node, dict):
        items: Iterator[tuple[Any, Any]] = iter(node.items())
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {path: node}
    return {k: v for key, value in items for k, v in flatten(value, f"{path}.{key}".lstrip(".")).items()}


def strings(node: Any) -> Iterator[str]:
    """Every string value of the document: what compose interpolates (comments are not)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def test_every_long_running_service_has_a_real_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} runs once"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and not service["healthcheck"].get("disable"), f"{name} has no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: {test}"
        assert " ".join(test[1:]).strip() not in {"true", "exit 0", ":", "/bin/true"}, f"{name}: {test}"


def test_commands_are_atelier_sub_commands(ours: dict[str, dict[str, Any]]) -> None:
    for name, service in ours.items():
        command = service.get("command")
        assert isinstance(command, list) and all(isinstance(a, str) for a in command), f"{name}: {command}"
        result = run_atelier_help(command)
        assert result.returncode == 0, f"{name}: atelier {' '.join(command)}: {result.stderr}"


def test_worker_options_are_valid(ours: dict[str, dict[str, Any]]) -> None:
    # --help proves the options exist but not their values: an unknown service or pool surfaces only
    # when the worker starts
    workers = {name: s["command"] for name, s in ours.items() if is_worker(s)}
    assert {"worker", "properties"} <= set(workers)
    for name, command in workers.items():
        service = option(command, "--service")
        assert service is None or service in SERVICES, (
            f"{name}: --service {service}; not in {sorted(SERVICES)}"
        )
        assert option(command, "--pool") in POOLS, f"{name}: --pool must be one of {sorted(POOLS)}"
        concurrency = option(command, "--concurrency") or "1"
        assert concurrency.isdigit() and int(concurrency) >= 1, f"{name}: --concurrency {concurrency}"
    assert option(workers["properties"], "--service") == "properties"
    assert option(workers["worker"], "--service") is None, "the orchestrator serves no model service"


def test_workers_can_be_scaled(compose: dict[str, Any], ours: dict[str, dict[str, Any]]) -> None:
    for name, service in compose["services"].items():
        assert "container_name" not in service, f"{name}: a container_name forbids --scale"
    for name, service in ours.items():
        if is_worker(service):
            assert "ports" not in service, f"{name}: host ports forbid --scale"


def test_services_wait_for_what_they_need(compose: dict[str, Any], ours: dict[str, dict[str, Any]]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, service in ours.items():
        if name in ONE_SHOT:
            continue
        depends = service["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy"


def test_gateway_is_published_and_probed_on_its_port(ours: dict[str, dict[str, Any]]) -> None:
    gateway = ours["gateway"]
    port = option(gateway["command"], "--port")
    assert [p.rsplit(":", 1)[1] for p in gateway["ports"]] == [port]
    assert f"127.0.0.1:{port}/" in " ".join(gateway["healthcheck"]["test"])


def test_volumes_are_where_the_image_looks(runtime: Stage, ours: dict[str, dict[str, Any]]) -> None:
    env = runtime.env()
    for name, service in ours.items():
        if name in ONE_SHOT:
            continue
        mounts = {volume.split(":")[0]: volume.split(":")[1:] for volume in service["volumes"]}
        assert mounts["blobs"] == [env["ATELIER_BLOB_DIR"]], name
        assert mounts["models"] == [env["ATELIER_MODEL_REPOSITORY"], "ro"], f"{name}: models read-only"


def test_compose_environment_names_are_settings(ours: dict[str, dict[str, Any]]) -> None:
    leaves, groups = settings_env_names()
    for name, service in ours.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping, please"
        unknown = sorted(k for k in environment if k.startswith("ATELIER_") and k not in leaves | groups)
        assert unknown == [], f"{name} sets variables no settings class reads: {unknown}"
        assert "ATELIER_WORKER_SERVICE" not in environment, f"{name}: `worker --service` sets it"


def test_compose_defaults_are_those_of_env_example(compose: dict[str, Any]) -> None:
    # given every variable docker-compose.yml interpolates, and those .env.example sets
    example = read_env_example()
    referenced = {name for text in strings(compose) for name in re.findall(r"\$\{(\w+)", text)}
    # then they are the same: a variable set in .env that compose never reads would do nothing
    assert referenced == set(example.values), (
        f"only in docker-compose.yml: {sorted(referenced - set(example.values))}; "
        f"only in .env.example: {sorted(set(example.values) - referenced)}"
    )
    # and compose without any .env is compose with .env.example (every variable has a default)
    without_env = flatten(resolve(compose, {}))
    with_example = flatten(resolve(compose, example.resolved()))
    differ = {k: (v, with_example.get(k)) for k, v in without_env.items() if with_example.get(k) != v}
    assert differ == {}, f"(compose default, .env.example): {differ}"


def test_compose_environment_is_what_the_settings_expect(
    monkeypatch: pytest.MonkeyPatch, compose: dict[str, Any], ours: dict[str, dict[str, Any]]
) -> None:
    # given what each of our containers gets, with a real password
    env = read_env_example().resolved(POSTGRES_PASSWORD="0d9f3c1e7b")
    for name in ours:
        environment = resolve(compose["services"][name].get("environment", {}), env)
        # then the settings classes accept it, and it reaches the servers by their service names
        values = settings_values(monkeypatch, environment)
        assert values["ATELIER_DATABASE_URL"].split("@")[1].startswith("postgres:5432/"), name
        assert values["ATELIER_REDIS_URL"].startswith("redis://redis:6379/"), name
