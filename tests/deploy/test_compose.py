"""The compose files agree with the project: docker-compose.yml and .env.example against the CLI, the
settings classes, the Compose Specification and the Dockerfiles of deploy/docker. Their settings are
generated from the settings classes (test_settings_render.py checks that they are up to date); the
hand-written rest is checked here.

Static and offline: nothing is built or started, so no container engine is needed. The compose checks
need PyYAML, and the schema check jsonschema and check-jsonschema's vendored copy of the Compose
Specification (the deploycheck extra); each skips without them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pytest
from pydantic import ValidationError

from atelier.settings_render import SET_ELSEWHERE, SETTINGS_CLASSES
from services.registry import SERVICES
from tests.deploy.images import (
    IMAGES,
    PING,
    REPO_ROOT,
    ROLES,
    dockerfile,
    gateway_routes,
    healthcheck_command,
    run_atelier_help,
)
from tests.deploy.settings_env import settings_env_names, settings_values
from worker.settings import WorkerSettings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"

# the modules that define the settings classes: importable without the model frameworks
SETTINGS_MODULES = ("services.classifier.config", "services.detector.config", "services.segmenter.config")
FRAMEWORKS = ("tensorflow", "keras", "torch", "torchvision", "detectron2")
# read by compose itself, never interpolated in docker-compose.yml
COMPOSE_OWN = {"COMPOSE_PROFILES"}
# settings compose never gives the containers (the images, `atelier worker --service`, the gateway's
# command line or the embedded stack set them)
NOT_FROM_COMPOSE = set(SET_ELSEWHERE)
ONE_SHOT = {"migrate"}
POOLS = {"solo", "threads", "prefork"}
GPU_DEVICE = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


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
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        assignment = _ASSIGNMENT.fullmatch(line)
        if assignment is None:
            raise ValueError(f".env.example line {number}: {line!r} is not KEY=value")
        if assignment[1] in values:
            raise ValueError(f".env.example line {number}: {assignment[1]} is set twice")
        values[assignment[1]] = assignment[2]
    return EnvExample(values)


# --- .env.example -------------------------------------------------------------------------------


def test_settings_modules_import_no_framework() -> None:
    # the settings of the model services are read where their framework is not installed (the gateway,
    # these tests), so their modules must not import it; a fresh interpreter shows what each pulls in
    code = (
        "import importlib, sys\n"
        f"for name in {SETTINGS_MODULES!r}: importlib.import_module(name)\n"
        f"print(sorted(set({FRAMEWORKS!r}) & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"imported with the settings: {result.stdout}"
    assert {cls.__module__ for cls in SETTINGS_CLASSES} >= set(SETTINGS_MODULES)


def test_env_example_is_refused_until_the_password_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    example = read_env_example()
    assert example.resolved()["ATELIER_ENVIRONMENT"] == "production"

    with pytest.raises(ValidationError, match="placeholder database password"):
        settings_values(monkeypatch, example.resolved())

    values = settings_values(monkeypatch, example.resolved(POSTGRES_PASSWORD="0d9f3c1e7b"))
    assert values["ATELIER_DATABASE_URL"] == "postgresql+psycopg://atelier:0d9f3c1e7b@postgres:5432/atelier"


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose checks need it")
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from our Dockerfiles: every one of ROLES, and no other."""
    built = {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile", "").startswith("deploy/docker/")
    }
    assert set(built) == set(ROLES), f"compose: {sorted(built)}; roles: {sorted(ROLES)}"
    return built


@pytest.fixture(scope="module")
def defaults() -> dict[str, str]:
    """.env.example as compose reads it, with a real password."""
    return read_env_example().resolved(POSTGRES_PASSWORD="0d9f3c1e7b")


def is_worker(service: dict[str, Any]) -> bool:
    return bool(service.get("command")) and service["command"][0] == "worker"


