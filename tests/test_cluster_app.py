"""The Batch evaluation page on a Ray cluster (issue 15 point 6), on a real one-node cluster started here with
`ray start --head` (tests/test_ray_faults.running_cluster: token authentication, its own ports and temp dir).

With $COVIDXR_RAY_ADDRESS set, a server folder is submitted to the run registry (covidxr.engines.runs, in a tmp
$COVIDXR_RUNS_DIR) as a detached `python -m covidxr evaluate --engine ray` run, which inherits this process's
environment (the cluster's RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH, and RAY_TEST_TAG so that teardown finds it).
The page is driven by Streamlit's AppTest: one AppTest submits the run; a new one, opened with `?run=ID` as a
reopened tab would be, follows it to the end and must show the report of the same folder scored in a session,
and the metrics of the in-process engine. A run killed mid-way is shown as interrupted and Resume completes it,
every film once; a run that cannot reach its cluster fails with its one-line error; ids that are not runs are
refused. Every process a test starts is stopped by its process group and PID (never `ray stop`)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from covidxr.engines import evaluate_folder, runs
from covidxr.engines.ray import check_reachable
from covidxr.engines.results import ResultsFile
from tests.hostile import plain
from tests.test_pages import SAMPLES, metric, started_app, texts
from tests.test_ray import copy_films, kill_tagged
from tests.test_ray_faults import running_cluster
from tests.test_webapp import imported_by
from webapp.services import cluster
from webapp.views import site_view
from webapp.session import state
from webapp.services.cluster import RUN_PARAM

pytestmark = [pytest.mark.model, pytest.mark.slow]

FOLDER = "A folder on the server"
RUN_TIMEOUT = 300  # seconds for one run on a loaded 2-core machine (the actor loads the model first)


@pytest.fixture(scope="module")
def ray_cluster():
    with running_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    """20 labelled films, 2 of every <source>/<class> folder of ../shared/data/cxr: the page's server folder."""
    root = tmp_path_factory.mktemp("films")
    copy_films(root, 2)
    return root.resolve()


@pytest.fixture(scope="module")
def more_films(tmp_path_factory) -> Path:
    """60 films, long enough a run to be killed in the middle."""
    root = tmp_path_factory.mktemp("more_films")
    copy_films(root, 6)
    return root.resolve()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """The run registry in tmp ($COVIDXR_RUNS_DIR) and a fresh RAY_TEST_TAG that every run started from here
    inherits; afterwards every run still going is killed by its process group, and anything tagged by PID."""
    root = tmp_path / "cluster-runs"
    tag = uuid.uuid4().hex
    monkeypatch.setenv(cluster.RUNS_ENV, str(root))
    monkeypatch.setenv("RAY_TEST_TAG", tag)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield root
    finally:
        for run in runs.list_runs(root, limit=1000):
            for attempt in run.meta.get("attempts", []):
                stop_wrapper(attempt["pid"])
        kill_tagged(tag)


def stop_wrapper(pid: int) -> None:
    """SIGKILL to a run's wrapper and its process group (it leads its own session), if it is one this process
    started and it still runs; then reap it."""
    child = runs._children.get(pid)
    if child is None or child.poll() is not None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait(30)


@pytest.fixture
def on_cluster(ray_cluster, registry, monkeypatch):
    """The app configured for the cluster: its address, and the token every driver must send."""
    monkeypatch.setenv(cluster.RAY_ENV, ray_cluster.address)
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, ray_cluster.env[name])
    return registry


def page(classifier, monkeypatch, roots: Path, run_id: str | None = None) -> AppTest:
    """A new browser tab on the Batch evaluation page (at `?run=run_id` when given), with `roots` readable."""
    at = started_app(classifier.directory, monkeypatch)
    monkeypatch.setenv("COVIDXR_DATA_ROOTS", str(roots))
    if run_id is not None:
        at.query_params[RUN_PARAM] = run_id
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception
    return at


