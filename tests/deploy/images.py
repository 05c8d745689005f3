"""The images of deploy/docker as the deploy tests see them: each deployable's Dockerfile parsed into
stages, the compose services (roles) that run them, and the ``atelier`` commands they start.

A plain module shared by test_dockerfiles.py, test_compose.py and test_kubernetes.py, not a test file.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from atelier.stack import DEFAULT_WORKERS, WorkerPlan, worker_command

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
VARIANTS = ("cpu", "cuda")
GATEWAY_COMMAND = ["gateway", "--host", "0.0.0.0", "--port", "8000"]
PING = ["atelier", "ping", "--timeout", "5"]


@dataclass(frozen=True)
class Image:
    """One deployable's image: its Dockerfile, its name, its variants and the frameworks it carries."""

    dockerfile: str  # deploy/docker/<name>.Dockerfile
    name: str
    command: list[str]  # the image's default command
    variants: tuple[str, ...] = ("cpu",)
    framework: frozenset[str] = field(default_factory=frozenset)  # project names it must have

    def tag(self, variant: str) -> str:
        return "latest" if variant == "cpu" else f"latest-{variant}"


def service_command(plan: WorkerPlan) -> list[str]:
    """What the tests start for a worker, less the interpreter: ``atelier <this>``."""
    return worker_command(plan)[3:]


IMAGES: dict[str, Image] = {
    "gateway": Image("deploy/docker/gateway.Dockerfile", "atelier-gateway", GATEWAY_COMMAND),
    "worker": Image("deploy/docker/worker.Dockerfile", "atelier-worker", service_command(DEFAULT_WORKERS[0])),
    "classifier": Image(
        "deploy/docker/classifier.Dockerfile",
        "atelier-classifier",
        service_command(WorkerPlan("classifier")),
        VARIANTS,
        frozenset({"tensorflow"}),
    ),
    "detector": Image(
        "deploy/docker/detector.Dockerfile",
        "atelier-detector",
        service_command(WorkerPlan("detector")),
        VARIANTS,
        frozenset({"torch", "detectron2"}),
    ),
    "segmenter": Image(
        "deploy/docker/segmenter.Dockerfile",
        "atelier-segmenter",
        service_command(WorkerPlan("segmenter")),
        VARIANTS,
        frozenset({"torch", "detectron2"}),
    ),
}


@dataclass(frozen=True)
class Role:
    """What one compose service runs: an image, in a variant, with a command."""

    image: str  # a key of IMAGES
    command: list[str]
    variant: str = "cpu"


# every Atelier service of docker-compose.yml; a model service on CPU is <name>, on the GPU <name>-gpu
ROLES: dict[str, Role] = {
    "migrate": Role("gateway", ["db", "upgrade"]),
    "gateway": Role("gateway", GATEWAY_COMMAND),
    "worker": Role("worker", service_command(DEFAULT_WORKERS[0])),
    "properties": Role("worker", service_command(DEFAULT_WORKERS[1])),
    **{
        f"{name}{'' if variant == 'cpu' else '-gpu'}": Role(name, service_command(WorkerPlan(name)), variant)
        for name in ("classifier", "detector", "segmenter")
        for variant in VARIANTS
    },
}


# --- the Dockerfile model -------------------------------------------------------------------------


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

    def json_args(self, keyword: str) -> list[list[str]]:
        """The exec-form (JSON) arguments of each ``keyword`` instruction."""
        return [json.loads(args) for args in self.args(keyword)]


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    global_args: dict[str, str]  # the ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        [stage] = [stage for stage in self.stages if stage.name == name]
        return stage

    def final(self, variant: str = "cpu") -> Stage:
        """The image a build with ``VARIANT=variant`` gives: the last stage, with the instructions of the
        stages it is built FROM (``FROM runtime-${VARIANT}``) before its own."""
        args = {**self.global_args, "VARIANT": variant}
        names = {stage.name for stage in self.stages}
        chain = [self.stages[-1]]
        while (base := re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], chain[0].base)) in names:
            chain.insert(0, self.stage(base))
        instructions = [instruction for stage in chain for instruction in stage.instructions]
        return Stage(base, chain[-1].name, instructions)

    def runs(self) -> list[str]:
        return [args for stage in self.stages for args in stage.args("RUN")]


def read_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None, []))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        elif keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
    return Dockerfile(path, global_args, stages)


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


@cache
def dockerfile(image: str) -> Dockerfile:
    return read_dockerfile(REPO_ROOT / IMAGES[image].dockerfile)


def healthcheck_command(stage: Stage) -> list[str]:
    """The command of the stage's one HEALTHCHECK (``--interval=... CMD [...]``)."""
    [healthcheck] = stage.args("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), healthcheck
    parsed: list[str] = json.loads(command)
    return parsed


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


def gateway_routes() -> set[str]:
    from gateway.app import app

    return {getattr(route, "path", "") for route in app.routes}
