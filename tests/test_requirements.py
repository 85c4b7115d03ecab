"""requirements.txt is the lock of pyproject.toml: every requirement of the core and of each extra is pinned there at
a version its floor allows, and every pin is exact. A dependency added to pyproject.toml without running
scripts/lock.sh fails here, before a fresh clone installs a set nobody tested."""
from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(name)] = Version(version.strip())
    return pins


def test_the_lock_pins_every_declared_requirement_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = list(project["project"]["dependencies"])
    for extra, requirements in project["project"]["optional-dependencies"].items():
        declared += requirements
    declared += project["build-system"]["requires"]
    pins = _pins()
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not locked: run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{req.name}=={pins[name]} in requirements.txt is outside pyproject.toml's {req.specifier}"


def test_the_lock_says_how_it_was_made():
    head = (REPO / "requirements.txt").read_text().splitlines()[:6]
    assert any("scripts/lock.sh" in line for line in head)
