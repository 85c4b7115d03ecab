"""The Batch evaluation page on a Ray cluster. No Streamlit.

When the operator sets $COVIDXR_RAY_ADDRESS, the page submits server-folder runs to the cluster through the
run registry (covidxr.engines.runs) in $COVIDXR_RUNS_DIR (default `cluster-runs/` beside app.py): the run is a
process of the server, not of the browser session, so closing the tab loses nothing, and any session opens it
again by its id (`?run=ID` in the page's address, or the page's list). The run's streamed rows (rows.csv) are
read as they grow and become the page's Batch, ordered as the page orders its own batches (by path, then
classes interleaved), so that its report, CIs included, is the report of the same folder scored in a session.
Uploads and the sample films are still scored in the session: the cluster's nodes cannot see a browser's files.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

from covidxr.engines import runs
from covidxr.engines.batch import row_of
from covidxr.engines.results import ResultsFile
from covidxr.evaluate import LabelledItem, Row
from covidxr.metrics import auc, operating_point
from covidxr.safety import PathRefused, resolve_inside

from webapp.session import site_session  # noqa: F401 - site_session: Active, in annotations
from webapp.views import site_view
from webapp.services import sites
from webapp.session.batch import Batch, interleave, progress_text
from webapp.views.literal import literal, without_paths
from covidxr.lru import LRU

RAY_ENV = "COVIDXR_RAY_ADDRESS"
RUNS_ENV = "COVIDXR_RUNS_DIR"
DEFAULT_RUNS_DIR = "cluster-runs"  # not runs/: training writes there
RUN_PARAM = "run"                  # the page's address names the open run: ?run=ID
REFRESH_S = 2.0                    # seconds between two looks at a running run's rows
RECENT = 10                        # runs in the page's list
_rows: LRU[str, tuple[int, dict[str, dict]]] = LRU(8)  # run id -> (bytes of rows.csv read, records by path)
_rows_lock = threading.Lock()


def ray_address() -> str | None:
    """The cluster the Batch page submits server-folder runs to; None: every batch is scored in the session."""
    return os.environ.get(RAY_ENV, "").strip() or None


def runs_dir() -> Path:
    """The server's run registry: $COVIDXR_RUNS_DIR (relative: from the app's folder), else cluster-runs/ there."""
    return sites.server_folder(RUNS_ENV, DEFAULT_RUNS_DIR)


def submit(folder: str, films: int, threshold: float, positive_class: str, weights: str,
           active: "site_session.Active") -> runs.Run:
    """Start a run of a server folder (already checked against the allowed roots and scanned: `films` found) on
    the cluster, scored with the session's site profile (`active`, webapp.session.site_session.active()) if it has one."""
    profile = active.profile
    site_dir = None if profile is None else str(active.path)  # the version's own folder: never rewritten
    extra = {"scored_with": site_view.in_use_line(profile), "site_token": list(sites.token(profile) or []) or None}
    return runs.submit(runs_dir(), folder, films, ray_address(), title=folder, site=site_dir,
                       site_name=None if profile is None else profile.name, threshold=threshold,
                       positive_class=positive_class, weights=weights, extra=extra)


# ---------------------------------------------------------------- a run's rows, as they stream in


def rows_of(run: runs.Run) -> list[Row]:
    """Every film rows.csv holds so far, one row per path (its last line), in the page's batch order. Each call
    reads only the lines written since the last one (per run, for every session of the server)."""
    with _rows_lock:
        offset, records = _rows.get(run.id) or (0, {})
        new, offset = ResultsFile(run.file(runs.ROWS_FILE)).read_from(offset)
        records = {**records, **new}
        _rows.put(run.id, (offset, records))
    return ordered([row_of(r) for r in records.values()])


def ordered(rows: Sequence[Row]) -> list[Row]:
    """The order of a batch the page scores itself (covidxr.evaluate.scan_folder's, by path, then the classes
    interleaved): the report's bootstrap CIs depend on the order of the films, so the same order gives the same
    report."""
    return interleave(sorted(rows, key=lambda r: r.path), key=lambda r: r.label)