def submit_folder(at: AppTest) -> str:
    at.radio(key=state.EVAL_SOURCE).set_value(FOLDER).run()
    at.text_input(key=state.EVAL_FOLDER).set_value(".").run()
    assert at.button(key=state.EVAL_RUN).label == "Run on the cluster"
    at.button(key=state.EVAL_RUN).click().run()
    assert not at.exception
    return at.query_params[RUN_PARAM]


def follow(at: AppTest, until: str, timeout: float = RUN_TIMEOUT) -> list[str]:
    """Rerun the page (as its fragment does every few seconds) until the open run's state is `until`; the
    progress bar's texts seen while it was still going."""
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        at.run()
        assert not at.exception
        run = runs.open_run(cluster.runs_dir(), at.session_state[state.CLUSTER_RUN])
        if runs.status(run).state == until and "Running on the cluster." not in " ".join(texts(at)):
            return seen
        seen += [p.proto.text for p in at.get("progress")]
        time.sleep(1)
    pytest.fail(f"the run did not become {until} within {timeout:.0f} s: {runs.status(run)}\n"
                f"{run.file(runs.ERR_FILE).read_text(errors='replace')[-2000:]}")


def shown(at: AppTest) -> dict:
    """What the results section shows: the four metrics, their CI captions, the per-image table."""
    table = at.dataframe[-1].value
    return {"metrics": {m.label: m.value for m in at.metric},
            "ci": [c.value for c in at.caption if c.value.startswith("95% CI")],
            "films": list(table["film"]), "decisions": list(table["decision"]), "outcomes": list(table["outcome"])}


# ---------------------------------------------------------------- the page on the cluster


def test_a_folder_run_goes_to_the_cluster_outlives_its_tab_and_reports_as_in_session(
        on_cluster, films, classifier, monkeypatch):
    tab = page(classifier, monkeypatch, films)
    run_id = submit_folder(tab)
    assert tab.session_state[state.CLUSTER_RUN] == run_id
    run = runs.open_run(on_cluster, run_id)
    assert run.meta["folder"] == str(films) and run.meta["films"] == 20 and run.meta["site"] is None
    assert run.meta["address"] == os.environ[cluster.RAY_ENV] and run.meta["scored_with"] == "Shipped model"
    assert runs.status(run).state == runs.RUNNING
    assert any("Running on the cluster." in t for t in texts(tab))
    del tab  # the tab is closed: the run goes on

    reopened = page(classifier, monkeypatch, films, run_id=run_id)
    assert reopened.session_state[state.CLUSTER_RUN] == run_id and reopened.query_params[RUN_PARAM] == run_id
    progress = follow(reopened, runs.FINISHED)  # the run loads its model first: seen going, from its rows
    assert progress and all(re.fullmatch(r"Scored \d+ of 20 films( · about .+ left)?", p) for p in progress), progress
    on_page = shown(reopened)
    assert len(on_page["films"]) == 20 and len(on_page["ci"]) == 4
    assert "Finished: 20 films" in texts(reopened)
    assert reopened.button(key=state.cluster_open(run_id)).disabled       # listed, and the one open

    # every film once in the streamed rows; the run's files name no film in its output
    assert len(run.file(runs.ROWS_FILE).read_text().splitlines()) == 21
    assert json.loads(run.file(runs.EXIT_FILE).read_text())["code"] == 0
    output = run.file(runs.OUT_FILE).read_text() + run.file(runs.ERR_FILE).read_text()
    assert not any(f.stem in output for f in films.rglob("*.*"))

    # the same folder scored in a session, without the cluster: the same report on the page
    monkeypatch.delenv(cluster.RAY_ENV)
    here = page(classifier, monkeypatch, films)
    here.radio(key=state.EVAL_SOURCE).set_value(FOLDER).run()
    here.text_input(key=state.EVAL_FOLDER).set_value(".").run()
    assert here.button(key=state.EVAL_RUN).label == "Run evaluation"
    here.button(key=state.EVAL_RUN).click().run()
    assert not here.exception and RUN_PARAM not in here.query_params
    assert shown(here) == on_page

    # and the in-process engine's metrics
    want = evaluate_folder(films, "local", classifier=classifier, threshold=classifier.threshold,
                           positive_class=classifier.card.positive_class).as_dict()
    got = reopened.session_state[state.BATCH].report().as_dict()
    assert got["n"] == want["n"] and got["confusion"] == want["confusion"]
    for name in ("auc", "sensitivity", "specificity", "accuracy"):
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_uploads_and_samples_still_score_in_the_session(on_cluster, classifier, monkeypatch):
    at = page(classifier, monkeypatch, SAMPLES)
    at.radio(key=state.EVAL_SOURCE).set_value("The sample films").run()
    assert any("cannot see files in your browser" in c.value for c in at.caption)
    assert at.button(key=state.EVAL_RUN).label == "Run evaluation"
    at.button(key=state.EVAL_RUN).click().run()
    assert not at.exception
    assert len(at.dataframe[-1].value) == 6 and metric(at, "AUC")
    assert not runs.list_runs(on_cluster) and RUN_PARAM not in at.query_params


