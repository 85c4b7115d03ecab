"""Load test: concurrent clinicians on the running app, each dropping a real film and waiting for the result.

Drives the app in Debian's Chromium through Playwright, one browser context per session (its own
Streamlit session), all at once. Each session uploads its own real film R times, each time in a
fresh page (a new Streamlit session, so nothing comes from that session's caches), and waits for the
probability sentence and the decoded Grad-CAM overlay. It reports latency percentiles from drop to
result, throughput, errors by kind, and whether every session saw only its own film with the
probability that `python -m covidxr predict --json` gives for that film (distinct films per session,
chosen so that their displayed probabilities differ where the pool allows).

    python -m scripts.load_test [--sessions 4] [--rounds 3] [--timeout 300] [--json out.json]
                                  [--url http://127.0.0.1:8501 [--server-pid PID ...] [--proxy-pid PID ...]]
                                  [--weights weights]
                                  [--films F ...]

Without --url it starts `streamlit run app.py` on a free loopback port with --weights and stops it by
its process group at the end; with --url the app must already run on this machine (loopback only)
with the same weights; behind a proxy (deploy/nginx.conf) give the proxy's URL, and --server-pid with
the replicas' process ids to count their CPU time too, and --proxy-pid with nginx's (its worker processes)
to count the proxy's CPU time separately. Bounded: at most 16 sessions and 20 rounds, and the whole run (server start
included) stops by itself after --timeout seconds. Exit status 0 when every round gave the right
result, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.browser import (CHROMIUM, CHROMIUM_ARGS, OVERLAYS_READY_JS, REPO, SCRIPT_IDLE, UPLOADER, VERDICT_PATTERN,
                            AppStartError, require_chromium, running_app)

MAX_SESSIONS, MAX_ROUNDS = 16, 20
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SHARED_CXR = REPO.parent / "shared" / "data" / "cxr"
MIME = {".png": "image/png", ".dcm": "application/dicom", ".dicom": "application/dicom", ".bmp": "image/bmp",
        ".tif": "image/tiff", ".tiff": "image/tiff"}
# What the screen page shows instead of a result; each is an error kind of its own.
PROBLEMS = {"could not be read": "film unreadable", "does not look like a frontal chest": "flagged not a chest film",
            "The model could not be loaded": "model not loaded"}
UPLOAD_NAME = re.compile(r"load-s(\d+)-r\d+-")


# ---------------------------------------------------------------- arguments and films

def loopback_url(url: str) -> str:
    """The URL without a trailing slash if it points at this machine's loopback, else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in LOOPBACK:
        raise ValueError(f"{url}: only http(s) on 127.0.0.1, localhost or [::1] is allowed")
    if parts.path.strip("/"):
        raise ValueError(f"{url}: give the app's root URL, without a path")
    return url.rstrip("/")


def film_pool(given: list[str], need: int) -> list[Path]:
    """Candidate films: those given, else samples/ and then the shared data, spread over sources and
    classes (round robin) so that the sessions get different films."""
    from covidxr.films import FILM_SUFFIXES  # covidxr imports torch: not before the arguments are checked

    if given:
        return [Path(f) for f in given]
    groups = [sorted(p for p in d.iterdir() if p.suffix.lower() in FILM_SUFFIXES)
              for d in sorted((REPO / "samples").glob("*/")) + sorted(SHARED_CXR.glob("*/*/")) if d.is_dir()]
    pool, i = [], 0
    while len(pool) < need and any(i < len(g) for g in groups):
        pool += [g[i] for g in groups if i < len(g)]
        i += 1
    return pool[:need]


@dataclass
class Expected:
    film: str
    probability: float
    label: str
    threshold: float
    sentence: str   # the screen page's sentence for this film (webapp.views.wording.verdict)


