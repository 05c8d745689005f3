"""The deploy files' settings are those of the settings classes: .env.example, docker-compose.yml's
x-atelier-env block and the ConfigMap's settings.env are what ``atelier config render`` makes of them."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest

from atelier.settings_render import (
    COMPOSE_FILE,
    CONFIGMAP_ENV,
    ENV_EXAMPLE,
    NOT_IN_CONFIGMAP,
    PER_DEPLOYMENT,
    SET_ELSEWHERE,
    SETTINGS_CLASSES,
    drift,
    env_value,
    settings,
    write,
)
from tests.deploy.images import REPO_ROOT
from tests.deploy.settings_env import settings_env_names, settings_values

PACKAGES = ("atelier", "common", "db", "gateway", "worker", "services")


def test_committed_files_are_what_the_generator_renders() -> None:
    diffs = drift()
    assert diffs == {}, "run `atelier config render`:\n" + "".join(diffs.values())


def test_the_check_sees_a_hand_edited_default(tmp_path: Path) -> None:
    # given freshly rendered files with one value changed by hand
    for path in (ENV_EXAMPLE, COMPOSE_FILE, CONFIGMAP_ENV):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / path, tmp_path / path)
    write(tmp_path)
    configmap = tmp_path / CONFIGMAP_ENV
    configmap.write_text(configmap.read_text().replace("ATELIER_LOG_LEVEL=INFO", "ATELIER_LOG_LEVEL=DEBUG"))
    # when the check runs, then it reports that file and line; rendering puts it back
    diffs = drift(tmp_path)
    assert list(diffs) == [CONFIGMAP_ENV]
    assert "-ATELIER_LOG_LEVEL=DEBUG\n+ATELIER_LOG_LEVEL=INFO" in diffs[CONFIGMAP_ENV]
    assert write(tmp_path) == [CONFIGMAP_ENV]
    assert drift(tmp_path) == {}


def test_every_settings_class_is_rendered() -> None:
    # given every class of ours that derives from BaseSettings, found in the source
    found = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            for name in re.findall(r"^class (\w+)\([^)]*\bBaseSettings\b", path.read_text(), re.MULTILINE):
                module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
                found.add(getattr(importlib.import_module(module), name))
    # then each one is rendered, or is the base of one that is
    assert found, "no settings class found: the search is broken"
    missing = [cls for cls in found if not any(issubclass(rendered, cls) for rendered in SETTINGS_CLASSES)]
    assert missing == [], f"settings classes atelier/settings_render.py does not render: {missing}"


def _names(path: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, (REPO_ROOT / path).read_text(), re.MULTILINE))


def test_every_setting_appears_in_the_generated_files() -> None:
    # given each variable the settings classes read, and where each file says it is
    leaves, _ = settings_env_names()
    in_env_example = _names(ENV_EXAMPLE, r"^(?:# )?(ATELIER_\w+)=")
    compose = (REPO_ROOT / COMPOSE_FILE).read_text().split("x-atelier-env:", 1)[1].split("\nx-", 1)[0]
    in_compose = set(re.findall(r"^  (ATELIER_\w+):", compose, re.MULTILINE))
    in_configmap = _names(CONFIGMAP_ENV, r"^(ATELIER_\w+)=")
    owners = {s.name: s.owner for s in settings()}
    defaults = {s.name: s.default for s in settings()}
    for name in sorted(leaves):
        # then .env.example names every one, set or commented out
        assert name in in_env_example, f"{name} is not in .env.example"
        # and compose and the ConfigMap give it, unless the generator says why not
        assert (name in in_compose) != (name in SET_ELSEWHERE), f"{name} in docker-compose.yml"
        left_out = (
            name in SET_ELSEWHERE
            or name in NOT_IN_CONFIGMAP
            or owners[name] in PER_DEPLOYMENT
            or defaults[name] is None
        )
        assert (name in in_configmap) != left_out, f"{name} in {CONFIGMAP_ENV}"
    assert in_env_example | in_compose | in_configmap <= leaves, "a generated file names no setting"


def test_rendered_defaults_read_back_as_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # given every default written as the generator writes it into the three files
    written = {s.name: env_value(s.default) for s in settings() if s.default is not None}
    # then the settings classes read back what they have without it
    assert settings_values(monkeypatch, written) == settings_values(monkeypatch, {})