def is_model_service(name: str) -> bool:
    return ROLES[name].image in IMAGES and IMAGES[ROLES[name].image].framework != frozenset()


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


def container_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """What the container gets from compose: the interpolated values; a key without a value passes the
    variable through when ``env`` has it and is left out otherwise."""
    out: dict[str, str] = {}
    for key, value in service.get("environment", {}).items():
        if value is not None:
            out[key] = interpolate(str(value), env)
        elif key in env:
            out[key] = env[key]
    return out


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


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as check-jsonschema vendors it (offline)."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (deploycheck extra)")
    schema = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    loaded: dict[str, Any] = json.loads(schema.read_text())
    return loaded


def schema_errors(document: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (deploycheck extra)")
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_schema_check_refuses_a_wrong_file(compose: dict[str, Any]) -> None:
    # the check above is only worth something if the schema it loads refuses mistakes
    wrong = json.loads(json.dumps(compose))
    wrong["services"]["gateway"]["healthcheck"]["intervall"] = "30s"
    wrong["services"]["worker"]["deploy"] = {"resources": {"reservations": {"devices": [{"count": 1}]}}}
    errors = schema_errors(wrong)
    assert any("intervall" in error for error in errors), errors
    assert any("capabilities" in error for error in errors), errors


def test_every_long_running_service_has_a_real_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} runs once"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and not service["healthcheck"].get("disable"), f"{name} has no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: {test}"
        assert " ".join(test[1:]).strip() not in {"true", "exit 0", ":", "/bin/true"}, f"{name}: {test}"


def test_our_healthchecks_exist_in_the_project(ours: dict[str, dict[str, Any]]) -> None:
    # given the health check of each service of ours
    routes = gateway_routes()
    for name, service in ours.items():
        if name in ONE_SHOT:
            continue
        test = service["healthcheck"]["test"]
        if is_worker(service):
            # then a worker's is `atelier ping`, the image's own, whose options exist
            assert test == ["CMD", *PING], f"{name}: {test}"
            assert healthcheck_command(dockerfile(ROLES[name].image).final(ROLES[name].variant)) == PING
        else:
            # and the gateway's an HTTP probe of one of its routes, on the port it serves
            port = option(service["command"], "--port")
            [url] = re.findall(r"http://[^'\"]+", " ".join(test))
            assert url.startswith(f"http://127.0.0.1:{port}/"), f"{name}: {url}"
            assert url.removeprefix(f"http://127.0.0.1:{port}") in routes, f"{name}: no route {url}"
    assert run_atelier_help(PING[1:]).returncode == 0


def test_commands_are_atelier_sub_commands(ours: dict[str, dict[str, Any]]) -> None:
    for command in {tuple(service["command"]) for service in ours.values()}:
        assert all(isinstance(a, str) for a in command), command
        result = run_atelier_help(list(command))
        assert result.returncode == 0, f"atelier {' '.join(command)}: {result.stderr}"


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


def test_services_run_the_image_and_command_of_their_role(
    ours: dict[str, dict[str, Any]], defaults: dict[str, str]
) -> None:
    for name, service in ours.items():
        role, image = ROLES[name], IMAGES[ROLES[name].image]
        assert service["command"] == role.command, f"{name}: the command the tests start"
        assert service["build"]["context"] == ".", f"{name}: the build context is the repository root"
        assert service["build"]["dockerfile"] == image.dockerfile, name
        assert service["build"].get("args", {}).get("VARIANT", "cpu") == role.variant, name
        assert interpolate(service["image"], defaults) == f"{image.name}:{image.tag(role.variant)}", name


def test_every_model_service_runs_on_cpu_and_on_gpu(ours: dict[str, dict[str, Any]]) -> None:
    models = {name for name, spec in SERVICES.items() if spec.builtin_version is None}
    for model in models:
        assert option(ours[model]["command"], "--service") == model
        assert option(ours[f"{model}-gpu"]["command"], "--service") == model


