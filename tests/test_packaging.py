"""pyproject.toml (pip) and environment.yml (conda) pin the same versions, and the installed
environment is the pinned one (the book's numbers depend on it)."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out: dict[str, str] = {}
    for r in map(Requirement, reqs):
        spec = str(r.specifier)
        assert out.setdefault(_norm(r.name), spec) == spec, f"{r.name} pinned twice differently in pyproject.toml"
    return out


def environment() -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip: list[str] = []
    conda: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
        else:
            conda.append(dep)
    out: dict[str, str] = {}
    for line in pip:
        if line.startswith("-"):  # "-e ." installs the project itself
            continue
        r = Requirement(line)
        out[_norm(r.name)] = str(r.specifier)
    return out, conda


def test_pyproject_and_environment_pin_the_same_versions():
    py = pyproject_requirements()
    env, _ = environment()
    only_py = sorted(set(py) - set(env))
    only_env = sorted(set(env) - set(py))
    assert not only_py, f"in pyproject.toml but not environment.yml: {only_py}"
    assert not only_env, f"in environment.yml but not pyproject.toml: {only_env}"
    differ = {k: (py[k], env[k]) for k in py if SpecifierSet(py[k]) != SpecifierSet(env[k])}
    assert not differ, f"pins differ (pyproject, environment): {differ}"


def test_every_dependency_is_pinned_or_bounded():
    for name, spec in pyproject_requirements().items():
        assert spec, f"{name} has no version constraint"
        if name != "numpy":  # numpy follows torch's ABI; bounded, not pinned
            assert spec.startswith("=="), f"{name} should be pinned with ==, got {spec!r}"


def test_python_version_agrees():
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    _, conda = environment()
    pins = [d.split("=", 1)[1] for d in conda if d.startswith("python=")]
    assert pins, "environment.yml must pin python"
    assert requires.contains(pins[0] + ".0"), f"environment.yml python {pins[0]} outside requires-python {requires}"


@pytest.mark.parametrize("name,spec", sorted(pyproject_requirements().items()))
def test_installed_versions_match_the_pins(name, spec):
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.skip(f"{name} not installed (optional extra)")
    assert SpecifierSet(spec).contains(installed, prereleases=True), (
        f"{name} {installed} installed, {spec} pinned: run `make setup` ({sys.executable})"
    )
