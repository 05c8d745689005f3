"""The Dockerfiles of deploy/docker agree with the project: one per deployable, each starting what the
tests start for its service, unprivileged, without models, with one framework at most, lint-clean.

Static and offline: nothing is built, so no container engine is needed. hadolint comes with the
deploycheck extra; its test skips without it. The model of the files (IMAGES, ROLES, read_dockerfile) is
tests/deploy/images.py, which test_compose.py shares.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import get_args

import pytest

from common.settings import CoreSettings
from services.registry import SERVICES
from tests.deploy.images import (
    DOCKER_DIR,
    IMAGES,
    PING,
    REPO_ROOT,
    ROLES,
    VARIANTS,
    Dockerfile,
    dockerfile,
    gateway_routes,
    healthcheck_command,
    run_atelier_help,
)
from worker.settings import WorkerSettings

RUNTIME_UID = "10001"
PYTHON_BASE = "python:3.11-slim"
TORCH = {"torch", "torchvision", "detectron2"}
TENSORFLOW = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-keras"}
# what must never be in an image, nor in the build context: model artifacts, local state, environments
LOCAL_STATE = [
    "models/detector/1/model.pth",
    ".atelier/models/x",
    ".venv/bin/python",
    ".venv-torch/x",
    ".env",
]


# --- what each image installs ---------------------------------------------------------------------


@cache
def requirements_script() -> ModuleType:
    """deploy/docker/requirements.py, which every builder stage runs; not a package, so loaded by path."""
    spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER_DIR / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done"}


def shell_commands(run: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line, as words: split at ``&&``, ``;``, ``|`` and redirections, with
    the shell's keywords, ``--mount`` options and leading variable assignments dropped."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for token in [*lexer, ";"]:
        if token and set(token) <= set(";&|<>()"):
            while words and (words[0] in _KEYWORDS or words[0].startswith("--mount=") or "=" in words[0]):
                words.pop(0)
            if words:
                yield words
            words = []
        else:
            words.append(token)


def requirements_calls(file: Dockerfile) -> list[list[str]]:
    """The arguments of every ``python requirements.py ...`` of the Dockerfile."""
    return [
        words[2:]
        for run in file.runs()
        for words in shell_commands(run)
        if words[:2] == ["python", "requirements.py"]
    ]


_OPTIONS_WITH_VALUES = {"-r", "--requirement", "-i", "--index-url", "-c", "--constraint", "--extra-index-url"}


def pip_installs(file: Dockerfile) -> set[str]:
    """Project names given to ``pip install`` directly (not through a requirements file)."""
    names: set[str] = set()
    for run in file.runs():
        for words in shell_commands(run):
            if words[:2] != ["pip", "install"]:
                continue
            skip = False
            for word in words[2:]:
                if skip or word.startswith("-"):
                    skip = word in _OPTIONS_WITH_VALUES
                    continue
                if word != "." and not word.startswith("/"):
                    names.add(requirements_script().project_name(word))
    return names


def installed(image: str, variant: str) -> set[str]:
    """Every project name the image's Dockerfile installs in ``variant``: its requirements from
    pyproject.toml (through requirements.py, as the build runs it) and its direct pip installs."""
    script = requirements_script()
    names = pip_installs(dockerfile(image))
    for call in requirements_calls(dockerfile(image)):
        extras, options = call[0].split(","), dict(zip(call[1::2], call[2::2], strict=True))
        assert set(options) <= {"--variant", "--only"}, call
        given = options.get("--variant", "cpu")
        lines = script.requirements(
            REPO_ROOT / "pyproject.toml", extras, variant if given == "$VARIANT" else given
        )
        names |= {script.project_name(line) for line in lines}
    return names


# --- the files ------------------------------------------------------------------------------------


def test_one_dockerfile_per_deployable() -> None:
    found = {f"deploy/docker/{path.name}" for path in DOCKER_DIR.glob("*Dockerfile*")}
    assert found == {image.dockerfile for image in IMAGES.values()}, "one <deployable>.Dockerfile each"
    assert not (DOCKER_DIR / "Dockerfile").exists()


def test_every_model_service_has_an_image_and_roles() -> None:
    models = {name for name, spec in SERVICES.items() if spec.builtin_version is None}
    assert models <= set(IMAGES), f"model services without an image: {sorted(models - set(IMAGES))}"
    for name in models:
        assert {ROLES[name].variant, ROLES[f"{name}-gpu"].variant} == set(VARIANTS), name
    assert ROLES["properties"].command[-2:] == ["--service", "properties"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint(image: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (the deploycheck extra)")
    path = REPO_ROOT / IMAGES[image].dockerfile
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_ignores_are_justified(image: str) -> None:
    # given each inline "hadolint ignore=RULE"
    lines = (REPO_ROOT / IMAGES[image].dockerfile).read_text().splitlines()
    for number, line in enumerate(lines):
        if match := re.match(r"#\s*hadolint ignore=([\w,]+)", line.strip()):
            # then the comment block just above it names each rule it ignores (and says why)
            above: list[str] = []
            for previous in reversed(lines[:number]):
                if not previous.startswith("#"):
                    break
                above.append(previous)
            for rule in match[1].split(","):
                assert rule in " ".join(above), f"{image}: no reason given for ignoring {rule}"


# --- the images -----------------------------------------------------------------------------------

IMAGE_VARIANTS = [(name, variant) for name, image in sorted(IMAGES.items()) for variant in image.variants]


@pytest.mark.parametrize(("image", "variant"), IMAGE_VARIANTS)
def test_entrypoint_and_command_are_what_the_tests_start(image: str, variant: str) -> None:
    final = dockerfile(image).final(variant)
    [entrypoint] = final.json_args("ENTRYPOINT")
    [command] = final.json_args("CMD")
    assert [*entrypoint, *command] == ["atelier", *IMAGES[image].command]


def test_default_commands_are_atelier_sub_commands() -> None:
    for image in IMAGES:
        [command] = dockerfile(image).final().json_args("CMD")
        result = run_atelier_help(command)
        assert result.returncode == 0, f"{image}: atelier {' '.join(command)}: {result.stderr}"


def test_variants_are_the_build_argument() -> None:
    for name, image in IMAGES.items():
        file = dockerfile(name)
        if image.variants == ("cpu",):
            assert "VARIANT" not in file.global_args, name
            continue
        assert file.global_args["VARIANT"] == "cpu", f"{name}: the plain build is the CPU one"
        finals = {variant: file.final(variant) for variant in image.variants}
        assert len({tuple(final.instructions) for final in finals.values()}) == len(finals), (
            f"{name}: the variants build the same image"
        )


@pytest.mark.parametrize(("image", "variant"), IMAGE_VARIANTS)
def test_final_stage_is_unprivileged_and_installs_nothing(image: str, variant: str) -> None:
    file = dockerfile(image)
    final = file.final(variant)
    assert {stage.base for stage in file.stages if not stage.base.startswith("runtime-")} == {PYTHON_BASE}
    assert final.base == PYTHON_BASE
    assert final.name == "runtime"
    assert len(file.stages) >= 2 and file.stages[0].name == "builder", "a builder stage, then the runtime"
    assert [user.split(":")[0] for user in final.args("USER")] == [RUNTIME_UID]
    installs = [
        args for args in final.args("RUN") if re.search(r"pip install|apt-get|apk add|curl|wget", args)
    ]
    assert installs == [], "the runtime stages install nothing: compilers and caches stay in the builder"
    copies = final.args("COPY") + final.args("ADD")
    assert copies == ["--from=builder /opt/venv /opt/venv"], f"the runtime takes only the venv: {copies}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_pip_runs_keep_their_cache_out_of_the_layers(image: str) -> None:
    for run in dockerfile(image).runs():
        if "pip install" in run:
            assert "--mount=type=cache,target=/root/.cache/pip" in run or "--no-cache-dir" in run, run


@pytest.mark.parametrize(("image", "variant"), IMAGE_VARIANTS)
def test_runtime_environment(image: str, variant: str) -> None:
    env = dockerfile(image).final(variant).env()
    assert env["ATELIER_BLOB_DIR"] == "/data/blobs"
    assert env["ATELIER_MODEL_REPOSITORY"] == "/models"
    assert env["ATELIER_LOG_FORMAT"] == "json"
    assert env["ATELIER_LOG_FORMAT"] in get_args(CoreSettings.model_fields["log_format"].annotation)
    assert env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize(("image", "variant"), IMAGE_VARIANTS)
def test_healthcheck_and_port(image: str, variant: str) -> None:
    final = dockerfile(image).final(variant)
    command = healthcheck_command(final)
    if image == "gateway":
        # an HTTP probe with python (the slim image has no curl) of a real route, on the served port
        port = IMAGES[image].command[IMAGES[image].command.index("--port") + 1]
        [url] = re.findall(r"http://[^'\"]+", " ".join(command))
        assert command[:2] == ["python", "-c"] and "urllib" in command[2]
        assert url.startswith(f"http://127.0.0.1:{port}/")
        assert url.removeprefix(f"http://127.0.0.1:{port}") in gateway_routes(), url
        assert final.args("EXPOSE") == [port]
    else:
        assert command == PING
        documented = str(WorkerSettings.model_fields["metrics_port"].default)  # not the tests' own env
        assert final.args("EXPOSE") == [documented], "the metrics port"


def test_the_worker_healthcheck_is_an_atelier_command() -> None:
    result = run_atelier_help(PING[1:])
    assert result.returncode == 0, result.stderr


def test_torch_batches_by_variant() -> None:
    for image in ("detector", "segmenter"):
        cpu = dockerfile(image).final("cpu").env()
        cuda = dockerfile(image).final("cuda").env()
        assert cpu["ATELIER_WORKER_MAX_BATCH"] == "1", f"{image}: batching is slower per image on CPU"
        assert int(cuda["ATELIER_WORKER_MAX_BATCH"]) > 1, f"{image}: a GPU takes batches"


def test_detector_and_segmenter_dockerfiles_differ_only_in_the_service() -> None:
    detector, segmenter = dockerfile("detector"), dockerfile("segmenter")
    assert detector.global_args == segmenter.global_args
    assert [(s.base, s.name) for s in detector.stages] == [(s.base, s.name) for s in segmenter.stages]
    for ours, theirs in zip(detector.stages, segmenter.stages, strict=True):
        same = [i for i in ours.instructions if i[0] != "CMD"] == [
            i for i in theirs.instructions if i[0] != "CMD"
        ]
        assert same, f"stage {ours.name}: detector.Dockerfile and segmenter.Dockerfile differ"


# --- what goes into the images --------------------------------------------------------------------


@pytest.mark.parametrize(("image", "variant"), IMAGE_VARIANTS)
def test_one_framework_per_image(image: str, variant: str) -> None:
    names = installed(image, variant)
    assert not (names & TORCH and names & TENSORFLOW), f"{image} ({variant}): torch and TensorFlow: {names}"
    expected = IMAGES[image].framework
    if "tensorflow" in expected:
        assert names & TENSORFLOW == ({"tensorflow-cpu"} if variant == "cpu" else {"tensorflow"}), names
    assert expected <= names | ({"tensorflow"} if names & TENSORFLOW else set()), f"{image}: {names}"
    if not expected:
        assert not names & (TORCH | TENSORFLOW), f"{image} carries a model framework: {names}"


def test_requirements_come_from_pyproject_groups() -> None:
    groups = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for image in IMAGES:
        calls = requirements_calls(dockerfile(image))
        assert calls, f"{image}: its requirements are read from pyproject.toml"
        for call in calls:
            assert set(call[0].split(",")) <= set(groups), f"{image}: {call[0]}"
            assert not {"dev", "embedded", "deploycheck"} & set(call[0].split(",")), f"{image}: {call[0]}"


def test_cuda_tensorflow_keeps_the_cpu_version() -> None:
    script = requirements_script()
    pyproject = REPO_ROOT / "pyproject.toml"
    [cpu] = [r for r in script.requirements(pyproject, ["classifier"], "cpu") if r.startswith("tensorflow")]
    [cuda] = [r for r in script.requirements(pyproject, ["classifier"], "cuda") if r.startswith("tensorflow")]
    assert cpu.startswith("tensorflow-cpu")
    assert cuda == "tensorflow[and-cuda]" + cpu.removeprefix("tensorflow-cpu")


def test_requirements_script_refuses_what_pyproject_lacks() -> None:
    script = requirements_script()
    pyproject = REPO_ROOT / "pyproject.toml"
    with pytest.raises(ValueError, match="unknown extras"):
        script.requirements(pyproject, ["worker", "detectron"])
    with pytest.raises(ValueError, match="not among the requirements"):
        script.requirements(pyproject, ["worker"], only=["torch"])
    with pytest.raises(ValueError, match="unknown variant"):
        script.for_variant("numpy>=1.26", "rocm")
    torch = script.requirements(pyproject, ["worker", "detector"], only=["torch", "torchvision"])
    assert [script.project_name(line) for line in torch] == ["torch", "torchvision"]


def test_torch_cpu_comes_from_the_cpu_index() -> None:
    for image in ("detector", "segmenter"):
        [run] = [run for run in dockerfile(image).runs() if "-r /tmp/torch.txt" in run]
        assert "https://download.pytorch.org/whl/cpu" in run and '"$VARIANT" = cpu' in run, run
        assert ["worker,detector", "--variant", "$VARIANT", "--only", "torch,torchvision"] in (
            requirements_calls(dockerfile(image))
        )


# --- the build context ----------------------------------------------------------------------------


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the context, as Docker decides it: the last pattern
    that matches the path or one of its parent directories wins, ``!`` re-includes."""
    excluded = False
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        parts = path.split("/")
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def copied_sources(file: Dockerfile) -> list[str]:
    """The context paths every COPY (not ``--from``) of the Dockerfile reads."""
    sources = []
    for stage in file.stages:
        for args in stage.args("COPY") + stage.args("ADD"):
            words = [word for word in args.split() if not word.startswith("--")]
            if not any(word.startswith("--from") for word in args.split()):
                sources += words[:-1]
    return sources


def test_dockerignore_keeps_local_state_out() -> None:
    for path in LOCAL_STATE + [".git/HEAD", "tests/conftest.py", "common/__pycache__/x.cpython-311.pyc"]:
        assert dockerignore_excludes(path), f"{path} would be in the build context"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_copies_are_in_the_context_and_carry_no_models(image: str) -> None:
    # given the packages pyproject.toml installs
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    packages = {p for p in patterns if (REPO_ROOT / p / "__init__.py").is_file()}
    # when the builder copies its sources
    sources = copied_sources(dockerfile(image))
    # then every package is among them, each source exists and is in the context, and none is local state
    assert packages <= set(sources), f"not copied into the image: {sorted(packages - set(sources))}"
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"{image}: COPY {source}: no such path"
        assert not dockerignore_excludes(source), f"{image}: .dockerignore excludes {source}"
        assert not any(state.startswith(source.rstrip("/") + "/") for state in LOCAL_STATE), source
        assert not re.match(r"(models|\.atelier|\.venv[^/]*|\.env)(/|$)", source), f"{image} copies {source}"
