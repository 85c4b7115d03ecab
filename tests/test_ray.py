"""covidxr.engines: the results file, and the Ray engine against the in-process one (same rows, same report),
on a private local Ray instance; Ray's files checked for film names and spilled objects afterwards.

Every Ray process a test starts carries RAY_TEST_TAG=<a fresh id> in its environment; teardown stops
each still running by its PID (never `ray stop`, which would stop other people's Ray on this machine)."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from covidxr import runtime
from covidxr.engines import score_all
from covidxr.engines.batch import FIELDS, result_of, row_of
from covidxr.engines.results import ResultsFile, already_done
from covidxr.evaluate import LabelledItem, Row, build_report, iter_scores, scan_folder
from tests.conftest import REPO, shared_data

pytestmark = pytest.mark.slow

TAG = "RAY_TEST_TAG"
PY = sys.executable
SAMPLES = REPO / "samples"


# ------------------------------------------------------------------------------------------------
# process bookkeeping shared with test_ray_faults.py


def tagged_pids(tag: str) -> list[int]:
    """PIDs of processes whose environment holds RAY_TEST_TAG=tag (this process excluded)."""
    needle = f"{TAG}={tag}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def kill_tagged(tag: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process carrying the tag, by PID."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = tagged_pids(tag)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while pids and time.time() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and _alive(p)]
            time.sleep(0.2)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdlines() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")) if d.name.isdigit() else None
        except OSError:
            continue
    return out


def tagged_env(tag: str) -> dict:
    return {**os.environ, TAG: tag, "RAY_USAGE_STATS_ENABLED": "0"}


def copy_films(root: Path, per_folder: int) -> list[Path]:
    """`per_folder` films of every <source>/<class> of ../shared/data/cxr, copied below root in that layout."""
    cxr = shared_data("cxr")
    out = []
    for folder in sorted(p for p in cxr.glob("*/*") if p.is_dir()):
        dest = root / folder.parent.name / folder.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(folder.iterdir())[:per_folder]:
            shutil.copy(f, dest / f.name)
            out.append(dest / f.name)
    return out


# ------------------------------------------------------------------------------------------------
# the results file (no model, no Ray)


def test_result_record_round_trips_through_the_results_file(tmp_path):
    rows = [Row('a, "odd"/b.png', "covid", "src", 0.1234567890123, "covid", None, True, True, ("x; y", "z"),
                "d, e", ("w",), {"covid": 0.1234567890123, "normal": 0.8765432109877, "pneumonia": 1e-9}),
            Row("c.png", None, None, None, None, "could not be read: broken", None),
            Row("d.png", "normal", None, 0.5, "non-covid", None, False, False, ("not a chest film",), None, ())]
    rf = ResultsFile(tmp_path / "r.csv").open(fresh=True)
    rf.append([result_of(r, "ab" * 32) for r in rows])
    rf.close()
    back = ResultsFile(tmp_path / "r.csv").read()
    assert [row_of(back[r.path]) for r in rows] == rows
    assert list(back[rows[0].path]) == list(FIELDS)


def test_predict_engine_path_prints_the_in_process_objects(classifier, tmp_path, capsys, monkeypatch):
    """`predict --engine ...` builds its objects from the engine's rows: the same fields and values as the
    in-process predict's (class probabilities and the gate's verdict included). Run on the local engine here
    (the Ray engine's rows equal it, tests below); a refused film and an unreadable file are among them."""
    import argparse

    import numpy as np
    from PIL import Image

    from covidxr.cli import cmd_predict
    from covidxr.engines.cli import predict_with

    films = sorted(p for p in SAMPLES.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))[:4]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    dog = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((300, 300)) * 255).astype("uint8")).save(dog)
    files = [str(p) for p in films] + [str(broken), str(dog)]
    args = argparse.Namespace(files=files, json=True, include_non_chest=False, heatmap_dir=None, engine="local",
                              results=None, resume=False, weights=str(classifier.directory), threads=1,
                              batch_size=4, workers=None, address=None, spill_dir=None, site=None)
    from covidxr.audit import open_store
    from covidxr.audit_cli import file_sha256

    engine_audit = open_store(f"sqlite:///{tmp_path / 'engine.db'}")
    assert predict_with(classifier, args, engine_audit) == 2   # the unreadable file: exit status 2, the rest scored
    engine = json.loads(capsys.readouterr().out)
    monkeypatch.setattr("covidxr.cli.classifier_for", lambda a: classifier)
    monkeypatch.setenv("COVIDXR_DB", f"sqlite:///{tmp_path / 'direct.db'}")
    assert cmd_predict(args) == 2
    direct = json.loads(capsys.readouterr().out)
    # both paths record one screen event per file, by its sha256, with the same decisions
    recorded = [[(r.action, r.object, r.decision, r.outcome) for r in store.records()]
                for store in (engine_audit, open_store(f"sqlite:///{tmp_path / 'direct.db'}"))]
    assert recorded[0] == recorded[1] and [r[1] for r in recorded[0]] == [file_sha256(f) for f in files]
    assert {r[3] for r in recorded[0]} == {"success", "failure"} and engine_audit.verify().broken is None
    assert [r["path"] for r in engine] == files and len(direct) == len(engine)
    assert any(r.get("chest_xray") is False for r in direct), "the noise image is refused"
    for e, d in zip(engine, direct):
        assert e.keys() == d.keys(), e["path"]
        for k in e:
            if k in ("probability",):
                assert (e[k] is None) == (d[k] is None) and (e[k] is None or abs(e[k] - d[k]) <= 1e-5)
            elif k == "class_probabilities" and e[k] is not None:
                assert e[k].keys() == d[k].keys() and all(abs(e[k][c] - d[k][c]) <= 1e-5 for c in e[k])
            else:
                assert e[k] == d[k], (e["path"], k)


