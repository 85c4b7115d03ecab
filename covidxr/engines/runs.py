"""Runs of `python -m covidxr evaluate FOLDER --engine ray` kept on the server's disk, so that a run outlives
whatever started it (the app's browser session, its script run, even the app's server process).

A registry is a folder the operator names (the app: $COVIDXR_RUNS_DIR); each run is a sub-folder named by a
random, URL-safe id, holding

    run.json     what was asked: folder, title, films, address, site profile, threshold, positive class,
                 started, host, pid, the command's arguments, one entry per attempt (a resume is an attempt)
    rows.csv     the `--results` file: one line per film, appended and fsynced per batch as the cluster scores
    report.json  the `--json` report, written when the run ends
    exit.json    the exit record {"code", "ended"}, written by the wrapper below when the command returns
    stdout.txt, stderr.txt   the command's output (progress counts and the one-line error; no film's pixels)

`submit` starts `python -m covidxr.engines.runs RUN_DIR`: a wrapper in its own session (start_new_session, so
that it survives the process that started it and a signal to that one's process group) that runs the
command of run.json in-process through covidxr.cli.main and then writes exit.json. The state of a run is read
from these files and the wrapper's pid: running, finished, failed (with the command's one-line error) or
interrupted (the process is gone with no exit record, or it was stopped by a signal); `resume` starts the
same command again with `--resume`, which scores only the films rows.csv does not hold yet.

The folder holds film paths and their scores: patient data (docs/cluster.md says where it must live).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from ..atomic import write_atomic
from ..lru import LRU

RUN_FILE, ROWS_FILE, REPORT_FILE, EXIT_FILE = "run.json", "rows.csv", "report.json", "exit.json"
OUT_FILE, ERR_FILE, LOCK_FILE = "stdout.txt", "stderr.txt", ".lock"
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
STOPPED_CODES = {130, 128 + signal.SIGTERM}  # stopped by Ctrl-C or SIGTERM (exit record written): resumable
STARTING_S = 60.0  # a run whose pid is not recorded yet counts as starting (running) this long
_ID = re.compile(r"[A-Za-z0-9_-]{16}")
_ERROR_TAIL = 64 << 10  # bytes of stderr searched for the error line (progress counts fill the rest)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the wrapper's cwd: `-m covidxr` finds this package
_children: dict[int, subprocess.Popen] = {}  # wrappers this process started: polled, so none stays a zombie
# rows.csv path -> (bytes counted, up to a line's end; lines in them), for the files most recently counted
_counted: LRU[str, tuple[int, int]] = LRU(256)  # more runs than any page lists
_counted_lock = threading.Lock()


class RunNotFound(ValueError):
    """A run id that is malformed or names no run in the registry; the message says which."""


class RunBusy(RuntimeError):
    """The run is still going: it cannot be resumed."""


@dataclass(frozen=True)
class Run:
    """One run's folder and what run.json says about it."""
    id: str
    dir: Path
    meta: dict

    @property
    def total(self) -> int:
        return int(self.meta.get("films") or 0)

    @property
    def title(self) -> str:
        return str(self.meta.get("title") or self.meta.get("folder") or self.id)

    def file(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class Status:
    """Where a run stands: its state, films scored of the films found, the error line of a failed run."""
    state: str
    done: int
    total: int
    error: str | None = None
    code: int | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0


# ---------------------------------------------------------------- the registry


def new_id() -> str:
    """16 random URL-safe characters: the run's folder name and its `?run=` in the app's address."""
    return secrets.token_urlsafe(12)


def run_dir(root: Path, run_id: str) -> Path:
    """The folder of a run id; RunNotFound for anything that is not an id (a path, `..`, another length), so
    that an id taken from a URL can never name a folder outside the registry."""
    if not isinstance(run_id, str) or not _ID.fullmatch(run_id):
        raise RunNotFound("not a run id")
    return Path(root) / run_id


def open_run(root: Path, run_id: str) -> Run:
    """The run of that id, read from its run.json; RunNotFound when the id is malformed or has no run."""
    folder = run_dir(root, run_id)
    try:
        meta = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunNotFound(f"no run {run_id} in {root}") from None
    return Run(run_id, folder, meta)


def list_runs(root: Path, limit: int = 20) -> list[Run]:
    """The most recent runs first (by start time), at most `limit`; folders that are not runs are skipped."""
    try:
        names = [p.name for p in Path(root).iterdir() if _ID.fullmatch(p.name)]
    except OSError:
        return []
    found = []
    for name in names:
        try:
            found.append(open_run(root, name))
        except RunNotFound:
            continue
    return sorted(found, key=lambda r: str(r.meta.get("started", "")), reverse=True)[:limit]


def command(folder: str, address: str, run: Path, *, site: str | None = None, weights: str | None = None,
            batch_size: int | None = None, workers: int | None = None) -> list[str]:
    """The arguments of `python -m covidxr` for a run: results and report in the run's folder. Films the gate
    refuses keep their score in the rows (--include-non-chest), as the app's own batches keep it, so that a
    page can offer the same "include the refused films" switch; the report.json of such a run therefore counts
    them (its include_non_chest says so), while the app's report, built from the rows, leaves them out until
    asked."""
    args = ["evaluate", str(folder), "--engine", "ray", "--address", address, "--results", str(run / ROWS_FILE),
            "--json", str(run / REPORT_FILE), "--include-non-chest"]
    for flag, value in (("--site", site), ("--weights", weights), ("--batch-size", batch_size),
                        ("--workers", workers)):
        if value is not None:
            args += [flag, str(value)]
    return args


def submit(root: Path, folder: str, films: int, address: str, *, title: str | None = None, site: str | None = None,
           site_name: str | None = None, threshold: float | None = None, positive_class: str | None = None,
           weights: str | None = None, batch_size: int | None = None, workers: int | None = None,
           extra: dict | None = None) -> Run:
    """Register a run of `folder` (`films` films found in it) on the cluster at `address` and start it; returns
    at once. `site`: a site profile's folder (scored with it; `site_name` is what run.json records), `extra`:
    more facts for run.json (the app's "scored with" line)."""
    root = Path(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_id = new_id()
    folder_path = root / run_id
    folder_path.mkdir(mode=0o700)
    meta = {"id": run_id, "folder": str(folder), "title": title or str(folder), "films": int(films),
            "address": address, "site": site_name, "site_dir": site, "threshold": threshold,
            "positive_class": positive_class, "started": _now(), "host": socket.gethostname(), "pid": None,
            "command": command(folder, address, folder_path, site=site, weights=weights, batch_size=batch_size,
                               workers=workers),
            "attempts": [], **(extra or {})}
    _write_json(folder_path / RUN_FILE, meta)
    return _launch(Run(run_id, folder_path, meta), resume=False)


def resume(run: Run) -> Run:
    """Start the run's command again with --resume: only the films its rows.csv lacks are scored. RunBusy
    while it is still going (two writers must never append to one results file)."""
    with _locked(run.dir):
        run = open_run(run.dir.parent, run.id)
        if status(run).state == RUNNING:
            raise RunBusy("the run is still going")
        run.file(EXIT_FILE).unlink(missing_ok=True)
        return _launch(run, resume=True)


def _launch(run: Run, resume: bool) -> Run:
    """Start the wrapper detached from this process (own session, no terminal, output to the run's folder) and
    record its pid in run.json."""
    args = [sys.executable, "-m", __name__, str(run.dir)] + (["--resume"] if resume else [])
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    with open(run.file(OUT_FILE), "wb") as out, open(run.file(ERR_FILE), "wb") as err:
        proc = subprocess.Popen(args, cwd=_PACKAGE_PARENT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, close_fds=True)
    _children[proc.pid] = proc
    meta = {**run.meta, "pid": proc.pid,
            "attempts": [*run.meta.get("attempts", []),
                         {"started": _now(), "pid": proc.pid, "resume": resume, "done_before": scored(run)}]}
    _write_json(run.file(RUN_FILE), meta)
    return Run(run.id, run.dir, meta)


# ---------------------------------------------------------------- state


def status(run: Run) -> Status:
    """running / finished / failed / interrupted, read from the exit record, the report and the wrapper's pid."""
    done, total = scored(run), run.total
    ended = _read_json(run.file(EXIT_FILE))
    if ended is None:
        if _alive(run):
            return Status(RUNNING, done, total)
        if run.file(REPORT_FILE).exists():  # ended between writing its report and its exit record
            return Status(FINISHED, done, total, code=0)
        return Status(INTERRUPTED, done, total)
    code = ended.get("code")
    if code in (0, 2) and run.file(REPORT_FILE).exists():  # 2: some film unreadable, listed in the rows
        return Status(FINISHED, done, total, code=code)
    if code in STOPPED_CODES:
        return Status(INTERRUPTED, done, total, code=code)
    return Status(FAILED, done, total, error_line(run) or f"the run ended with exit status {code}", code)


def scored(run: Run) -> int:
    """Films in rows.csv so far, at most the films found: whole lines past the header, counted without
    parsing them (rows.csv holds one line per film, a film re-scored on resume because its bytes changed being
    the exception). Every refresh of a page, and of its list of runs, asks this, and a run of 10^6 films
    writes over 100 MB of rows: so only the bytes appended since the last count are read (per file, in this
    process), up to the last whole line, which a resume's repair of a cut line never moves back past."""
    path = str(run.file(ROWS_FILE))
    with _counted_lock:
        offset, lines = _counted.get(path) or (0, 0)
    try:
        with open(path, "rb") as f:
            if offset > os.fstat(f.fileno()).st_size:  # a file started afresh
                offset, lines = 0, 0
            f.seek(offset)
            at = offset
            for chunk in iter(lambda: f.read(1 << 20), b""):
                if n := chunk.count(b"\n"):
                    lines += n
                    offset = at + chunk.rfind(b"\n") + 1  # a line not finished yet is counted next time
                at += len(chunk)
    except OSError:
        return 0
    with _counted_lock:
        _counted.put(path, (offset, lines))
    return max(0, min(lines - 1, run.total))


def error_line(run: Run) -> str | None:
    """The command's one-line error (`error: ...`, without the prefix), else the last line of its stderr (a
    traceback's last line); None when it wrote nothing."""
    try:
        with open(run.file(ERR_FILE), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _ERROR_TAIL))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    at = text.rfind("error: ")
    if at >= 0:
        return re.split(r"[\r\n]", text[at + len("error: "):], maxsplit=1)[0].strip() or None
    lines = [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]
    return lines[-1] if lines else None


def seconds(run: Run) -> float | None:
    """The report's scoring time of a finished run (its last attempt), else None."""
    report = _read_json(run.file(REPORT_FILE))
    return None if report is None else report.get("seconds")


def _alive(run: Run) -> bool:
    """Whether the run's wrapper still runs: its pid, checked to be this run's wrapper (a pid reused by another
    process does not count; nor does a zombie). On another host the pid says nothing: running until its exit
    record appears. A run registered a moment ago, whose pid is not recorded yet, counts as running."""
    pid = run.meta.get("pid")
    if run.meta.get("host") not in (None, socket.gethostname()):
        return True
    if pid is None:
        return age(run.meta.get("started")) < STARTING_S
    child = _children.get(pid)
    if child is not None:  # started by this process: poll() reaps it once it ends (and it may not have exec'd yet)
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():  # no /proc (not Linux): the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes()
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and run.id.encode() in cmdline


# ---------------------------------------------------------------- files


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def age(started: str | None) -> float:
    """Seconds since an ISO time of run.json (inf when there is none)."""
    try:
        return time.time() - datetime.fromisoformat(str(started)).timestamp()
    except ValueError:
        return float("inf")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    """Written whole or not at all (covidxr.atomic): a reader never sees half a file."""
    write_atomic(path, json.dumps(value, indent=1) + "\n")


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One resume at a time per run, across threads and processes (the app's sessions, its replicas)."""
    with open(folder / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the wrapper: python -m covidxr.engines.runs


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m covidxr.engines.runs RUN_DIR [--resume]`: run the command of RUN_DIR/run.json through
    covidxr.cli.main in this process, then write the exit record. SIGTERM stops it like Ctrl-C (exit status
    130, recorded: the run is resumable)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    folder = Path(argv[0])
    meta = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    signal.signal(signal.SIGTERM, _stop)
    from ..cli import main as cli_main

    try:
        code = cli_main([*meta["command"], *(["--resume"] if "--resume" in argv[1:] else [])])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    except BaseException as e:  # noqa: BLE001 - recorded as a failed run, its last line the error
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    sys.stderr.flush()
    _write_json(folder / EXIT_FILE, {"code": code, "ended": _now()})
    return code


if __name__ == "__main__":
    sys.exit(main())
