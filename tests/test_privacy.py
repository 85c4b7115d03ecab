"""Uploads are processed in memory: no file on disk, nothing in the server log, no patient identity shown.

The real server (`streamlit run app.py`, own port, fresh empty HOME and TMPDIR, cwd = the repo, output to
a log) is driven in Debian's Chromium: a real film with a canary name and unique bytes plus a real DICOM
(2.7 MB) on the screen page, a zip of films and a DICOM on the evaluation page, the review page. Every file (path, size,
mtime) under the watched trees is snapshotted before and after (server stopped). Chromium's profile,
HOME and TMPDIR, Playwright's temp dir and the server log lie in a folder outside them.

On a shared machine other processes write in /tmp and the repo too (test runners, model training), so
when strace is installed the server runs under `strace -f` and a change outside the server's own
HOME/TMPDIR counts only if the server's process tree wrote it; the trace also shows every write it made
anywhere on the filesystem. Without strace every change in the watched trees counts. Every new or
changed file, whoever wrote it, is searched for the uploads' bytes, the canary name and the patient's
name and id.

A second, in-process check runs the same uploads through `streamlit.testing.v1.AppTest` with a Python
audit hook that records every open-for-writing, mkdir, rename and temp file made while the pages run.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pytest

from covidxr.classifier import DEFAULT_WEIGHTS
from tests.conftest import shared_data
from tests.browser import (CHROMIUM, CHROMIUM_ARGS, OVERLAYS_READY_JS, REPO, SCRIPT_IDLE, UPLOADER, VERDICT_PATTERN,
                            require_chromium, running_app)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CANARY = f"privacy-canary-{uuid.uuid4().hex}"
FILM_SOURCE = shared_data("cxr", "hannover-mhh", "covid", "00d96e05.jpg")  # a real film, not one of samples/
# As named in the DICOM MANIFEST. The screen page gets a DICOM over 1 MiB: Starlette, under Streamlit's
# upload route, spools a multipart part larger than that to a temporary file unless told otherwise.
DICOM_FILE = "cxr/nema-wg04_RG1_JLSN.dcm"                                   # 2.7 MB, JPEG-LS
ZIP_DICOM_FILE = "cxr/siim-acr_CR_PA_jpeg-baseline.dcm"                     # 127 kB, in the batch zip
ZIP_NORMAL = REPO / "samples" / "normal" / "00001300_000.jpg"
SLICE = 64
RESULT_TIMEOUT_MS = 300_000  # first prediction loads the model; strace and a busy 2-core box slow it
TRACED_CALLS = ("open,openat,openat2,creat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
                "mkdir,mkdirat,mknod,mknodat,truncate,bind")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
# The only writes the server may make, each with why it is harmless; everything else fails the test.
# {home} and {tmp} stand for the server's fresh HOME and TMPDIR.
ALLOWED_ALWAYS: list[tuple[str, str]] = [
    (r"^/dev/null$", "the null device: output thrown away"),
    (r"/__pycache__/[^/]+\.pyc(\.\d+)?$", "Python's bytecode cache of imported modules: compiled source code, "
                                          "never data (written once per module version)"),
]
# Made while the server starts and loads the model, before any upload exists (strace's timestamps
# tell), so they cannot hold a film; the content search below still reads them.
ALLOWED_AT_START: list[tuple[str, str]] = [
    (r"^{home}/\.(config|cache)(/matplotlib(/fontlist-v[\d.]+\.json(\.matplotlib-lock)?)?)?$",
     "matplotlib (imported by grad-cam) caches the list of installed fonts once per HOME"),
    (r"^{tmp}/[a-z0-9_]{{8}}$", "tempfile.gettempdir() checks that TMPDIR is writable with a throw-away file "
                                 "holding b'blat', deleted at once"),
    (r"^{tmp}/torchinductor_[^/]+$", "torch makes its (empty) compiler cache folder at import; nothing is compiled"),
    (r"^{home}/\.cache/covidxr(/onnx(/\.?[0-9a-f]{{32}}\.onnx(\.\d+\.\d+)?)?)?$",
     "the classifier networks exported for ONNX Runtime (covidxr/runtime.py) at model load: weights only, "
     "once per HOME"),
    (r"^/dev/shm/sem\.[\w.-]+$", "POSIX semaphores (joblib/multiprocessing locks): kernel objects, no file data"),
]


def audit_store_rules() -> list[tuple[str, str]]:
    """The audit trail's SQLite file (tests/conftest.py gives the run its own $COVIDXR_DB): the one file the app
    writes while films arrive, by design; the content checks below search it like any other."""
    url = os.environ.get("COVIDXR_DB", "")
    if not url.startswith("sqlite:///"):
        return []
    return [("^" + re.escape(url.removeprefix("sqlite:///")) + r"(-wal|-shm|-journal)?$",
             "the audit trail (COVIDXR_DB): film sha256s, decisions, counts; never pixels, names or identity")]


def allowed(path: str, home: str, tmp: str, at_start: bool = True) -> str | None:
    """Why writing `path` is harmless (at start: also the start-up list), or None."""
    rules = ALLOWED_ALWAYS + (ALLOWED_AT_START if at_start else [])
    subst = {"home": re.escape(home), "tmp": re.escape(tmp)}
    found = next((why for pattern, why in rules if re.search(pattern.format(**subst), path)), None)
    return found or next((why for pattern, why in audit_store_rules() if re.search(pattern, path)), None)


# ---------------------------------------------------------------- what must never reach the disk or the log

def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: still the real film, but bytes no other file has."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def slices(data: bytes, label: str, at: Iterable[float] = (1 / 3, 1 / 2, 2 / 3)) -> dict[str, bytes]:
    return {f"{label} bytes at {f:.0%}": data[int(len(data) * f):int(len(data) * f) + SLICE] for f in at}


def dicom_identity(file: str) -> list[str]:
    """PatientName and PatientID of a shared DICOM, as its MANIFEST records them."""
    with open(shared_data("dicom", "MANIFEST.csv"), newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == file)
    ids = re.findall(r"Patient(?:Name|ID)='([^']*)'", row["patient_ids"])
    assert len(ids) == 2 and all(ids), f"{file}: no patient name/id in the manifest: {row['patient_ids']}"
    return sorted(set(ids))


@dataclass
class Uploads:
    film_name: str
    film: bytes
    dicom_name: str
    dicom: bytes
    zip_dicom: bytes
    zip_name: str
    zip: bytes
    identity: list[str]

    @property
    def unique_needles(self) -> dict[str, bytes]:
        """Bytes that exist only because of this run: the film's head with its canary comment, and the
        canary (in every upload's name and in the zip's entry names). Searched in every changed file."""
        return {"film head (canary comment)": self.film[:SLICE], "canary": CANARY.encode()}

    @property
    def needles(self) -> dict[str, bytes]:
        """Also slices of the film's and the DICOM's bytes and the patient's name and id, which other
        files on a shared machine may hold too (another test's copy of the DICOM): searched in the files
        the server wrote."""
        found = {**self.unique_needles, **slices(self.film, "film"), **slices(self.dicom, "DICOM"),
                 **slices(self.zip_dicom, "zipped DICOM")}
        found.update({f"patient identity {i!r}": i.encode() for i in self.identity})
        return found


def make_uploads() -> Uploads:
    film = with_comment(FILM_SOURCE.read_bytes(), CANARY)
    dicom = shared_data("dicom", DICOM_FILE).read_bytes()
    zip_dicom = shared_data("dicom", ZIP_DICOM_FILE).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # stored: the films' own bytes are in the zip
        z.writestr(f"{CANARY}-batch/covid/{CANARY}.jpg", film)
        z.writestr(f"{CANARY}-batch/normal/{ZIP_NORMAL.name}", ZIP_NORMAL.read_bytes())
        z.writestr(f"{CANARY}-batch/normal/{CANARY}.dcm", zip_dicom)
    return Uploads(f"{CANARY}.jpg", film, f"{CANARY}-study.dcm", dicom, zip_dicom, f"{CANARY}-batch.zip",
                   buf.getvalue(), dicom_identity(DICOM_FILE) + dicom_identity(ZIP_DICOM_FILE))


def leaks(paths: Iterable[str], needles: dict[str, bytes]) -> dict[str, list[str]]:
    """{file: [what it contains]} over the readable regular files among `paths`."""
    found: dict[str, list[str]] = {}
    for p in paths:
        try:
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            data = Path(p).read_bytes()
        except OSError:
            continue
        hits = [name for name, needle in needles.items() if needle in data or needle in p.encode()]
        if hits:
            found[p] = hits
    return found


# ---------------------------------------------------------------- file snapshots

@dataclass(frozen=True)
class Entry:
    kind: str        # "f" file, "d" directory, "l" symlink, "o" other (socket, fifo)
    size: int
    mtime_ns: int


def snapshot(roots: Iterable[Path], exclude: Iterable[Path]) -> dict[str, Entry]:
    """Every file, directory and link under `roots` (not following links), minus the `exclude`d trees."""
    skip = {str(p) for p in exclude}
    out: dict[str, Entry] = {}
    for root in roots:
        for top, dirs, files in os.walk(root, onerror=lambda e: None):
            dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
            for name in dirs + files:
                path = os.path.join(top, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # gone between listing and stat: another process's temp file
                kind = ("d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode)
                        else "f" if stat.S_ISREG(st.st_mode) else "o")
                out[path] = Entry(kind, st.st_size, st.st_mtime_ns)
    return out


def changed(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """New paths, and files or links whose size or mtime moved (a directory's mtime moves with its
    contents, which are listed themselves)."""
    return sorted(p for p, e in after.items()
                  if p not in before or (e.kind != "d" and (before[p].kind, before[p].size, before[p].mtime_ns)
                                         != (e.kind, e.size, e.mtime_ns)))


# ---------------------------------------------------------------- the server's own writes, from strace

@dataclass(frozen=True)
class Write:
    time: float     # seconds since the epoch, as strace -ttt prints it
    call: str
    path: str
    line: str


@functools.cache
def strace() -> str | None:
    """strace's path if it is installed and may trace here (ptrace can be forbidden in containers)."""
    found = shutil.which("strace")
    if found is None:
        return None
    probe = subprocess.run([found, "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, timeout=60)
    return found if probe.returncode == 0 else None



def strace_prefix(out: Path) -> list[str]:
    """strace -f on the server's whole process tree, successful path-creating/-writing calls only,
    file descriptors decoded to paths (-y), each with its time (-ttt)."""
    return [strace(), "-f", "-qq", "-y", "-ttt", "--seccomp-bpf", "-e", f"trace={TRACED_CALLS}", "-e", "status=successful",
            "-s", "4096", "-o", str(out)]


CALL = re.compile(r"^\d+\s+(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(?:<(.*?)>)?")
QUOTED = re.compile(r'(?:AT_FDCWD|\d+)(?:<([^>]*)>)?,\s*"((?:[^"\\]|\\.)*)"|"((?:[^"\\]|\\.)*)"')


def traced_writes(trace: Path, cwd: Path) -> list[Write]:
    """Each path the traced processes opened for writing, created, renamed to, linked or bound."""
    writes: list[Write] = []
    for line in trace.read_text(errors="replace").splitlines():
        m = CALL.match(line)
        if not m:
            continue  # signals, exits
        stamp, call, args, _, fd_path = m.groups()
        t = float(stamp)
        if call in ("open", "openat", "openat2", "creat"):
            if call == "creat" or any(f in args for f in WRITE_FLAGS):
                writes.append(Write(t, call, fd_path or args, line))
            continue
        if call == "bind":
            sock = re.search(r'sun_path="([^"]*)"', args)
            if sock and sock.group(1):
                writes.append(Write(t, call, sock.group(1), line))
            continue
        paths = []
        for base, rel_at, rel in QUOTED.findall(args):
            name = rel_at or rel
            paths.append(name if name.startswith("/") else os.path.join(base or str(cwd), name))
        # the created / destination path is the last one (rename, link, symlink: target; mkdir: the dir)
        if paths:
            writes.append(Write(t, call, os.path.normpath(paths[-1]), line))
    return writes


# ---------------------------------------------------------------- the run in a real browser

@dataclass
class PrivacyRun:
    uploads: Uploads
    home: str                            # the server's fresh HOME and TMPDIR
    tmp: str
    changes: list[str]                   # changed paths in the watched trees
    writes: list[Write] | None           # the server's own writes (None without strace)
    first_upload: float                  # time.time() when the first film was dropped
    log: str
    page_texts: list[str] = field(default_factory=list)

    def counted(self) -> list[str]:
        """Changes that are the server's: all in its own HOME/TMPDIR, elsewhere those it wrote (all of
        them without strace)."""
        if self.writes is None:
            return self.changes
        written = {w.path for w in self.writes}
        return [p for p in self.changes
                if any(p == d or p.startswith(d + "/") for d in (self.home, self.tmp))
                or p in written or any(p.startswith(w + "/") for w in written)]

    def allowed(self, path: str, at_start: bool = True) -> str | None:
        return allowed(path, self.home, self.tmp, at_start)


def weights_dir() -> Path:
    directory = Path(os.environ.get("COVIDXR_TEST_WEIGHTS") or DEFAULT_WEIGHTS)
    if not (directory / "model_card.json").exists():
        pytest.skip(f"no model in {directory} yet (set COVIDXR_TEST_WEIGHTS to a weights folder)")
    return directory


def server_env(home: Path, tmp: Path, weights: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("XDG_") and k not in ("COVIDXR_DATA_ROOTS", "TORCH_HOME", "MPLCONFIGDIR")}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp),
            "COVIDXR_WEIGHTS": str(weights), "COVIDXR_THREADS": "1"}


def drive(page, url: str, uploads: Uploads) -> tuple[list[str], float]:
    """Screen page (film + DICOM), evaluation page (zip), review page: each page's text, and the time
    (time.time()) just before the first upload."""
    from playwright.sync_api import expect

    texts = []
    main = page.get_by_test_id("stMain")
    page.goto(url)
    uploader = page.locator(UPLOADER).first
    uploader.wait_for(state="attached")  # the page has loaded the model
    page.wait_for_selector(SCRIPT_IDLE)
    first_upload = time.time()
    uploader.set_input_files([{"name": uploads.film_name, "mimeType": "image/jpeg", "buffer": uploads.film},
                              {"name": uploads.dicom_name, "mimeType": "application/dicom", "buffer": uploads.dicom}])
    expect(page.get_by_text(re.compile(VERDICT_PATTERN)).nth(1)).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(OVERLAYS_READY_JS, arg=2, timeout=RESULT_TIMEOUT_MS)
    expect(page.get_by_text(uploads.film_name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE)
    texts.append(main.inner_text())

    page.get_by_test_id("stSidebarNav").get_by_text("Batch evaluation", exact=True).click()
    expect(page.get_by_role("heading", name="Batch evaluation")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE)
    page.locator(UPLOADER).first.set_input_files(
        [{"name": uploads.zip_name, "mimeType": "application/zip", "buffer": uploads.zip}])
    run = page.get_by_role("button", name="Run evaluation")
    expect(run).to_be_enabled(timeout=RESULT_TIMEOUT_MS)  # the page has re-run with the zip
    run.click()
    expect(page.get_by_text("3 labelled films scored", exact=False)).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE)
    texts.append(main.inner_text())

    page.get_by_test_id("stSidebarNav").get_by_text("Heatmap review", exact=True).click()
    expect(page.get_by_role("heading", name="Heatmap review")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE)
    # st.button's own "Open" (the outcome filter's dropdown toggle is a button named "Open" too)
    page.get_by_test_id("stButton").get_by_role("button", name="Open").first.click()
    # the review dialog's own "Close" (the dialog's corner cross is a button named "Close" too)
    expect(page.get_by_role("dialog").get_by_test_id("stButton").get_by_role("button", name="Close")).to_be_visible(
        timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(OVERLAYS_READY_JS, arg=1, timeout=RESULT_TIMEOUT_MS)
    texts.append(main.inner_text())
    return texts, first_upload


def keep_failure(page, outside: Path) -> None:
    """A screenshot and the server log, kept in /var/tmp when the browser part fails."""
    keep = Path(tempfile.mkdtemp(prefix="covidxr-privacy-failure-", dir="/var/tmp"))
    try:
        page.screenshot(path=str(keep / "page.png"), full_page=True)
    except Exception:  # noqa: BLE001 - best effort; the original error is what matters
        pass
    shutil.copy(outside / "server.log", keep / "server.log")
    print(f"\n[privacy] browser run failed: screenshot and server log in {keep}")


@pytest.fixture(scope="module")
def browser_run() -> PrivacyRun:
    from playwright.sync_api import sync_playwright

    weights = weights_dir()
    require_chromium()
    uploads = make_uploads()
    outside = Path(tempfile.mkdtemp(prefix="covidxr-privacy-", dir="/var/tmp"))  # not watched
    home, tmp = Path(tempfile.mkdtemp(prefix="covidxr-privacy-home-")), Path(tempfile.mkdtemp(prefix="covidxr-privacy-tmp-"))
    roots = [home, tmp, REPO, Path("/tmp"), Path("/dev/shm"), Path("/var/tmp")]
    exclude = [REPO / ".venv", REPO / ".git", outside]
    browser_home, browser_tmp = outside / "browser-home", outside / "browser-tmp"
    browser_home.mkdir()
    browser_tmp.mkdir()
    trace = outside / "server.strace"
    try:
        before = snapshot(roots, exclude)
        with running_app(outside / "server.log", env=server_env(home, tmp, weights),
                         wrapper=strace_prefix(trace) if strace() else ()) as app, \
                pytest.MonkeyPatch.context() as mp:
            mp.setenv("TMPDIR", str(browser_tmp))  # Playwright's driver (node) keeps its temp files there
            with sync_playwright() as p:
                context = p.chromium.launch_persistent_context(
                    str(outside / "chromium-profile"), executable_path=CHROMIUM,
                    args=[*CHROMIUM_ARGS, "--disable-dev-shm-usage"],  # shared memory in its TMPDIR, not /dev/shm
                    env={**os.environ, "HOME": str(browser_home), "TMPDIR": str(browser_tmp)},
                    viewport={"width": 1440, "height": 1400})
                page = context.new_page()
                page.set_default_timeout(RESULT_TIMEOUT_MS)
                try:
                    texts, first_upload = drive(page, app.url, uploads)
                except Exception:
                    keep_failure(page, outside)
                    raise
                finally:
                    context.close()
        # the server is stopped: whatever it wrote at shutdown is on disk now
        after = snapshot(roots, exclude)
        yield PrivacyRun(uploads, str(home), str(tmp), changed(before, after),
                         traced_writes(trace, REPO) if strace() else None, first_upload,
                         (outside / "server.log").read_text(errors="replace"), texts)
    finally:
        for d in (outside, home, tmp):
            shutil.rmtree(d, ignore_errors=True)


def describe(paths: Iterable[str], limit: int = 40) -> str:
    paths = list(paths)
    return "\n".join(paths[:limit]) + (f"\n… and {len(paths) - limit} more" if len(paths) > limit else "")


def test_no_new_or_changed_file_in_the_watched_trees(browser_run: PrivacyRun, capsys):
    counted = browser_run.counted()
    bad = [p for p in counted if not browser_run.allowed(p)]
    assert not bad, f"the server created or changed these files:\n{describe(bad)}"
    with capsys.disabled():
        print(f"\n[privacy] {len(browser_run.changes)} paths changed in the watched trees, "
              f"{len(counted)} by the server, all allowed:")
        for p in counted:
            print(f"[privacy]   {p}: {browser_run.allowed(p)}")


def test_server_process_tree_writes_nothing_once_films_arrive(browser_run: PrivacyRun):
    """Anywhere on the filesystem, not only in the watched trees: after the first drop, only /dev/null
    and bytecode; before it (start-up, model load), only the start-up list."""
    if browser_run.writes is None:
        pytest.fail("strace is not installed or may not trace here: the per-process check cannot run "
                    "(apt-get install strace); the snapshot test above ran in strict mode")
    assert browser_run.writes, "the trace recorded nothing: is strace tracing the server at all?"
    bad = [w for w in browser_run.writes
           if not browser_run.allowed(w.path, at_start=w.time < browser_run.first_upload)]
    assert not bad, "the server wrote:\n" + describe(
        f"{w.path}{' (an unnamed temporary file: on disk while open)' if 'O_TMPFILE' in w.line else ''}   [{w.line}]"
        for w in bad)


def test_no_new_file_holds_an_upload_or_the_patient_identity(browser_run: PrivacyRun):
    uploads = browser_run.uploads
    found = leaks(browser_run.changes, uploads.unique_needles)
    assert not found, f"this run's upload found on disk: {found}"
    found = leaks(browser_run.counted(), uploads.needles)
    assert not found, f"uploaded data found in files the server wrote: {found}"
    if browser_run.writes is not None:  # anywhere else on the filesystem
        found = leaks({w.path for w in browser_run.writes}, uploads.needles)
        assert not found, f"uploaded data found in files the server wrote: {found}"


def test_server_log_has_no_file_name_or_patient_identity(browser_run: PrivacyRun):
    log = browser_run.log
    assert "You can now view your Streamlit app" in log or "Local URL" in log, f"not the server's log:\n{log[-2000:]}"
    for text in (CANARY, *browser_run.uploads.identity):
        assert text not in log, f"{text!r} is in the server log"


def test_the_audit_trail_holds_the_films_hashes_not_their_names(browser_run: PrivacyRun):
    import hashlib

    from covidxr.audit import open_store

    store = open_store()
    screened = {r.object for r in store.records(action="screen")}
    assert hashlib.sha256(browser_run.uploads.film).hexdigest() in screened
    text = store.export_json()
    for needle in (CANARY, browser_run.uploads.film_name, browser_run.uploads.dicom_name, *browser_run.uploads.identity):
        assert needle not in text, f"{needle!r} is in the audit trail"
    assert store.verify().ok


def test_pages_never_show_the_patient_identity(browser_run: PrivacyRun):
    screen, batch, review = browser_run.page_texts
    assert browser_run.uploads.film_name in screen and "modality" in screen.lower()  # the page did show the films
    for text in browser_run.page_texts:
        for who in browser_run.uploads.identity:
            assert who not in text


# ---------------------------------------------------------------- in process: AppTest with an audit hook

_recording: list[tuple[str, str]] | None = None  # (event, path) while a check records, else None
_AUDIT_PATH_EVENTS = {"os.mkdir": 0, "os.rename": 1, "os.link": 1, "os.symlink": 1, "os.truncate": 0,
                      "shutil.copyfile": 1, "tempfile.mkstemp": 0, "tempfile.mkdtemp": 0}
_WRITE_OS_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple) -> None:
    """Python's audit hook: every open for writing, and every call that makes or moves a path."""
    rec = _recording
    if rec is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_OS_FLAGS)
        if writing and not isinstance(path, int):
            rec.append((event, os.fsdecode(path)))
    elif event in _AUDIT_PATH_EVENTS:
        target = args[_AUDIT_PATH_EVENTS[event]]
        if not isinstance(target, int):
            rec.append((event, os.fsdecode(target)))