def cli_predictions(films: list[Path], weights: Path) -> dict[Path, dict]:
    """`python -m covidxr predict --json` on the films: {film: its JSON row}."""
    run = subprocess.run([sys.executable, "-m", "covidxr", "predict", "--json", "--weights", str(weights),
                          *map(str, films)], cwd=REPO, capture_output=True, text=True)
    if run.returncode not in (0, 2):
        raise RuntimeError(f"covidxr predict failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    return {Path(r["path"]): r for r in json.loads(run.stdout)}


def choose_films(rows: dict[Path, dict], n: int, positive_class: str) -> list[Expected]:
    """n films the CLI scored as chest films, those whose page sentences differ first (then the rest).
    `positive_class`: the model card's, whose name the CLI's label carries when the film is positive."""
    from webapp.views.wording import decided_by, verdict  # the page's own wording (the shipped model decides)

    usable = [Expected(str(f), r["probability"], r["label"], r["threshold"],
                       verdict(r["probability"], r["label"] == positive_class, r["threshold"], positive_class,
                               decided_by()))
              for f, r in rows.items() if "error" not in r and r.get("chest_xray", True)]
    seen: set[str] = set()
    distinct = [e for e in usable if not (e.sentence in seen or seen.add(e.sentence))]
    chosen = (distinct + [e for e in usable if e not in distinct])[:n]
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} usable films for {n} sessions: give more with --films")
    return chosen


# ---------------------------------------------------------------- one session in the browser

@dataclass
class Round:
    session: int
    round: int
    film: str
    upload_name: str
    open_s: float | None = None      # page load until the uploader is there and the first run is over
    result_s: float | None = None    # drop until the probability and the decoded heatmap are shown
    shown: str | None = None         # the sentence the page showed
    error: str | None = None         # kind, None when right
    detail: str | None = None


