"""The requirements of one image, read from pyproject.toml: the project's dependencies and those of the
optional-dependency groups it names, one a line, for ``pip install -r``. Every Dockerfile of
deploy/docker runs it in its builder stage, so pyproject.toml stays the one list of dependencies:

    python requirements.py worker,classifier --variant cuda > /tmp/requirements.txt
    python requirements.py worker,detector --only torch,torchvision > /tmp/torch.txt

``--variant cuda`` swaps a CPU-only distribution for its CUDA build with the same version specifier
(``tensorflow-cpu>=2.18`` becomes ``tensorflow[and-cuda]>=2.18``). ``--only`` keeps the named
projects, so that they can be installed first from another index (PyTorch's CPU wheels). An unknown
group, variant or name fails the build: pip would only warn about an unknown extra.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

VARIANTS = ("cpu", "cuda")
# the CUDA build of a CPU-only distribution, by normalised project name
CUDA_BUILDS = {"tensorflow-cpu": "tensorflow[and-cuda]"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _split(requirement: str) -> tuple[str, str]:
    """(name as written, the rest: extras, version specifier, markers)."""
    text = requirement.strip()
    match = _NAME.match(text)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(), text[match.end() :]


def project_name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement (PEP 503: lower case, runs of -_. as -)."""
    return re.sub(r"[-_.]+", "-", _split(requirement)[0]).lower()


def for_variant(requirement: str, variant: str) -> str:
    """``requirement`` as the ``variant`` image installs it: the name swapped, the specifier kept."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    name = project_name(requirement)
    if variant == "cuda" and name in CUDA_BUILDS:
        return CUDA_BUILDS[name] + _split(requirement)[1]
    return requirement


def requirements(
    pyproject: Path, extras: list[str], variant: str = "cpu", only: list[str] | None = None
) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    groups: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(groups))
    if unknown:
        raise ValueError(f"unknown extras {unknown}; expected some of {sorted(groups)}")
    wanted = [*project["dependencies"], *(requirement for extra in extras for requirement in groups[extra])]
    # dict.fromkeys: the same requirement in two groups (celery[redis]) is listed once, in order
    lines = list(dict.fromkeys(for_variant(requirement, variant) for requirement in wanted))
    if only is None:
        return lines
    missing = sorted(set(only) - {project_name(line) for line in lines})
    if missing:
        raise ValueError(f"{missing} are not among the requirements of {extras}")
    return [line for line in lines if project_name(line) in only]


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extras", type=_names, help="optional-dependency groups, comma-separated")
    parser.add_argument("--variant", choices=VARIANTS, default="cpu")
    parser.add_argument("--only", type=_names, default=None, help="project names, comma-separated")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extras, args.variant, args.only)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