_hooked = False


def record_writes() -> list[tuple[str, str]]:
    """Start recording this process's Python-level writes (an audit hook cannot be removed, so it is
    added once and idles while nothing records)."""
    global _recording, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    _recording = []
    return _recording


def stop_recording() -> None:
    global _recording
    _recording = None


def test_apptest_uploads_write_nothing_in_process(monkeypatch):
    """The same uploads through AppTest (screen: film + DICOM; evaluation: the zip; review): no
    Python-level write anywhere, nothing new in the fresh HOME/TMPDIR, no upload bytes in any new file."""
    from streamlit.testing.v1 import AppTest

    weights = weights_dir()
    uploads = make_uploads()
    home, tmp = Path(tempfile.mkdtemp(prefix="covidxr-privacy-home-")), Path(tempfile.mkdtemp(prefix="covidxr-privacy-tmp-"))
    for name, value in {"HOME": home, "TMPDIR": tmp, "TMP": tmp, "TEMP": tmp, "COVIDXR_WEIGHTS": weights,
                        "COVIDXR_THREADS": "1"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("COVIDXR_DATA_ROOTS", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # what tempfile would pick from TMPDIR, without its probe
    roots = [home, tmp, REPO, Path("/tmp"), Path("/dev/shm"), Path("/var/tmp")]
    try:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=RESULT_TIMEOUT_MS / 1000)
        at.run()  # the model loads here (once per process), before anything is recorded
        assert not at.exception
        before = snapshot(roots, [REPO / ".venv", REPO / ".git"])
        writes = record_writes()
        try:
            at.file_uploader[0].set_value([(uploads.film_name, uploads.film, "image/jpeg"),
                                           (uploads.dicom_name, uploads.dicom, "application/dicom")]).run()
            assert not at.exception
            shown = [e.value for e in [*at.success, *at.error] if "COVID-19 pattern" in e.value]
            assert len(shown) == 2, shown
            at.switch_page("pages/evaluate.py").run()
            at.file_uploader(key="eval_upload").set_value([(uploads.zip_name, uploads.zip, "application/zip")]).run()
            at.button(key="eval_run").click().run()
            assert not at.exception
            assert any("3 labelled films scored" in c.value for c in at.caption)
            at.switch_page("pages/review.py").run()
            next(b for b in at.button if (b.key or "").startswith("review_open_")).click().run()
            assert not at.exception
            assert any(c.startswith("Grad-CAM") for img in at.image for c in img.captions)
        finally:
            stop_recording()
        after = snapshot(roots, [REPO / ".venv", REPO / ".git"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    bad = [(event, path) for event, path in writes if not allowed(path, str(home), str(tmp), at_start=False)]
    assert not bad, f"Python-level writes while the pages handled the uploads: {bad}"
    changes = changed(before, after)
    own = [p for p in changes if p.startswith((f"{home}/", f"{tmp}/"))]
    assert not own, f"new files in the fresh HOME/TMPDIR: {own}"
    found = leaks(changes, uploads.unique_needles)
    assert not found, f"this run's upload found on disk: {found}"


# ---------------------------------------------------------------- the checks themselves

def test_the_checks_catch_an_upload_written_to_a_temp_file(tmp_path):
    """Not vacuous: a process that spills an upload into a temp file is caught by the snapshot, the
    content search, strace (when installed) and the audit hook."""
    uploads = make_uploads()
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    before = snapshot([home, tmp], [])
    start = time.time()
    spill = "import sys, tempfile; f = tempfile.NamedTemporaryFile(delete=False); f.write(sys.stdin.buffer.read())"
    trace = tmp_path / "spill.strace"
    subprocess.run([*(strace_prefix(trace) if strace() else []), sys.executable, "-c", spill], input=uploads.film,
                   env={**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}, check=True, timeout=120)
    changes = changed(before, snapshot([home, tmp], []))
    [spilled] = [p for p in changes if not allowed(p, str(home), str(tmp), at_start=False)]
    assert {"film head (canary comment)", "canary", "film bytes at 50%"} <= set(leaks(changes, uploads.needles)[spilled])
    if strace():
        assert spilled in {w.path for w in traced_writes(trace, tmp_path) if w.time >= start}

    writes = record_writes()
    try:
        with tempfile.NamedTemporaryFile(dir=tmp) as f:
            f.write(uploads.film)
    finally:
        stop_recording()
    assert [p for _, p in writes if p.startswith(f"{tmp}/")], writes