def test_services_can_be_scaled(compose: dict[str, Any], ours: dict[str, dict[str, Any]]) -> None:
    for name, service in compose["services"].items():
        assert "container_name" not in service, f"{name}: a container_name forbids --scale"
    for name, service in ours.items():
        if is_worker(service):
            assert "ports" not in service, f"{name}: host ports forbid --scale"
            assert "hostname" not in service, f"{name}: `atelier ping` tells replicas apart by hostname"
            assert "replicas" not in service.get("deploy", {}), f"{name}: --scale decides"


def test_gpu_profile_reserves_a_gpu_and_runs_cuda_images(
    ours: dict[str, dict[str, Any]], defaults: dict[str, str]
) -> None:
    for name, service in ours.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        image = interpolate(service["image"], defaults)
        if "gpu" in service.get("profiles", []):
            assert ROLES[name].variant == "cuda", name
            assert devices == [GPU_DEVICE], f"{name}: one NVIDIA GPU"
            assert image.endswith("-cuda") and service["build"]["args"]["VARIANT"] == "cuda", (
                f"{name}: {image}"
            )
        else:
            assert devices == [] and not image.endswith("-cuda"), f"{name}: a CPU service"


def test_model_services_are_enabled_one_by_one(ours: dict[str, dict[str, Any]]) -> None:
    # a model service exits (status 3) while the models volume has none of its versions, so none runs by
    # default: each has the profile of its hardware and one of its own, and .env.example enables none
    for name, service in ours.items():
        profiles = service.get("profiles", [])
        if is_model_service(name):
            hardware = "cpu" if ROLES[name].variant == "cpu" else "gpu"
            assert sorted(profiles) == sorted([hardware, name]), f"{name}: profiles {profiles}"
        else:
            assert profiles == [], f"{name} is part of every stack"
    assert read_env_example().values["COMPOSE_PROFILES"] == ""


def test_torch_on_cpu_takes_one_image_at_a_time(
    compose: dict[str, Any], ours: dict[str, dict[str, Any]], defaults: dict[str, str]
) -> None:
    for name, service in ours.items():
        role = ROLES[name]
        if role.image not in {"detector", "segmenter"}:
            continue
        batch = container_env(service, defaults)["ATELIER_WORKER_MAX_BATCH"]
        if role.variant == "cpu":
            # the image's own value, which compose's shared setting would otherwise override
            image = dockerfile(role.image).final("cpu").env()["ATELIER_WORKER_MAX_BATCH"]
            assert batch == image == "1", f"{name}: max batch {batch}, image {image}"
        else:
            assert int(batch) > 1, f"{name}: a GPU takes batches"


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


def test_workers_expose_their_metrics_port(ours: dict[str, dict[str, Any]], defaults: dict[str, str]) -> None:
    for name, service in ours.items():
        if not is_worker(service):
            continue
        port = container_env(service, defaults)["ATELIER_WORKER_METRICS_PORT"]
        documented = str(WorkerSettings.model_fields["metrics_port"].default)  # not the tests' own env
        assert port == documented, f"{name}: the documented port"
        assert [interpolate(p, defaults) for p in service["expose"]] == [port], name
        assert dockerfile(ROLES[name].image).final(ROLES[name].variant).args("EXPOSE") == [port], name


def test_containers_log_json(ours: dict[str, dict[str, Any]], defaults: dict[str, str]) -> None:
    for name, service in ours.items():
        assert container_env(service, defaults)["ATELIER_LOG_FORMAT"] == "json", name
        assert container_env(service, {})["ATELIER_LOG_FORMAT"] == "json", f"{name}: without a .env"


