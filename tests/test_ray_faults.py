"""The Ray engine under faults, on a two-node cluster started here with `ray start --head` and a second
`ray start --address ...` (1 CPU each, each with its own short temp dir and its own ports, dashboard and usage
statistics off, object spilling off, token authentication with a token file of the fixture's own).

1. The worker node is removed (its processes killed, as when a machine dies) in the middle of an
   `evaluate --engine ray` run: the run still finishes, every film scored exactly once.
2. The driver (`python -m covidxr evaluate --engine ray --address ...`) is killed in the middle of a run:
   `--resume` with the same results file completes it, nothing lost or doubled.
Both compare the rows with the in-process engine's (same paths, probabilities within 1e-5).

Why the first version of this fixture never connected ("Failed to connect to Ray cluster at <ip>:<port>"):
Ray 2.60's `ray start` turns token authentication on when a token file exists (~/.ray/auth_token, which any
local `ray.init()` writes), while a driver that joins by `address=host:port` only sends a token when
RAY_AUTH_MODE=token; the GCS answered "InvalidAuthToken" and ray.init reported it as a connection failure.
Here every node and every driver gets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the fixture's token>.
Nodes are started with `--node-ip-address 127.0.0.1` and joined at 127.0.0.1:<port>; Ray itself replaces a
loopback node address by this machine's own address (ray._private.services.resolve_ip_for_localhost: a
worker node would refuse to start otherwise), so the nodes register under that address, both the same.

The cluster must come up: if it does not, the fixture fails (an error, never a skip). Every process started
carries RAY_TEST_TAG=<its node's or driver's id> and is stopped by process group and by PID, also on failure
(never `ray stop`, which would stop other people's Ray on this machine)."""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from covidxr.engines.results import ResultsFile
from covidxr.evaluate import iter_scores, scan_folder
from tests.conftest import REPO
from tests.test_ray import copy_films, kill_tagged, tagged_env, tagged_pids

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
PER_FOLDER = 20  # films from each of the 10 source/class folders of ../shared/data/cxr (about 190 in all)
START_TIMEOUT = 180  # seconds for a node to join, on a loaded 2-core machine
RUN_TIMEOUT = 300  # seconds for one `evaluate` run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_range(n: int = 100) -> tuple[int, int]:
    """A range of n ports for a node's workers, below the kernel's ephemeral range and away from Ray's default
    (10002-19999, which another Ray on this machine may use), whose ends are free now."""
    for _ in range(50):
        lo = random.randrange(20000, 32000 - n)
        try:
            for p in (lo, lo + n - 1):
                with socket.socket() as s:
                    s.bind(("", p))
        except OSError:
            continue
        return lo, lo + n - 1
    raise RuntimeError("no free port range for the Ray workers")


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Node:
    """One `ray start --block` in its own session (process group); its processes carry RAY_TEST_TAG=tag."""

    def __init__(self, name: str, args: list[str], tmp: Path, env: dict):
        self.name, self.tag, self.dir = name, uuid.uuid4().hex, tmp / name
        self.removed = False  # killed on purpose (a test's fault), not a node that failed
        self.dir.mkdir()
        self.log_path = tmp / f"{name}.log"
        lo, hi = _port_range()
        ports = ["--node-manager-port", free_port(), "--object-manager-port", free_port(),
                 "--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                 "--metrics-export-port", free_port(), "--runtime-env-agent-port", free_port(),
                 "--min-worker-port", lo, "--max-worker-port", hi]
        cmd = [RAY, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir",
               str(self.dir), "--object-store-memory", str(200 * 2**20), "--disable-usage-stats",
               *map(str, ports), *args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, env={**env, "RAY_TEST_TAG": self.tag}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """The node's machine dies: every process of it killed at once, no draining."""
        self.removed = True
        _kill_group(self.proc.pid, signal.SIGKILL)
        kill_tagged(self.tag, grace=10)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM to the node's process group (Ray drains, then stops its processes); what is left after 20 s,
        SIGKILL, by group and by PID."""
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc.pid, signal.SIGKILL)
        kill_tagged(self.tag, grace=10)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass


PROBE = """import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("ALIVE", len([n for n in ray.nodes() if n["Alive"]]))
ray.shutdown()"""


class Cluster:
    def __init__(self, tmp: Path, env: dict):
        self.tmp, self.env, self.nodes = tmp, env, []
        self.address = ""

    def start_head(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start("head", ["--head", "--port", str(port), "--include-dashboard=false",
                             "--system-config", json.dumps({"automatic_object_spilling_enabled": False})])
        self.wait_nodes(1)

    def _start(self, name: str, args: list[str]) -> Node:
        node = Node(name, args, self.tmp, self.env)
        self.nodes.append(node)
        return node

    def add_worker(self) -> Node:
        node = self._start(f"worker{len(self.nodes)}", ["--address", self.address])
        self.wait_nodes(sum(not n.removed for n in self.nodes))
        return node

    def wait_nodes(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Until a driver joining at self.address sees n live nodes; fails (never skips) with the nodes' logs."""
        tag = uuid.uuid4().hex
        deadline, last = time.time() + timeout, ""

        def check_nodes() -> None:
            dead = [nd for nd in self.nodes if not nd.removed and nd.proc.poll() is not None]
            if dead:
                pytest.fail(f"Ray node {dead[0].name} exited ({dead[0].proc.returncode}):\n{dead[0].log_tail()}")

        try:
            while time.time() < deadline:
                check_nodes()
                probe = subprocess.Popen([sys.executable, "-c", PROBE, self.address], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                         env={**self.env, "RAY_TEST_TAG": tag})
                try:
                    probe_deadline = min(deadline, time.time() + 90)
                    while probe.poll() is None and time.time() < probe_deadline:
                        check_nodes()  # a node that dies fails at once, not after the probe's time
                        time.sleep(0.5)
                finally:
                    if probe.poll() is None:
                        probe.kill()
                    out, err = probe.communicate(timeout=30)
                last = out + err[-1500:]
                if f"ALIVE {n}\n" in out:
                    return
                time.sleep(2)
        finally:
            kill_tagged(tag)
        logs = "\n".join(f"--- {nd.name}:\n{nd.log_tail(1500)}" for nd in self.nodes)
        pytest.fail(f"the Ray cluster at {self.address} did not show {n} live node(s) within {timeout:.0f} s\n"
                    f"last probe: {last}\n{logs}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A head node (1 CPU) with token authentication; `.add_worker()` starts a worker node (1 CPU) and waits until
    it has joined; `.env` is the environment a driver needs to join it. Everything stopped by process group and
    PID at the end, also on failure; the temp dir removed. Shared with tests/test_cluster_app.py."""
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's AF_UNIX socket paths are <= 107 chars
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_TEST_TAG")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    c = Cluster(tmp, env)
    try:
        c.start_head()
        yield c
    finally:
        tags = [n.tag for n in c.nodes]
        c.stop()
        leftover = [p for t in tags for p in tagged_pids(t)]
        shutil.rmtree(tmp, ignore_errors=True)
        assert not leftover, f"Ray processes left running: {leftover}"


@pytest.fixture(scope="module")
def cluster():
    """running_cluster(), for this module's tests."""
    with running_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    root = tmp_path_factory.mktemp("films")
    copy_films(root, PER_FOLDER)
    return root


@pytest.fixture(scope="module")
def in_process(films, classifier):
    """The in-process engine's rows for the films, by path."""
    items = scan_folder(films, classifier.card.positive_class)
    assert 150 <= len(items) <= 250
    return {r.path: r for r in iter_scores(classifier, items)}


def _evaluate_cmd(films: Path, address: str, res: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "covidxr", "evaluate", str(films), "--engine", "ray", "--address", address,
            "--workers", str(workers), "--batch-size", "4", "--results", str(res), "--json", str(out)]


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _actors_on(node: Node) -> list[int]:
    """PIDs of the node's Ray Data actor processes (the pool's `ray::MapWorker(...)`)."""
    out = []
    for pid in tagged_pids(node.tag):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and "MapWorker" in cmd:
            out.append(pid)
    return out


def _assert_complete(res: Path, out: Path, want: dict) -> None:
    """Every film once in the results file and in the report, with the in-process engine's answers."""
    lines = res.read_text().splitlines()
    stored = ResultsFile(res).read()
    assert len(lines) == 1 + len(want), f"{len(lines) - 1} result lines for {len(want)} films"
    assert set(stored) == set(want)
    images = json.loads(out.read_text())["images"]
    paths = [x["path"] for x in images]
    assert len(paths) == len(set(paths)) == len(want) and set(paths) == set(want)
    for x in images:
        w = want[x["path"]]
        assert (x["probability"] is None) == (w.probability is None), x["path"]
        assert (stored[x["path"]]["probability"] is None) == (w.probability is None), x["path"]
        if w.probability is not None:
            assert abs(x["probability"] - w.probability) <= 1e-5, x["path"]
            assert abs(stored[x["path"]]["probability"] - w.probability) <= 1e-5, x["path"]


def _run_until(driver: subprocess.Popen, cond, what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if driver.poll() is not None:
            pytest.fail(f"the run ended ({driver.returncode}) before {what}")
        time.sleep(0.3)
    pytest.fail(f"not reached within {timeout:.0f} s: {what}")


def test_removing_the_worker_node_mid_run_still_scores_every_film_once(cluster, films, in_process, tmp_path):
    worker = cluster.add_worker()
    res, out, log = tmp_path / "rows.csv", tmp_path / "report.json", tmp_path / "driver.log"
    n, tag = len(in_process), uuid.uuid4().hex
    t0 = time.time()
    with open(log, "w") as f:
        driver = subprocess.Popen(_evaluate_cmd(films, cluster.address, res, out, workers=2), cwd=REPO,
                                  env={**cluster.env, "RAY_TEST_TAG": tag}, stdout=f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        # The pool's actors spread over both nodes; the worker node dies once a quarter of the films are in.
        _run_until(driver, lambda: _lines(res) > 1 + n // 4 and _actors_on(worker),
                   "a quarter of the films were scored with an actor on the worker node")
        at = _lines(res) - 1
        worker.kill()
        assert not tagged_pids(worker.tag)
        driver.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not finish within {RUN_TIMEOUT} s after the node was removed")
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_tagged(tag)
    seconds = time.time() - t0
    assert driver.returncode == 0, log.read_text()[-3000:]
    assert at < n, "the node was removed in the middle of the run"
    _assert_complete(res, out, in_process)
    print(f"worker node removed at {at}/{n} films; run finished in {seconds:.0f} s")


def test_killed_driver_then_resume_scores_every_film_exactly_once(cluster, films, in_process, tmp_path):
    res, out = tmp_path / "rows.csv", tmp_path / "report.json"
    n, tag = len(in_process), uuid.uuid4().hex
    cmd = _evaluate_cmd(films, cluster.address, res, out, workers=2)
    env = {**cluster.env, "RAY_TEST_TAG": tag}
    try:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL)
        try:
            _run_until(driver, lambda: _lines(res) > 1 + n // 3, "a third of the films were scored")
        finally:
            driver.kill()  # SIGKILL: no clean-up of any kind
            driver.wait(30)
        text = res.read_text()
        written = text[:text.rfind("\n") + 1].splitlines()  # whole lines; a kill may have cut the last one
        assert 1 < len(written) - 1 < n and not out.exists()
        r = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    finally:
        kill_tagged(tag)
    assert r.returncode == 0, r.stderr[-3000:]
    assert res.read_text().splitlines()[:len(written)] == written, "the lines written before the kill were kept"
    _assert_complete(res, out, in_process)
    print(f"driver killed at {len(written) - 1}/{n} films; the resume scored the rest")


def test_a_driver_without_the_clusters_token_is_told_so_in_one_line(cluster, films, tmp_path):
    """The failure this fixture first met: a driver that joins by host:port without RAY_AUTH_MODE=token is refused
    by the token-authenticated cluster; `evaluate` says so in one line (not "Failed to connect"), exit status 1."""
    tag = uuid.uuid4().hex
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env.update(RAY_AUTH_MODE="disabled", RAY_TEST_TAG=tag)
    try:
        r = subprocess.run(_evaluate_cmd(films, cluster.address, tmp_path / "rows.csv", tmp_path / "r.json", 1),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    finally:
        kill_tagged(tag)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1, r.stderr[-2000:]
    assert "requires token authentication" in errors[0] and "RAY_AUTH_MODE=token" in errors[0], errors[0]
    assert "Traceback" not in r.stderr