def test_a_cut_line_is_ignored_and_resume_keys_on_path_and_hash(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"film a")
    b.write_bytes(b"film b")
    import hashlib

    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)}
    rf = ResultsFile(tmp_path / "r.csv").open(fresh=True)
    rf.append([result_of(Row(str(p), "normal", None, 0.2, "non-covid"), sha[p]) for p in (a, b)])
    rf.close()
    with open(tmp_path / "r.csv", "a") as f:
        f.write(f"{tmp_path}/c.png,{'0' * 64},normal,,0.3")  # a kill mid-line
    done = ResultsFile(tmp_path / "r.csv").read()
    assert set(done) == {str(a), str(b)}
    b.write_bytes(b"film b, changed since")
    recs = [{"path": str(p), "label": "normal", "source": None, "error": None} for p in (a, b, tmp_path / "c.png")]
    assert [stored is not None for _, stored in already_done(recs, done)] == [True, False, False]
    ResultsFile(tmp_path / "r.csv").open(fresh=False).close()  # the cut line is cut off before appending
    assert (tmp_path / "r.csv").read_text().endswith("\n")


def test_local_engine_streams_the_in_process_rows_and_resumes(classifier, tmp_path):
    items = scan_folder(SAMPLES, classifier.card.positive_class)
    want = list(iter_scores(classifier, items))
    res = tmp_path / "rows.csv"
    got = score_all(items, "local", classifier=classifier, results=res)
    assert got == want
    lines = res.read_text().splitlines()
    assert len(lines) == len(items) + 1
    seen = []
    again = score_all(items, "local", classifier=classifier, results=res, resume=True,
                      progress=lambda done, total: seen.append(done))
    assert again == want and seen == [len(items)]  # nothing scored again
    assert res.read_text().splitlines() == lines


# ------------------------------------------------------------------------------------------------
# the Ray engine on a private local instance


@pytest.fixture(scope="module")
def ray_tmp():
    """A private local Ray instance (2 CPUs, spilling off, no dashboard) in its own temporary folder;
    stopped (ray.shutdown, then every tagged process by PID) and removed at the end."""
    from covidxr.engines.ray import session

    tag = uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="cxr-raytest-"))
    os.environ[TAG] = tag  # inherited by the processes ray.init starts, and only by those
    cm = session(temp_dir=str(tmp), num_cpus=2)
    try:
        cm.__enter__()
    finally:
        del os.environ[TAG]
    try:
        yield tmp
    finally:
        try:
            cm.__exit__(None, None, None)
        finally:
            kill_tagged(tag)
            shutil.rmtree(tmp, ignore_errors=True)


def _assert_same(rows, want):
    assert [r.path for r in rows] == [r.path for r in want]
    for r, w in zip(rows, want):
        assert (r.error, r.chest_xray, r.prediction, r.reasons, r.label, r.source, r.truth) == \
               (w.error, w.chest_xray, w.prediction, w.reasons, w.label, w.source, w.truth), r.path
        assert (r.probability is None) == (w.probability is None)
        if r.probability is not None:
            assert abs(r.probability - w.probability) <= 1e-5, r.path


def _assert_same_report(a: dict, b: dict):
    for k in set(a) | set(b):
        if k in ("seconds", "images"):
            continue
        _close(a[k], b[k], k)


