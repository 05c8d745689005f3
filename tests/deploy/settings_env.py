"""The settings classes as environment variables: what they read, and what they make of an environment.

A plain module shared by the deploy tests, not a test file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from atelier.settings_render import SETTINGS_CLASSES


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


def use_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Make ``env`` the only ATELIER_* variables of this process, for the settings classes to read."""
    for key in list(os.environ):
        if key.startswith("ATELIER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def settings_values(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting, keyed by its variable, as the settings classes read it from exactly ``env``."""
    use_env(monkeypatch, env)
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