class Deadline:
    """The run's end (--timeout) and the longest one browser wait may take (--request-timeout)."""

    def __init__(self, seconds: float, step_s: float = float("inf")):
        self.end = time.monotonic() + seconds
        self.step_s = step_s

    def expired(self) -> bool:
        return time.monotonic() >= self.end - 0.5

    def left_ms(self, step: bool = True) -> float:
        """Milliseconds the next wait may take (`step`: at most one request's); TimeoutError once the
        run's time is up."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the run's --timeout was reached")
        return (min(left, self.step_s) if step else left) * 1000


def cpu_total(pids: list[int]) -> float | None:
    """CPU seconds of all these processes together (the replicas behind a proxy); None if none is known."""
    found = [c for c in map(cpu_seconds, pids) if c is not None]
    return sum(found) if found and len(found) == len(pids) else None


def browsers_cpu(skip: list[int]) -> float:
    """CPU seconds used so far by this script's child processes (Playwright's driver and the Chromium it runs, the
    exited ones included: each live process's user + system time plus its reaped children's), leaving out the
    subtrees in `skip` (a server started here). On a machine shared with the server this is what the browsers
    take from it; the drop -> heatmap latency cannot beat (their CPU + the server's) / cores."""
    tck, children, times = os.sysconf("SC_CLK_TCK"), {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (f := stat_fields(int(d.name))) is not None:
            children.setdefault(int(f[1]), []).append(int(d.name))
            times[int(d.name)] = sum(int(x) for x in f[11:15]) / tck  # utime, stime, cutime, cstime
    todo, total = [c for c in children.get(os.getpid(), []) if c not in skip], 0.0
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += [c for c in children.get(pid, []) if c not in skip]
    return total


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (the state is [0], the parent [1], utime [11]); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads) so far, from /proc; None if unknown."""
    fields = None if pid is None else stat_fields(pid)
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (ValueError, IndexError, TypeError):
        return None


async def one_round(context, url: str, r: Round, expected: Expected, deadline: Deadline) -> None:
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    page = await context.new_page()
    try:
        t0 = time.perf_counter()
        await page.goto(url, timeout=deadline.left_ms())
        uploader = page.locator(UPLOADER).first
        await uploader.wait_for(state="attached", timeout=deadline.left_ms())  # after the model is loaded
        await page.wait_for_selector(SCRIPT_IDLE, timeout=deadline.left_ms())  # the first run has finished
        r.open_s = time.perf_counter() - t0
        film = Path(expected.film)
        t0 = time.perf_counter()
        await uploader.set_input_files({"name": r.upload_name, "mimeType": MIME.get(film.suffix.lower(), "image/jpeg"),
                                        "buffer": film.read_bytes()})
        result = page.get_by_text(re.compile(VERDICT_PATTERN))
        problem = page.get_by_test_id("stException").or_(page.get_by_text(re.compile("|".join(PROBLEMS))))
        await result.or_(problem).first.wait_for(state="visible", timeout=deadline.left_ms())
        if await problem.count():
            text = await problem.first.inner_text()
            r.error = next((kind for k, kind in PROBLEMS.items() if k in text), "app exception")
            r.detail = text[:300]
            return
        await page.wait_for_function(OVERLAYS_READY_JS, arg=1, timeout=deadline.left_ms())
        r.result_s = time.perf_counter() - t0
        r.shown = (await result.first.inner_text()).replace("\u2060", "").strip()
        # names are shown through webapp.views.literal, whose invisible word joiners a reader does not see
        main = (await page.get_by_test_id("stMain").inner_text()).replace("\u2060", "")
        others = {int(s) for s in UPLOAD_NAME.findall(main)} - {r.session}
        if r.upload_name not in main or others:
            r.error, r.detail = "foreign film shown", f"own film shown: {r.upload_name in main}; other sessions: {sorted(others)}"
        elif r.shown != expected.sentence:
            r.error, r.detail = "wrong result", f"page: {r.shown!r}; CLI: {expected.sentence!r}"
    except (PlaywrightTimeout, TimeoutError) as e:  # "deadline": cut by the run's --timeout, not the app's fault alone
        r.error, r.detail = "deadline" if deadline.expired() else "timeout", str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001 - any other browser failure is counted and reported, not fatal
        r.error, r.detail = f"browser: {type(e).__name__}", str(e).splitlines()[0][:300] if str(e) else ""
    finally:
        await page.close()


async def session(browser, url: str, index: int, expected: Expected, rounds: int, deadline: Deadline,
                  out: list[Round]) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 1200})
    try:
        for k in range(1, rounds + 1):
            r = Round(index, k, expected.film, f"load-s{index:02d}-r{k}-{Path(expected.film).name}")
            out.append(r)
            try:
                deadline.left_ms()
            except TimeoutError:
                r.error, r.detail = "deadline", "not started: the run's --timeout was reached"
                continue
            await one_round(context, url, r, expected, deadline)
    finally:
        await context.close()


@dataclass
class Phase:
    """What the concurrent phase cost: wall seconds, the server's CPU seconds (when started here) and
    the machine's 1-minute load average before and after (other work on the machine shows there)."""
    warmup_s: float = 0.0
    wall_s: float = 0.0
    server_cpu_s: float | None = None
    proxy_cpu_s: float | None = None  # --proxy-pid's processes, over the same phase
    browsers_cpu_s: float = 0.0  # this script's Chromium and Playwright driver, over the same phase
    loadavg: tuple[float, float] = (0.0, 0.0)


async def drive(url: str, films: list[Expected], rounds: int, deadline: Deadline,
                server_pids: list[int], proxy_pids: list[int] | None = None) -> tuple[list[Round], Phase]:
    """All sessions at once after one warm-up page (which loads the model if the server has not)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            t0 = time.perf_counter()
            warm = await browser.new_page()
            await warm.goto(url, timeout=deadline.left_ms(step=False))
            await warm.locator(UPLOADER).first.wait_for(state="attached", timeout=deadline.left_ms(step=False))
            await warm.close()
            phase = Phase(warmup_s=time.perf_counter() - t0)
            out: list[Round] = []
            cpu0, proxy0, browsers0 = cpu_total(server_pids), cpu_total(proxy_pids or []), browsers_cpu(server_pids)
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            await asyncio.gather(*(session(browser, url, i, e, rounds, deadline, out)
                                   for i, e in enumerate(films, 1)))
            phase.wall_s, cpu1, proxy1 = time.perf_counter() - t0, cpu_total(server_pids), cpu_total(proxy_pids or [])
            phase.server_cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
            phase.proxy_cpu_s = proxy1 - proxy0 if proxy0 is not None and proxy1 is not None else None
            phase.browsers_cpu_s = browsers_cpu(server_pids) - browsers0
            phase.loadavg = (load0, os.getloadavg()[0])
            return sorted(out, key=lambda r: (r.session, r.round)), phase
        finally:
            await browser.close()


# ---------------------------------------------------------------- report

def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p95": percentile(values, 0.95), "max": max(values) if values else None,
            "mean": sum(values) / len(values) if values else None}


@dataclass
class Report:
    url: str
    started_server: bool
    weights: str
    sessions: int
    rounds: int
    phase: Phase
    films: list[Expected]
    results: list[Round]
    result_latency_s: dict = field(default_factory=dict)
    open_latency_s: dict = field(default_factory=dict)
    throughput_per_s: float = 0.0
    server_cpu_s_per_result: float | None = None
    errors: dict = field(default_factory=dict)
    isolation_ok: bool = False
    distinct_sentences: int = 0

    @classmethod
    def build(cls, url: str, started: bool, weights: Path, films: list[Expected], rounds: int, phase: Phase,
              results: list[Round]) -> "Report":
        ok = [r for r in results if r.error is None]
        return cls(url, started, str(weights), len(films), rounds, phase, films, results,
                   stats([r.result_s for r in ok]), stats([r.open_s for r in results if r.open_s is not None]),
                   len(ok) / phase.wall_s if phase.wall_s > 0 else 0.0,
                   phase.server_cpu_s / len(ok) if ok and phase.server_cpu_s is not None else None,
                   dict(Counter(r.error for r in results if r.error)),
                   not any(r.error in ("foreign film shown", "wrong result") for r in results),
                   len({e.sentence for e in films}))

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        def row(name: str, s: dict) -> str:
            cells = [f"{s[k]:7.2f}" if s[k] is not None else "      -" for k in ("p50", "p90", "p95", "max", "mean")]
            return f"{name:<30}{s['n']:>4} " + " ".join(cells)

        ok = len([r for r in self.results if r.error is None])
        lines = [f"covidxr load test: {self.sessions} sessions x {self.rounds} rounds on {self.url}"
                 f" ({'started here' if self.started_server else 'already running'}), weights {self.weights}",
                 f"warm-up (first page, model load if not loaded): {self.phase.warmup_s:.1f} s; "
                 f"load average {self.phase.loadavg[0]:.1f} -> {self.phase.loadavg[1]:.1f} on {os.cpu_count()} CPUs",
                 f"{'seconds':<30}{'n':>4} {'p50':>7} {'p90':>7} {'p95':>7} {'max':>7} {'mean':>7}",
                 row("drop -> probability + heatmap", self.result_latency_s),
                 row("page open -> page ready", self.open_latency_s),
                 f"throughput: {ok} results in {self.phase.wall_s:.1f} s = {self.throughput_per_s:.2f} results/s"
                 + (f"; server CPU {self.phase.server_cpu_s:.1f} s = {self.server_cpu_s_per_result:.2f} s per result"
                    if self.server_cpu_s_per_result is not None else "")
                 + (f"; proxy CPU {self.phase.proxy_cpu_s:.2f} s = {self.phase.proxy_cpu_s / ok:.3f} s per result"
                    if self.phase.proxy_cpu_s is not None and ok else ""),
                 f"browsers (Chromium + Playwright's driver, on this machine) CPU {self.phase.browsers_cpu_s:.1f} s"
                 + (f" = {self.phase.browsers_cpu_s / ok:.2f} s per result" if ok else ""),
                 "errors: " + (", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items())) if self.errors else "0"),
                 f"isolation: {'every session saw only its own film and the CLI result' if self.isolation_ok else 'FAILED'}"
                 f" ({self.sessions} films, {self.distinct_sentences} distinct result sentences)"]
        for i, e in enumerate(self.films, 1):
            mine = [r for r in self.results if r.session == i]
            good = sum(r.error is None for r in mine)
            lines.append(f"  s{i:02d} {Path(e.film).name:<28} {good}/{len(mine)} right  expected: {e.sentence}")
        for r in self.results:
            if r.error:
                lines.append(f"  ! s{r.session:02d} round {r.round}: {r.error}: {r.detail}")
        return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="the running app on loopback, e.g. http://127.0.0.1:8501 (default: start one)")
    p.add_argument("--server-pid", type=int, nargs="+", default=[], metavar="PID",
                   help="with --url: the server process(es) whose CPU time to report, e.g. every replica behind a proxy")
    p.add_argument("--proxy-pid", type=int, nargs="+", default=[], metavar="PID",
                   help="with --url behind a proxy: its processes (nginx's workers) whose CPU time to report separately")
    p.add_argument("--sessions", type=int, default=4, help=f"concurrent browser sessions (1-{MAX_SESSIONS})")
    p.add_argument("--rounds", type=int, default=3, help=f"uploads per session (1-{MAX_ROUNDS})")
    p.add_argument("--timeout", type=float, default=300, help="seconds for the whole run, server start included")
    p.add_argument("--request-timeout", type=float, default=240,
                   help="seconds one page open or one result may take before it counts as a timeout")
    p.add_argument("--weights", help="model folder, for the CLI's expected results and the server started here "
                                      "(default: $COVIDXR_WEIGHTS, else the shipped weights/)")
    p.add_argument("--films", nargs="+", default=[], help="films to choose from (default: samples/ and ../shared)")
    p.add_argument("--json", metavar="OUT", help="write the report here")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        p.error(f"--sessions must be 1-{MAX_SESSIONS}")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        p.error(f"--rounds must be 1-{MAX_ROUNDS}")
    if not 10 <= args.timeout <= 3600:
        p.error("--timeout must be 10-3600 seconds")
    if args.url:
        try:
            args.url = loopback_url(args.url)
        except ValueError as e:
            p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    deadline = Deadline(args.timeout, args.request_timeout)
    require_chromium()
    from covidxr.card import CardError, ModelCard
    from covidxr.classifier import DEFAULT_WEIGHTS

    weights = Path(args.weights or os.environ.get("COVIDXR_WEIGHTS") or DEFAULT_WEIGHTS)
    pool = film_pool(args.films, max(2 * args.sessions + 4, args.sessions))
    try:
        films = choose_films(cli_predictions(pool, weights), args.sessions, ModelCard.load(weights).positive_class)
    except (RuntimeError, CardError, OSError) as e:
        print(f"load_test: {e}", file=sys.stderr)
        return 1
    print(f"{len(films)} films, expected results from `python -m covidxr predict --weights {weights}`", file=sys.stderr)
    with ExitStack() as stack:
        url, server_pids = args.url, list(args.server_pid)
        if url is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidxr-load-"))) / "server.log"
            env = {**os.environ, "COVIDXR_WEIGHTS": str(weights), "COVIDXR_THREADS": os.environ.get("COVIDXR_THREADS", "1")}
            try:
                app = stack.enter_context(running_app(log, env=env, start_timeout_s=deadline.left_ms(step=False) / 1000))
                url, server_pids = app.url, [app.proc.pid]
            except AppStartError as e:
                print(f"load_test: the app did not start: {e}", file=sys.stderr)
                return 1
            print(f"started the app on {url}", file=sys.stderr)
        from playwright.async_api import Error as PlaywrightError

        try:
            results, phase = asyncio.run(drive(url, films, args.rounds, deadline, server_pids, args.proxy_pid))
        except (TimeoutError, PlaywrightError) as e:
            print(f"load_test: warm-up did not finish: {e}", file=sys.stderr)
            return 1
    report = Report.build(url, args.url is None, weights, films, args.rounds, phase, results)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    return 0 if not report.errors else 1


if __name__ == "__main__":
    sys.exit(main())
