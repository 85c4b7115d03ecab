"""The Batch evaluation page's views of a batch's headline metrics and of the server's cluster runs
(webapp.services.cluster: the registry's app side, without Streamlit): the run list, a running run's live progress
(an `st.fragment` that refreshes itself), and a stopped run's state with its Resume button. A run's rows
become the session's batch, which the page then shows as any other."""
from __future__ import annotations

import streamlit as st

from covidxr.card import ModelCard
from covidxr.engines import runs

from webapp.views.literal import literal
from webapp.services import cluster, sites
from webapp.session import state
from webapp.services.roots import data_roots
from webapp.views.tables import fmt_metric, fmt_metric_ci
from webapp.views.wording import METRIC_HELP, METRIC_TITLES, fmt_threshold
from webapp.views import icons

NO_INTERVAL = "95% CI: too few films for an interval"


def metric_tiles(d: dict, no_interval: str = NO_INTERVAL) -> None:
    """The four headline metrics of a report's dict, each with its 95% CI (or why there is none)."""
    for col, name in zip(st.columns(4), ("sensitivity", "specificity", "accuracy", "auc")):
        col.metric(METRIC_TITLES[name], fmt_metric(name, d.get(name)), help=METRIC_HELP[name])
        ci = fmt_metric_ci(name, d["ci"].get(name))
        col.caption(f"95% CI {ci}" if ci != "—" or d.get(name) is None else no_interval)


def forget_last_batch() -> None:
    """A new batch (here or on the cluster): the last one's slider, review and fitted profile go with it."""
    for stale in (state.EVAL_THRESHOLD, state.REVIEW_OPEN, state.REVIEW_DIALOG, state.THUMBNAILS, state.SITE_FITTED,
                  state.BATCH_RUN):
        st.session_state.pop(stale, None)


def open_run(run_id: str) -> None:
    """Show a cluster run on this page, and name it in the page's address (a closed tab reopens it)."""
    forget_last_batch()
    for stale in (state.BATCH, state.BATCH_SCORED_BY):
        st.session_state.pop(stale, None)
    st.session_state[state.CLUSTER_RUN] = run_id
    st.query_params[cluster.RUN_PARAM] = run_id


def close_run() -> None:
    st.session_state.pop(state.CLUSTER_RUN, None)
    st.query_params.pop(cluster.RUN_PARAM, None)


def open_run_id() -> str | None:
    """The run the address names (a reopened tab, a shared link), else the one this session opened last."""
    asked = st.query_params.get(cluster.RUN_PARAM)
    if asked and asked != st.session_state.get(state.CLUSTER_RUN):
        open_run(asked)
    run_id = st.session_state.get(state.CLUSTER_RUN)
    if run_id and st.query_params.get(cluster.RUN_PARAM) != run_id:  # another page's address dropped it
        st.query_params[cluster.RUN_PARAM] = run_id
    return run_id


def run_list(open_id: str | None) -> None:
    """The recent runs of the server's registry, each with its state and an Open button."""
    recent = runs.list_runs(cluster.runs_dir(), cluster.RECENT)
    with st.expander(f"Runs on the cluster ({len(recent)} most recent)" if recent else "Runs on the cluster",
                     expanded=open_id is None):
        st.caption("Runs of server folders on the cluster are kept on this server and listed here for every user "
                   "of the app; they go on when a tab is closed.")
        if not recent:
            st.caption("No run yet.")
        for run in recent:
            left, mid, right = st.columns([5, 3, 1])
            left.markdown(literal(run.title))
            left.caption(f"{cluster.started_text(run)} · scored with: "
                         f"{literal(run.meta.get('scored_with') or sites.SHIPPED)}")
            mid.markdown(cluster.status_text(runs.status(run)))
            right.button("Open", key=state.cluster_open(run.id), disabled=run.id == open_id, on_click=open_run,
                         args=(run.id,))


@st.fragment(run_every=cluster.REFRESH_S)
def live_run(run_id: str) -> None:
    """A running run's progress and metrics so far, redrawn every few seconds from its streamed rows; the whole
    page is drawn again when it ends."""
    run = runs.open_run(cluster.runs_dir(), run_id)
    status = runs.status(run)
    if status.state != runs.RUNNING:
        st.rerun()
    st.progress(status.fraction, text=cluster.progress_line(run, status))
    d = cluster.partial_metrics(cluster.rows_of(run), float(run.meta["threshold"]))
    st.markdown(f"**So far:** {d['n']} labelled chest films scored (operating point "
                f"{fmt_threshold(run.meta['threshold'])}). The full results, with every interval, the ROC curve and "
                "the per-image table, appear when the run has finished.")
    metric_tiles(d, "95% CI: when the run has finished")


def show_run(run_id: str, card: ModelCard) -> None:
    """The open cluster run: its progress while it runs (the page stops there), what went wrong and a Resume
    button when it stopped; its rows become this session's batch for the results below."""
    try:
        run = runs.open_run(cluster.runs_dir(), run_id)
    except runs.RunNotFound:
        close_run()
        st.error("The page's address names no run on this server: it may have been removed, or the link is "
                 "incomplete.", icon=icons.ERROR)
        return
    status = runs.status(run)
    st.divider()
    st.subheader(f"On the cluster · {literal(run.title)}")
    st.caption(f"{cluster.started_text(run)} · {run.total} films · scored with: "
               f"**{literal(run.meta.get('scored_with') or sites.SHIPPED)}**")
    if status.state == runs.RUNNING:
        st.info("Running on the cluster. It goes on if you close this tab or leave this page: come back to it "
                "with this page's address, or open it from the list above.", icon="⏳")
        live_run(run.id)
        st.stop()
    if status.state == runs.INTERRUPTED:
        st.warning(f"The run stopped after {status.done} of {status.total} films (the server restarted, or the "
                   "run was ended). Resume scores the films not scored yet and keeps the others.", icon=icons.PAUSED)
    elif status.state == runs.FAILED:
        st.error(cluster.failure_text(status), icon=icons.ERROR)
    if status.state in (runs.INTERRUPTED, runs.FAILED) and st.button("Resume the run", key=state.CLUSTER_RESUME):
        try:
            runs.resume(run)
        except runs.RunBusy:
            pass  # another session resumed it a moment ago
        st.rerun()
    built = (run.id, status.state, status.done)
    if st.session_state.get(state.BATCH_RUN) != built:
        st.session_state[state.BATCH] = cluster.batch_of(run, status, cluster.rows_of(run),
                                                         cluster.folder_allowed(run, data_roots()))
        st.session_state[state.BATCH_SCORED_BY] = cluster.scored_by(run, card)
        st.session_state[state.BATCH_RUN] = built