def test_an_interrupted_run_shows_so_and_resume_scores_every_film_once(on_cluster, more_films, classifier,
                                                                       monkeypatch):
    n = 60
    run = runs.submit(on_cluster, str(more_films), n, os.environ[cluster.RAY_ENV], batch_size=4,
                      threshold=classifier.threshold, positive_class=classifier.card.positive_class,
                      weights=str(classifier.directory), extra={"scored_with": "Shipped model"})
    deadline = time.time() + RUN_TIMEOUT
    while runs.scored(run) < 8:
        assert runs.status(run).state == runs.RUNNING, run.file(runs.ERR_FILE).read_text()[-2000:]
        assert time.time() < deadline, "no film scored in time"
        time.sleep(0.2)
    stop_wrapper(run.meta["pid"])  # the server's machine went down: no exit record, no report
    status = runs.status(run)
    assert status.state == runs.INTERRUPTED and 8 <= status.done < n, status
    kept = run.file(runs.ROWS_FILE).read_text()
    kept = kept[:kept.rfind("\n") + 1].splitlines()

    at = page(classifier, monkeypatch, more_films, run_id=run.id)
    assert any(f"The run stopped after {status.done} of {n} films" in w.value for w in at.warning)
    assert any(f"interrupted after {status.done} of {n} films" in w.value for w in at.warning)  # the rows so far
    assert len(at.dataframe[-1].value) == status.done
    at.button(key=state.CLUSTER_RESUME).click().run()
    assert not at.exception
    follow(at, runs.FINISHED)
    lines = run.file(runs.ROWS_FILE).read_text().splitlines()
    assert lines[:len(kept)] == kept and len(lines) == 1 + n                 # every film once, none lost
    assert len(ResultsFile(run.file(runs.ROWS_FILE)).read()) == n
    assert len(json.loads(run.file(runs.REPORT_FILE).read_text())["images"]) == n
    assert len(at.dataframe[-1].value) == n and not any("interrupted" in w.value for w in at.warning)
    attempts = runs.open_run(on_cluster, run.id).meta["attempts"]
    assert [a["resume"] for a in attempts] == [False, True] and attempts[1]["done_before"] == status.done


def test_a_run_that_cannot_reach_its_cluster_fails_with_one_line(registry, films, classifier, monkeypatch):
    """The error line (the run's stderr, which may name the cluster's hosts) is shown to site admins only."""
    from webapp.services import auth

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with ends: nothing listens there
    monkeypatch.setenv(cluster.RAY_ENV, f"127.0.0.1:{port}")
    at = page(classifier, monkeypatch, films)  # local mode: the local user, a site admin, starts the run
    submit_folder(at)
    follow(at, runs.FAILED, timeout=120)
    [error] = [plain(e.value) for e in at.error]
    assert error.startswith("The run failed after 0 of 20 films: ")
    assert f"the Ray cluster at 127.0.0.1:{port} cannot be reached" in error and "\n" not in error
    assert at.button(key=state.CLUSTER_RESUME)                             # offered again
    # signed in as a clinician: the run's page is refused, and its message would say where the error is, not what
    monkeypatch.setattr(auth, "current_user", lambda: auth.User("c-1", "A clinician", frozenset({auth.CLINICIAN})))
    at.run()
    shown = " ".join(plain(e.value) for e in at.error)
    assert "site admin" in shown and "cannot be reached" not in shown and str(port) not in shown
    status = runs.status(runs.open_run(cluster.runs_dir(), at.query_params[RUN_PARAM]))
    assert status.state == runs.FAILED and "cannot be reached" in status.error
    text = cluster.failure_text(status)
    assert text.startswith("The run failed after 0 of 20 films. ") and "site admins" in text
    assert "cannot be reached" not in text and str(port) not in text


