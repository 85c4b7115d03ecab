"""Drives the app in Debian's Chromium for the browser tests and the load script (`python -m scripts.load_test`):
starts the real server and holds the Playwright constants and page scripts both use. A test harness, not part
of the app; it imports neither pytest, nor Streamlit, nor covidxr, so that the load script needs no more of the
test suite than this file.

`running_app()` starts the app (`python -m webapp.serve`, i.e. `streamlit run app.py`) on a loopback port in its own process group and stops it by
that group; the Playwright bits are plain constants and page scripts usable from the sync and async APIs.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google on this closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-gpu", "--disable-quic", "--no-first-run"]
START_TIMEOUT_S = 180
UPLOADER = '[data-testid="stFileUploader"] input[type=file]'
# The screen page's decision sentence (webapp.views.wording.verdict), e.g. "No COVID-19 pattern: 12% (operating point 14.9%)".
VERDICT_PATTERN = r"(Positive for|No) COVID-19 pattern: .*\(operating point "
# The app root while no script run is going on; clicks that land mid-run can be dropped with the old element.
SCRIPT_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# True once n Grad-CAM overlays are in the page and decoded by the browser.
OVERLAYS_READY_JS = """n => { const imgs = [...document.querySelectorAll('img[alt="Grad-CAM overlay"]')];
                             return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }"""


class AppStartError(RuntimeError):
    """The app exited or never answered its health check; the message ends with its log."""


@dataclass
class RunningApp:
    url: str
    proc: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until Streamlit's /_stcore/health says ok; AppStartError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AppStartError(f"streamlit exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AppStartError(f"streamlit not healthy after {timeout_s:.0f} s:\n{log_tail(log)}")


def app_command(port: int) -> list[str]:
    return [sys.executable, "-m", "webapp.serve", "--server.port", str(port),
            "--server.address", "127.0.0.1", "--server.headless", "true"]


def stop_group(proc: subprocess.Popen, grace_s: float = 15, sig: int = signal.SIGTERM) -> None:
    """`sig` (SIGTERM; nginx shuts down gracefully on SIGQUIT) to the process group `proc` leads, SIGKILL
    if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextmanager
def running_app(log: Path, env: Mapping[str, str] | None = None, port: int | None = None,
                wrapper: Sequence[str] = (), cwd: Path = REPO,
                start_timeout_s: float = START_TIMEOUT_S) -> Iterator[RunningApp]:
    """`streamlit run app.py` on 127.0.0.1 (a free port unless given), stdout and stderr to `log`,
    in its own session (process group), stopped by that group on exit. `wrapper` prefixes the command
    (e.g. strace); `env` replaces the environment (default: this process's)."""
    port = port or free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*wrapper, *app_command(port)], cwd=cwd, env=dict(env if env is not None else os.environ),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    app = RunningApp(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(app.url, proc, log, start_timeout_s)
        yield app
    finally:
        stop_group(proc)


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh --browser does)")
