"""Shared test helpers. Real data lies beside the clone in ../shared (CI has it there too).

Tiers (markers): each test file says its own with `pytestmark` (a whole file) or `@pytest.mark.slow` (one test):
  browser  serves the app and drives Debian's Chromium (with slow)
  model    loads the shipped model: set here for every test that uses the `classifier` fixture; files that load
           it otherwise (running the app's pages, the command line) mark themselves
  slow     takes more than about a second on its own (measured with --durations)
A developer's fast tier: `./run.sh test -m "not slow and not browser"` (under a minute);
`.ci/run` runs everything.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCREENSHOTS = REPO / "docs" / "screenshots"


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# The app records every event in its audit trail (webapp.services.audit_log): the tests' runs, and the servers and CLIs they
# start, write to a store of their own for the session, never to the repo's data/audit.db.
_AUDIT_DIR = None


def pytest_configure(config: pytest.Config) -> None:
    global _AUDIT_DIR
    if not os.environ.get("COVIDXR_DB"):
        import tempfile

        _AUDIT_DIR = tempfile.mkdtemp(prefix="covidxr-audit-")
        os.environ["COVIDXR_DB"] = f"sqlite:///{_AUDIT_DIR}/audit.db"
    _configure_signals()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _AUDIT_DIR:
        import shutil

        shutil.rmtree(_AUDIT_DIR, ignore_errors=True)


def _configure_signals() -> None:
    """A run stopped with SIGTERM (`timeout`, a CI job cancelled, `kill`) stops like Ctrl-C: pytest unwinds and
    every fixture's teardown runs, so the Ray clusters, app servers, nginx and browsers the tests started are
    stopped by PID instead of outliving the run."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupted)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--screenshots", action="store_true",
                     help=f"the browser test saves each page's screenshot to {SCREENSHOTS.relative_to(REPO)}/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "classifier" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest) -> Path | None:
    """Where the browser test saves page screenshots: docs/screenshots/ with --screenshots, else nowhere."""
    return SCREENSHOTS if request.config.getoption("--screenshots") else None


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, e.g. shared_data("cxr", "MANIFEST.csv")."""
    return SHARED.joinpath("data", *parts)


@pytest.fixture(scope="session")
def classifier():
    """The shipped model in weights/ (or $COVIDXR_TEST_WEIGHTS, another model folder), loaded once and
    shared, as the app shares it between sessions. The model ships with the repository: its absence
    is a failure, not a reason to skip."""
    from covidxr.classifier import DEFAULT_WEIGHTS, Classifier

    directory = Path(os.environ.get("COVIDXR_TEST_WEIGHTS") or DEFAULT_WEIGHTS)
    if not (directory / "model_card.json").exists():
        pytest.fail(f"no model card in {directory}: the shipped model is missing")
    return Classifier.from_dir(directory, threads=1)