def test_a_run_records_and_passes_on_the_sessions_site_profile(registry, classifier, tmp_path, monkeypatch):
    """Scored with the session's profile version: `--site` names that version's own folder, run.json its name and
    line; the page's review decides with that version even after a newer one replaced it (versions are immutable)."""
    from covidxr.profiles import version_of
    from tests.test_site_pages import made_profile
    from webapp.session import site_session
    from webapp.services import sites

    monkeypatch.setenv(sites.SITES_ENV, str(tmp_path / "profiles"))
    profile = made_profile("Ward 7", classifier.card.weights_sha256)
    sites.save(profile, sites.sites_dir(), "Ward 7")
    monkeypatch.setenv(cluster.RAY_ENV, "127.0.0.1:1")  # nothing there: the run itself fails, soon
    run = cluster.submit("/nowhere", 20, profile.threshold, "covid", str(classifier.directory),
                         site_session.Active(profile, "Ward 7", path=sites.find(sites.sites_dir(), "Ward 7",
                                                                                 classifier.card).path))
    args = run.meta["command"]
    assert args[args.index("--site") + 1] == str(sites.find(sites.sites_dir(), "Ward 7", classifier.card).path)
    assert args[args.index("--weights") + 1] == str(classifier.directory)
    assert run.meta["site"] == "Ward 7" and run.meta["scored_with"] == site_view.in_use_line(profile)
    assert run.meta["threshold"] == profile.threshold
    by = cluster.scored_by(run, classifier.card)
    assert by["site"] == "Ward 7" and version_of(by["profile"]) == version_of(profile)
    assert by["threshold"] == profile.threshold
    sites.save(made_profile("Ward 7", classifier.card.weights_sha256, seed=1), sites.sites_dir(), "Ward 7",
               overwrite=True)
    # versions by content hash: both profiles may be made within the same second, so `created` can be equal
    assert version_of(sites.find(sites.sites_dir(), "Ward 7", classifier.card).profile) != version_of(profile)  # replaced
    assert version_of(cluster.scored_by(run, classifier.card)["profile"]) == version_of(profile)  # the run's version stays
    assert cluster.scored_by(run, classifier.card)["line"] == site_view.in_use_line(profile)


# ---------------------------------------------------------------- the registry on its own


@pytest.mark.parametrize("bad", ["../x", "../../etc/passwd", "a" * 15, "a" * 17, "", "/abs/olute_path_x",
                                 "....", "abcdefghijklmno/"])
def test_what_is_not_a_run_id_is_refused(tmp_path, bad):
    with pytest.raises(runs.RunNotFound):
        runs.open_run(tmp_path, bad)


def test_an_unknown_or_malformed_run_in_the_address_is_refused_cleanly(registry, classifier, monkeypatch):
    monkeypatch.setenv(cluster.RAY_ENV, "127.0.0.1:1")
    for bad in ("../x", runs.new_id()):
        at = page(classifier, monkeypatch, SAMPLES, run_id=bad)
        assert [e.value for e in at.error] == ["The page's address names no run on this server: it may have been "
                                               "removed, or the link is incomplete."]
        assert RUN_PARAM not in at.query_params and state.CLUSTER_RUN not in at.session_state
    assert not registry.exists() or not any(registry.iterdir())