def _close(x, y, where):
    if isinstance(x, dict):
        assert set(x) == set(y), where
        for k in x:
            _close(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _close(u, v, f"{where}[{i}]")
    elif isinstance(x, float) and y is not None:
        assert math.isclose(x, y, abs_tol=1e-5) or (math.isnan(x) and math.isnan(y)), where
    else:
        assert x == y, where


FILMS_SCORED: list[str] = []


def test_ray_rows_and_report_equal_in_process_on_samples(ray_tmp, classifier, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("*.md"))
    (root / "normal" / "broken.png").write_bytes(b"not an image")
    items = scan_folder(root, classifier.card.positive_class)
    want = list(iter_scores(classifier, items))
    got = score_all(items, "ray", threshold=classifier.threshold, workers=2, batch_size=2,
                    results=tmp_path / "rows.csv")
    _assert_same(got, want)
    assert any(r.error for r in got)
    pc, t = classifier.card.positive_class, classifier.threshold
    _assert_same_report(build_report(got, t, pc).as_dict(), build_report(want, t, pc).as_dict())
    FILMS_SCORED.extend(Path(i.path).name for i in items)


def test_ray_rows_and_report_equal_in_process_on_a_few_hundred_films(ray_tmp, classifier, tmp_path):
    copy_films(tmp_path, 25)  # 25 films from each of the 10 source/class folders (fewer where a folder has fewer)
    items = scan_folder(tmp_path, classifier.card.positive_class)
    assert len(items) >= 200 and len({i.source for i in items}) == 6
    want = list(iter_scores(classifier, items))
    got = score_all(items, "ray", threshold=classifier.threshold, workers=2)
    _assert_same(got, want)
    pc, t = classifier.card.positive_class, classifier.threshold
    _assert_same_report(build_report(got, t, pc).as_dict(), build_report(want, t, pc).as_dict())
    FILMS_SCORED.extend(Path(i.path).name for i in items)


def test_ray_leaves_no_film_name_in_its_files_and_spills_nothing(ray_tmp):
    assert FILMS_SCORED, "runs after the engine tests"
    names = {n.encode() for n in FILMS_SCORED} | {Path(n).stem.encode() for n in FILMS_SCORED if len(Path(n).stem) >= 8}
    found, spill = [], []
    for f in ray_tmp.rglob("*"):
        if "spill" in f.name.lower():
            spill.append(f)
        if f.is_file() and not f.is_symlink() and f.stat().st_size < 50_000_000 and not f.name.startswith("plasma"):
            data = f.read_bytes()
            found += [(f.name, n) for n in names if n in data]
    assert not spill, f"spilled objects: {spill}"
    assert not found, f"film names in Ray's files: {found[:5]}"
    logs = list(ray_tmp.rglob("logs/*"))
    assert logs, "Ray wrote its session here"
    # Ray always runs its API server process; with include_dashboard=False it loads no dashboard module, serves no
    # web page (--disable-frontend) and, with RAY_USAGE_STATS_ENABLED=0, reports nothing.
    servers = [c for c in _cmdlines() if "dashboard/dashboard.py" in c and str(ray_tmp) in c]
    assert servers and all("--disable-frontend" in c and "--modules-to-load=UsageStatsHead" in c for c in servers)
    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"


def test_cli_ray_engine_writes_the_in_process_report_and_resumes(tmp_path):
    """`evaluate --engine ray` (its own local Ray, stopped at exit) against `evaluate`; then `--resume` with
    every film in the results file scores nothing again and writes the same report. In a HOME of their own, the
    driver and its workers leave only Ray's token there (no runtime's telemetry: see docs/privacy.md)."""
    tag = uuid.uuid4().hex
    base = [PY, "-m", "covidxr", "evaluate", str(SAMPLES)]
    home = tmp_path / "home"
    home.mkdir()
    env = {**tagged_env(tag), "HOME": str(home), runtime.CACHE_ENV: str(runtime.cache_dir().parent)}
    run = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    try:
        local = subprocess.run(base + ["--json", str(tmp_path / "local.json")], **run)
        ray_ = subprocess.run(base + ["--engine", "ray", "--workers", "1", "--results", str(tmp_path / "rows.csv"),
                                      "--json", str(tmp_path / "ray.json")], **run)
        assert ray_.returncode == local.returncode == 0, ray_.stderr[-2000:]
        again = subprocess.run(base + ["--engine", "ray", "--results", str(tmp_path / "rows.csv"), "--resume",
                                       "--json", str(tmp_path / "again.json")], **run)
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        kill_tagged(tag)
    assert not tagged_pids(tag), "the CLI left Ray processes behind"
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert left in ([], [".ray/auth_token"]), left  # Ray's own token for the local cluster it started
    a, b, c = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "ray.json", "again.json"))
    _assert_same_report(a, b)
    assert b["images"] == c["images"]
    assert {x["path"]: x["probability"] for x in a["images"]}.keys() == {x["path"] for x in b["images"]}
    for x, y in zip(a["images"], b["images"]):
        assert abs(x["probability"] - y["probability"]) <= 1e-5
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 1 + len(a["images"])
