"""Shared test helpers. Real data lies beside the clone in ../shared (CI has it there too).

Tiers (markers, set here by what a test needs, so that no test file can forget one):
  browser  serves the app and drives Debian's Chromium (tests/test_browser.py, test_load.py, test_privacy.py)
  model    loads the shipped model (uses the `classifier` fixture, or runs the app's pages)
  slow     takes more than about a second on its own (SLOW below, measured with --durations)
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

BROWSER_FILES = {"test_browser.py", "test_load.py", "test_privacy.py", "test_proxy.py"}
MODEL_FILES = {"test_pages.py", "test_cli.py", "test_bench.py", "test_same_answers.py", "test_concurrency.py",
               "test_cluster_app.py"}
# Files whose tests (or module fixtures) take seconds: training steps, many films, subprocesses.
SLOW_FILES = {"test_train.py", "test_bench.py", "test_cli.py", "test_pages.py", "test_concurrency.py",
              "test_same_answers.py", "test_ood_report.py", "test_generalisation.py", "test_ray.py", "test_ray_faults.py",
              "test_site.py", "test_cluster_app.py"}


# Single tests that take over a second here (pytest --durations), in files that are otherwise quick.
SLOW_TESTS = {"test_pure_modules_and_the_core_never_import_streamlit_or_webapp",
              "test_orientation_net_learns_up_from_down_and_survives_save_load",
              "test_weights_round_trip_and_load_from_a_folder", "test_attention_falls_on_the_lungs",
              "test_evaluate_folder_leaves_refused_films_out_and_the_switch_brings_them_in",
              "test_real_chest_films_pass", "test_concurrent_reads_equal_single_reads",
              "test_tampered_ood_statistics_are_refused", "test_streamed_scores_equal_predict"}


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# The app records every event in its audit trail (webapp.audit_log): the tests' runs, and the servers and CLIs they
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
        name = item.path.name
        if name in BROWSER_FILES:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
        if name in MODEL_FILES or "classifier" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
        if name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


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