def test_volumes_are_where_the_image_looks(ours: dict[str, dict[str, Any]]) -> None:
    # only a model service's own worker reads the model repository: the gateway and the orchestrator
    # read the served versions from Postgres, properties and the migrations need no artifact
    mounting_models: set[str] = set()
    for name, service in ours.items():
        env = dockerfile(ROLES[name].image).final(ROLES[name].variant).env()
        mounts = {volume.split(":")[0]: volume.split(":")[1:] for volume in service["volumes"]}
        targets = {volume.split(":")[1] if ":" in volume else volume for volume in service["volumes"]}
        if is_model_service(name):
            assert mounts.get("models") == [env["ATELIER_MODEL_REPOSITORY"], "ro"], (
                f"{name}: models read-only"
            )
            mounting_models.add(name)
        else:
            assert "models" not in mounts and env["ATELIER_MODEL_REPOSITORY"] not in targets, (
                f"{name} reads no model artifact but mounts the model repository: {service['volumes']}"
            )
        if name in ONE_SHOT:
            continue
        assert mounts["blobs"] == [env["ATELIER_BLOB_DIR"]], name
    models = {name for name, spec in SERVICES.items() if spec.builtin_version is None}
    assert mounting_models == {f"{m}{suffix}" for m in models for suffix in ("", "-gpu")}


def test_compose_environment_names_are_settings(ours: dict[str, dict[str, Any]]) -> None:
    leaves, groups = settings_env_names()
    for name, service in ours.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping, please"
        unknown = sorted(k for k in environment if k.startswith("ATELIER_") and k not in leaves | groups)
        assert unknown == [], f"{name} sets variables no settings class reads: {unknown}"
        assert not NOT_FROM_COMPOSE & set(environment), (
            f"{name}: {sorted(NOT_FROM_COMPOSE & set(environment))}"
        )


def test_compose_defaults_are_those_of_env_example(compose: dict[str, Any]) -> None:
    # given every variable docker-compose.yml interpolates, and those .env.example sets
    example = read_env_example()
    referenced = {name for text in strings(compose) for name in re.findall(r"\$\{(\w+)", text)}
    settable = set(example.values) - COMPOSE_OWN
    # then they are the same: a variable set in .env that compose never reads would do nothing
    assert referenced == settable, (
        f"only in docker-compose.yml: {sorted(referenced - settable)}; "
        f"only in .env.example: {sorted(settable - referenced)}"
    )
    # and compose without any .env is compose with .env.example (every variable has a default)
    without_env = flatten(resolve(compose, {}))
    with_example = flatten(resolve(compose, example.resolved()))
    differ = {k: (v, with_example.get(k)) for k, v in without_env.items() if with_example.get(k) != v}
    assert differ == {}, f"(compose default, .env.example): {differ}"


def test_compose_environment_is_what_the_settings_expect(
    monkeypatch: pytest.MonkeyPatch, ours: dict[str, dict[str, Any]], defaults: dict[str, str]
) -> None:
    for name, service in ours.items():
        # given what each of our containers gets, with a real password
        environment = container_env(service, defaults)
        # then the settings classes accept it, and it reaches the servers by their service names
        values = settings_values(monkeypatch, environment)
        assert values["ATELIER_DATABASE_URL"].split("@")[1].startswith("postgres:5432/"), name
        assert values["ATELIER_REDIS_URL"].startswith("redis://redis:6379/"), name


def test_passed_through_settings_are_read_when_set(
    monkeypatch: pytest.MonkeyPatch, ours: dict[str, dict[str, Any]], defaults: dict[str, str]
) -> None:
    # given .env giving a value to settings compose passes through
    env = {**defaults, "ATELIER_DETECTOR_THREADS": "2", "ATELIER_SEGMENTER_SCORE_THRESHOLD": "0.6"}
    # then the detector's container reads them, and without them the code's default (None) holds
    values = settings_values(monkeypatch, container_env(ours["detector"], env))
    assert values["ATELIER_DETECTOR_THREADS"] == 2
    assert values["ATELIER_SEGMENTER_SCORE_THRESHOLD"] == 0.6
    values = settings_values(monkeypatch, container_env(ours["detector"], defaults))
    assert values["ATELIER_DETECTOR_THREADS"] is None
