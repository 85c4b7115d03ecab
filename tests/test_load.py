"""Smoke run of scripts/load_test.py: 2 concurrent browser sessions x 1 round against an app it starts.

Asserts what must hold under any load: no errors, each session saw its own film with the CLI's result,
the server it started is gone afterwards. No timing assertions. Also: it refuses a non-loopback URL.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from covidxr.classifier import DEFAULT_WEIGHTS
from tests.browser import REPO, require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

def run_script(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """scripts/load_test.py, run as a module from the repository's root (it imports tests/browser.py)."""
    return subprocess.run([sys.executable, "-m", "scripts.load_test", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COVIDXR_THREADS": "1"})


def test_refuses_a_url_that_is_not_loopback():
    for url in ("http://example.com:8501", "http://10.0.0.1:8501", "file:///etc/passwd", "http://127.0.0.1.nip.io/"):
        run = run_script("--url", url, timeout=120)
        assert run.returncode == 2 and "only http(s) on 127.0.0.1" in run.stderr, (url, run.stderr)


def test_two_sessions_each_see_their_own_result(tmp_path):
    weights = Path(os.environ.get("COVIDXR_TEST_WEIGHTS") or DEFAULT_WEIGHTS)
    if not (weights / "model_card.json").exists():
        pytest.skip(f"no model in {weights} yet (set COVIDXR_TEST_WEIGHTS to a weights folder)")
    require_chromium()
    out = tmp_path / "load.json"
    run = run_script("--sessions", "2", "--rounds", "1", "--timeout", "900", "--weights", str(weights),
                     "--json", str(out))
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["isolation_ok"]
    results = report["results"]
    assert [(r["session"], r["round"]) for r in results] == [(1, 1), (2, 1)]
    films = {r["film"] for r in results}
    assert len(films) == 2                                        # a different film per session
    expected = {e["film"]: e["sentence"] for e in report["films"]}
    for r in results:
        assert r["error"] is None and r["shown"] == expected[r["film"]]   # the CLI's probability, on its own page
        assert r["result_s"] > 0
    assert "drop -> probability + heatmap" in run.stdout
    # the browsers' CPU is counted apart from the server's (two page opens and results: seconds of Chromium work)
    assert report["phase"]["browsers_cpu_s"] > 0.5 and report["phase"]["server_cpu_s"] > 0
    assert "browsers (Chromium + Playwright's driver, on this machine) CPU" in run.stdout
    port = report["url"].rsplit(":", 1)[1]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--server.port {port}" not in ps                        # the server it started was stopped