def folder_allowed(run: runs.Run, roots: Sequence[Path]) -> bool:
    """Whether the run's folder is still inside a folder the page may read (the operator may have changed the
    roots since): only then are its films re-read, for the heatmap review and a site profile."""
    try:
        resolve_inside(run.meta.get("folder", ""), roots)
    except PathRefused:
        return False
    return True


def batch_of(run: runs.Run, status: runs.Status, rows: list[Row], keep_films: bool) -> Batch:
    """The run as the page's Batch, so that the results section shows it as it shows a batch of the session."""
    items = [LabelledItem(r.path, r.label, r.source) for r in rows] if keep_films else None
    return Batch(run.title, run.total, float(run.meta["threshold"]), str(run.meta["positive_class"]), items,
                 list(rows), done=status.state == runs.FINISHED, seconds=runs.seconds(run))


def scored_by(run: runs.Run, card: Any) -> dict:
    """The session's BATCH_SCORED_BY for a run: its site profile's name and line as run.json recorded them,
    and the profile itself while the one saved under that name is still the one that scored the run (the
    review page decides the films with it)."""
    profile = None
    if run.meta.get("site_dir"):
        try:
            found = sites.Listed("", Path(run.meta["site_dir"]), sites.load(Path(run.meta["site_dir"]), card))
        except sites.SiteError:
            found = sites.Listed("", Path(run.meta["site_dir"]))
        if found.profile is not None and list(sites.token(found.profile)) == run.meta.get("site_token"):
            profile = found.profile
    return {"site": run.meta.get("site"), "profile": profile, "line": run.meta.get("scored_with") or sites.SHIPPED,
            "threshold": float(run.meta["threshold"])}


def partial_metrics(rows: Sequence[Row], threshold: float) -> dict:
    """Sensitivity, specificity and accuracy (Wilson 95% CIs) and AUC (no interval yet) of the films scored so
    far, shaped as a report's dict: cheap enough for every refresh, where the report's bootstrap is not. The
    films the gate refused are left out, as the report leaves them out by default."""
    scored = [r for r in rows if r.probability is not None and r.truth is not None and not r.refused]
    y, s = [bool(r.truth) for r in scored], [float(r.probability) for r in scored]
    point = operating_point(y, s, threshold)
    out: dict = {"n": len(scored), "ci": {}}
    for name, e in point.estimates().items():
        out[name] = None if e is None else e.value
        out["ci"][name] = [e.low, e.high] if e is not None and e.has_interval else None
    out["auc"], out["ci"]["auc"] = (auc(y, s) if scored else None), None
    return out


# ---------------------------------------------------------------- words


def started_text(run: runs.Run) -> str:
    """"started 2026-12-02 08:10 UTC"."""
    return f"started {str(run.meta.get('started', '?'))[:16].replace('T', ' ')} UTC"


def shows_run_errors() -> bool:
    """Whether this session may see a cluster run's error line (its stderr, which may name the cluster's hosts
    and the server's set-up): site admins only (least privilege); a clinician is told where it is. The line is
    shown without paths (webapp.views.literal.without_paths) even to an admin."""
    from webapp.services.auth import user

    return user().is_admin


def failure_text(status: runs.Status, admin: bool | None = None) -> str:
    """The failed run's message as Markdown: the error line itself (literal, no paths) for a site admin only."""
    head = f"The run failed after {status.done} of {status.total} films"
    admin = shows_run_errors() if admin is None else admin
    if admin and status.error:
        return f"{head}: {literal(without_paths(status.error))}"
    return f"{head}. What went wrong is in the run's stderr.txt on the server (shown here to site admins)."


def status_text(status: runs.Status) -> str:
    """One line for the list of runs."""
    if status.state == runs.RUNNING:
        return f"Running: {status.done} of {status.total} films scored"
    if status.state == runs.FINISHED:
        return f"Finished: {status.total} films"
    if status.state == runs.FAILED:
        return f"Failed after {status.done} of {status.total} films"
    return f"Interrupted after {status.done} of {status.total} films"


def progress_line(run: runs.Run, status: runs.Status) -> str:
    """The progress bar's text: films scored of the films found, and the time left at this attempt's rate."""
    attempt = (run.meta.get("attempts") or [{}])[-1]
    elapsed = runs.age(attempt.get("started") or run.meta.get("started"))
    return progress_text(status.done, status.total, elapsed, before=int(attempt.get("done_before") or 0))