def test_streamed_rows_are_read_a_new_line_at_a_time(tmp_path):
    """The page's progress reads only what rows.csv gained since its last look; a line being written is left."""
    from covidxr.engines.batch import FIELDS

    path = tmp_path / "rows.csv"
    line = lambda p: ",".join([p, "", "covid", "", "0.5"] + [""] * (len(FIELDS) - 5)) + "\n"  # noqa: E731
    path.write_text(",".join(FIELDS) + "\n" + line("a") + line("b")[:7])
    first, offset = ResultsFile(path).read_from(0)
    assert list(first) == ["a"]
    with open(path, "a") as f:
        f.write(line("b")[7:] + line("c"))
    more, end = ResultsFile(path).read_from(offset)
    assert list(more) == ["b", "c"] and end == path.stat().st_size
    assert ResultsFile(path).read_from(end) == ({}, end)


def test_films_scored_are_counted_from_the_bytes_added_since_the_last_count(tmp_path):
    """runs.scored reads only what rows.csv gained (a run of 10^6 films writes over 100 MB), over chunk
    boundaries, leaves a line being written for the next count, and survives a resume's repair of a cut line."""
    run = runs.Run("r" * 16, tmp_path, {"films": 10**9})
    rows = tmp_path / runs.ROWS_FILE
    rows.write_bytes(b"header\n")
    assert runs.scored(run) == 0
    with open(rows, "ab") as f:  # 3.5 MB: several of the counter's 1 MB reads, a line split between two
        f.write(b"".join(b"film%07d,%s\n" % (i, b"x" * 60) for i in range(50_000)) + b"half a li")
    assert runs.scored(run) == 50_000
    with open(rows, "r+b") as f:  # what was counted is not read again: blank it (same size, no line ends) ...
        f.seek(len(b"header\n"))
        f.write(b"x" * 1_000_000)
    with open(rows, "ab") as f:
        f.write(b"ne\n")
    assert runs.scored(run) == 50_001  # ... and only the new bytes count (read afresh, it would say far fewer)
    with open(rows, "ab") as f:  # a run killed mid-line, then resumed: the cut line is removed, rows go on
        f.write(b"cut sh")
    assert runs.scored(run) == 50_001
    os.truncate(rows, rows.stat().st_size - len(b"cut sh"))
    with open(rows, "ab") as f:
        f.write(b"film9999999,again\n")
    assert runs.scored(run) == 50_002
    runs._counted.clear()  # counted afresh, from the file as it now is: the blanked lines are gone
    afresh = rows.read_bytes().count(b"\n") - 1
    assert runs.scored(run) == afresh < 50_002 - 10_000


def test_run_ids_are_url_safe_and_unguessable():
    ids = {runs.new_id() for _ in range(200)}
    assert len(ids) == 200 and all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)


def test_an_unreachable_address_is_refused_at_once():
    t0 = time.time()
    with pytest.raises(ConnectionError, match="cannot be reached"):
        check_reachable("127.0.0.1:1")
    assert time.time() - t0 < 5


def test_the_app_glue_imports_no_streamlit():
    assert "streamlit" not in imported_by("import webapp.services.cluster, covidxr.engines.runs")


def test_the_running_runs_metrics_are_the_reports_point_estimates():
    """The live view's metrics come without the bootstrap; on the same rows they are the report's own (its Wilson
    CIs for the proportions included), refused films left out as the report leaves them out."""
    import numpy as np

    from covidxr.evaluate import Row, build_report

    rng = np.random.default_rng(0)
    rows = [Row(f"f{i}.png", "covid" if i % 3 == 0 else "normal", None, float(p), None, None, i % 3 == 0,
                i % 17 != 0) for i, p in enumerate(rng.random(60))]
    rows.append(Row("broken.png", "normal", None, None, None, "could not be read", False))
    got = cluster.partial_metrics(rows, 0.4)
    want = build_report(rows, 0.4, "covid", n_boot=50).as_dict()
    assert got["n"] == want["n"] < 60
    for name in ("sensitivity", "specificity", "accuracy", "auc"):
        assert got[name] == pytest.approx(want[name]), name
    for name in ("sensitivity", "specificity", "accuracy"):
        assert got["ci"][name] == pytest.approx(want["ci"][name]), name
    assert got["ci"]["auc"] is None
