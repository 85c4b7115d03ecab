"""The test suite's own process hygiene: a run stopped by SIGTERM still tears its fixtures down."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

TEST = '''
import os, signal, time
from pathlib import Path
import pytest

@pytest.fixture
def started(tmp_path_factory):
    yield
    Path(os.environ["MARK"]).write_text("torn down")

def test_long(started):
    Path(os.environ["READY"]).write_text("running")
    time.sleep(60)
'''


def test_a_run_stopped_by_sigterm_tears_down_its_fixtures(tmp_path):
    """What `timeout` or a cancelled CI job sends: the fixture that started a cluster or a server must still stop it."""
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "test_sleeps.py").write_text(TEST)
    (folder / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    mark, ready = tmp_path / "mark", tmp_path / "ready"
    env = {**os.environ, "MARK": str(mark), "READY": str(ready)}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0] if proc.poll() else ""
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out                     # stopped, not passed
    assert mark.read_text() == "torn down", out
