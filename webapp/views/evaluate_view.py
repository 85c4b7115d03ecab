"""The Batch evaluation page's layout apart from site profiles: where the films come from, where they are
scored (this session, or the server's cluster runs), the scoring loop, and the results of a batch (metrics at a
threshold the slider moves, ROC, per-source and per-image tables, failures, downloads). pages/evaluate.py lays
these out in order."""
from __future__ import annotations

import json
import time
from typing import Callable

import streamlit as st

from covidxr.card import ModelCard
from covidxr.evaluate import iter_scores
from covidxr.films import FilmError
from covidxr.safety import PathRefused, ZipRefused

from webapp.views import access, site_view
from webapp.services import audit_log, auth, cluster, sites
from webapp.session import state
from webapp.session.batch import Batch, folder_batch, interleave, progress_text, upload_batch
from webapp.views.batch_view import close_run, forget_last_batch, metric_tiles, open_run, open_run_id, run_list, show_run
from webapp.views.charts import roc_chart
from webapp.views.view import ENGINEERING
from webapp.session.films import SAMPLES, UPLOAD_TYPES, sample_films
from webapp.views.literal import literal, without_paths
from webapp.services.roots import data_roots
from webapp.views.grids import fitted_table
from webapp.views.tables import (breakdown_rows, confusion_table, fmt_metric, image_table, metric_rows,
                                 refused_rows, roc_points, score_column)
from webapp.views.wording import (DECISION_CAPTION, METRIC_HELP, METRIC_TITLES, NOT_CHEST, class_title, fmt_threshold,
                                  score_meaning)
from webapp.views import icons

SOURCES = ["Upload films or a .zip", "A folder on the server", "The sample films"]
Collect = Callable[[], tuple]  # () -> (title, items, keep_for_review), called when the run starts


def choose_films(card: ModelCard) -> tuple[str, Collect | None]:
    """The films' source and its form; returns the source chosen and how to collect its films (None: not yet)."""
    state.restore_form(state.EVAL_FORM)  # the form as the user left it on another page
    offered = SOURCES if auth.user().is_admin else [SOURCES[0], SOURCES[2]]  # server folders: site admins only
    if st.session_state.get(state.EVAL_SOURCE) not in (*offered, None):
        access.require_admin("batch on a server folder")  # not offered to this user: refused and recorded
    source = st.radio("Films to evaluate", offered, horizontal=True, key=state.EVAL_SOURCE)
    collect = None  # () -> (title, items, keep_for_review), called when the run starts
    if source == SOURCES[0]:
        uploads = st.file_uploader("Drop films, or a .zip of a labelled folder", type=[*UPLOAD_TYPES, "zip"],
                                   accept_multiple_files=True, key=state.EVAL_UPLOAD)
        loose_label = st.selectbox("Label of the films dropped without a folder (zips keep their folders)",
                                   ["", *card.class_names], key=state.EVAL_LABEL,  # "": no label (None would
                                   format_func=lambda c: "no label (scored, not in the metrics)" if not c  # show
                                   else class_title(c)) or None  # as "Choose an option")
        if uploads:
            collect = lambda: upload_batch([(f.name, f.getvalue()) for f in uploads], loose_label,
                                             card.positive_class)  # noqa: E731
    elif source == SOURCES[1]:
        roots = data_roots()
        if not roots:
            st.info("No server folders are enabled. The operator lists the folders this page may read in "
                    "the environment variable `COVIDXR_DATA_ROOTS` or as `data_roots` in `.streamlit/secrets.toml`.")
        else:
            st.caption("Allowed folders: " + ", ".join(literal(str(r)) for r in roots))
            folder = st.text_input("Folder (absolute, or relative to an allowed folder)", key=state.EVAL_FOLDER)
            if folder.strip():
                collect = lambda: folder_batch(folder, roots, card.positive_class)  # noqa: E731
    else:
        st.caption(f"{len(sample_films())} real films shipped with the app (`samples/`); they are in the "
                   "training data, so they show how the page works, not how well the model works.")
        collect = lambda: folder_batch(str(SAMPLES), [SAMPLES], card.positive_class)  # noqa: E731
    state.remember_form(state.EVAL_FORM)
    return source, collect


def scoring_place(source: str) -> tuple[str | None, bool]:
    """(the cluster's address or None, whether this batch runs on it), with a caption that says where it runs."""
    address = cluster.ray_address() if auth.user().is_admin else None  # cluster runs: site admins only
    on_cluster = address is not None and source == SOURCES[1]
    if on_cluster:
        st.caption(f"The folder is scored on the computing cluster (`{address}`). The run belongs to the server, "
                   "not to this tab: it goes on if you close the tab, and this page's address brings it back.")
    elif address is not None:
        st.caption("Uploads and the sample films are scored here, in your session (the cluster's machines cannot see "
                   "files in your browser): keep this tab open until the results appear.")
    return address, on_cluster


def run_button(collect: Collect | None, on_cluster: bool, address: str | None, clf, scorer, in_use) -> None:
    """The run button: starts a cluster run, or scores the films here in this session (the batch then stays in
    the session state); then the cluster's runs, the list and the one this session or its address opened."""
    card = clf.card
    clicked = st.button("Run on the cluster" if on_cluster else "Run evaluation", type="primary",
                        disabled=collect is None, key=state.EVAL_RUN)
    if clicked:
        audit_log.check()  # fail closed: nothing is scored when the audit trail cannot be written
        try:
            title, items, keep = collect()
        except (PathRefused, ZipRefused, FilmError) as e:
            st.error(f"Nothing was evaluated: {literal(e)}", icon=icons.ERROR)
            st.stop()
        if on_cluster:
            try:
                run = cluster.submit(title, len(items), scorer.threshold, card.positive_class, str(clf.directory),
                                     in_use)
                audit_log.record("batch", profile=in_use.profile, detail={"source": "cluster run", "run": run.id,
                                                                          "films": len(items)})
                open_run(run.id)
            except OSError as e:  # the run folder cannot be written (the operator's COVIDXR_RUNS_DIR)
                st.error(f"The run could not be started: {literal(without_paths(e))}", icon=icons.ERROR)
                st.stop()
        elif address is not None:
            close_run()
    if clicked and not on_cluster:  # scored here, in this session
        batch = score_here(scorer, title, items, keep, in_use, card)
        audit_log.record("batch", profile=in_use.profile, detail=batch_summary(batch))
        st.rerun()  # drawn afresh: the results take the place the progress bar had (pages/evaluate.py)
    if address is None and open_run_id() and not auth.user().is_admin:  # a cluster run's address, opened by a clinician
        access.require_admin("open a cluster run")
    if address is not None:  # the cluster's runs: the list, and the run this session or its address opened
        opened = open_run_id()
        run_list(opened)
        if opened:
            show_run(opened, card)


def batch_summary(batch: Batch) -> dict:
    """What the audit record of a batch run holds: counts and metrics, no film names."""
    d = batch.report().as_dict()
    return {"films": batch.total, "scored": d["n"], "failed": d["n_errors"], "not_chest": d["n_not_chest"],
            **{k: d.get(k) for k in ("threshold", "sensitivity", "specificity", "auc")}}


def score_here(scorer, title: str, items: list, keep: bool, in_use, card: ModelCard) -> Batch:
    """Score the batch in this session, a few films at a time, with a progress bar."""
    forget_last_batch()
    items = interleave(items, key=lambda it: it.label)  # classes spread out: partial results stay balanced
    batch = Batch(title, len(items), scorer.threshold, card.positive_class, items if keep else None)
    st.session_state[state.BATCH] = batch
    st.session_state[state.BATCH_SCORED_BY] = {"site": None if in_use.profile is None else in_use.profile.name,
                                               "version": in_use.version or None,
                                               "profile": in_use.profile,  # the review page decides with it too
                                               "line": site_view.in_use_line(in_use.profile),
                                               "threshold": scorer.threshold}
    bar = st.progress(0.0, text=progress_text(0, len(items), 0.0))
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=progress_text(done, total, time.perf_counter() - t0))

    for row in iter_scores(scorer, items, batch_size=8, progress=progress, include_non_chest=True):  # kept, never shown
        batch.rows.append(row)  # kept even if the run is interrupted (a click elsewhere stops the script)
    batch.done, batch.seconds = True, time.perf_counter() - t0
    bar.empty()
    return batch


def exported(what: str, make, scored_by: dict, batch: Batch):
    """A download's content, made on click once its export is recorded (fail closed: no record, no file)."""
    record = audit_log.deferred("export", profile=scored_by.get("profile"),
                                detail={"what": what, "films": len(batch.rows)})

    def build():
        record()
        return make()
    return build


def results(batch: Batch, card: ModelCard) -> None:
    """A scored batch: its metrics at the slider's threshold, ROC, tables, failures and downloads."""
    st.divider()
    st.subheader(f"Results · {literal(batch.title)}")
    scored_by = st.session_state.get(state.BATCH_SCORED_BY) or {"site": None, "line": sites.SHIPPED,
                                                                "threshold": card.threshold}
    st.caption(f"Scored with: **{literal(scored_by['line'])}**")
    if batch.interrupted:
        st.warning(f"The evaluation was interrupted after {len(batch.rows)} of {batch.total} films; the results "
                   "below cover the films scored so far.", icon=icons.PAUSED)

    if state.EVAL_THRESHOLD not in st.session_state:
        st.session_state[state.EVAL_THRESHOLD] = 100.0 * batch.threshold
    left, right = st.columns([4, 1])
    batch.threshold = left.slider("Operating point (%): metrics recompute from the stored scores", 0.0, 100.0,
                                  step=0.5, format="%.1f%%", key=state.EVAL_THRESHOLD) / 100.0
    model_threshold = scored_by["threshold"]
    right.button("Model's operating point", key=state.EVAL_RESET,
                 help=f"{fmt_threshold(model_threshold)}: "
                      + (card.threshold_rule if scored_by["site"] is None else
                         f"the site profile's, by the card's rule on the site's films ({card.threshold_rule})"),
                 on_click=lambda: st.session_state.update({state.EVAL_THRESHOLD: 100.0 * model_threshold}))

    refused = batch.refused()
    if refused:
        st.warning(f"{len(refused)} film{'s' if len(refused) > 1 else ''} judged **{NOT_CHEST}**: no score is shown "
                   "for them, and the metrics leave them out unless you include them below.", icon=icons.ERROR)
        listed = refused_rows(r for _, r in refused)
        st.dataframe([{k: v for k, v in r.items() if k != "details"} for r in listed], hide_index=True)
        if any("details" in r for r in listed):  # the gate's numbers: engineering detail (and in the CSV/JSON)
            with st.expander(ENGINEERING):
                st.dataframe([{"film": r["film"], "details": r.get("details", "")} for r in listed], hide_index=True)
        batch.include_refused = st.checkbox(
            "Include the refused films in the metrics", key=state.EVAL_INCLUDE_REFUSED,
            disabled=not batch.can_include_refused(),
            help="For measuring the input check itself; a refused film's score is not valid for the model. "
                 + ("" if batch.can_include_refused() else "The engine keeps no score for refused films."))
    report = batch.report()
    d = report.as_dict()

    at_model = abs(batch.threshold - model_threshold) < 1e-9
    st.caption(f"{d['n']} labelled films scored · {len(refused)} not a chest film "
               f"({'in' if batch.include_refused else 'left out of'} the metrics) · {report.n_unlabelled} without a "
               f"label · {report.n_errors} failed" + (f" · {batch.seconds:.1f} s" if batch.seconds else "")
               + f" · operating point {fmt_threshold(batch.threshold)}" + (" (the model's)" if at_model else ""))
    metric_tiles(d)

    left, right = st.columns(2)
    with left:
        st.markdown("**Confusion matrix**")
        st.dataframe(confusion_table(d["confusion"], card.positive_class))
        st.markdown("**All metrics (95% CI: Wilson for proportions, bootstrap for AUC and ECE)**",
                    help="\n\n".join(f"**{METRIC_TITLES[k]}**: {v}" for k, v in METRIC_HELP.items()))
        st.dataframe(metric_rows(d), hide_index=True)
    with right:
        points = roc_points(d.get("roc"))
        if points:
            here = (1 - (d["specificity"] or 0.0), d["sensitivity"] or 0.0, fmt_threshold(batch.threshold))
            st.markdown(f"**ROC curve** (AUC {fmt_metric('auc', d.get('auc'))}; red: the operating point)")
            st.altair_chart(roc_chart([{**p, "i": i} for i, p in enumerate(points)], operating_point=here),
                            width="stretch")
        else:
            st.info("A ROC curve needs labelled films of both classes.")

    if d.get("per_source") and len(d["per_source"]) > 1:
        st.markdown("**Per source**")
        fitted_table(breakdown_rows(d["per_source"], card.positive_class))

    st.markdown("**Per image**")
    per_image = image_table(report.rows, batch.threshold, card.positive_class)  # sorts by score, shows fmt_pct
    score, columns = score_column(card.positive_class), per_image.data.columns
    st.dataframe(per_image, hide_index=True, column_config={score: st.column_config.Column(
                     help=score_meaning(card.positive_class))},
                 column_order=[c for c in columns if c != "source" or per_image.data[c].fillna("").str.len().any()])
    st.caption(DECISION_CAPTION.format(pos=card.positive_class, title=class_title(card.positive_class))
               + f" A film judged {NOT_CHEST} gets no score; the outcome column gives the reasons.")
    if report.failures:
        st.markdown(f"**Failed files ({len(report.failures)})**")
        st.dataframe([{"film": r.path, "reason": r.error} for r in report.failures], hide_index=True)

    left, right = st.columns(2)
    left.download_button("Download per-image CSV", exported("batch csv", report.to_csv, scored_by, batch),
                         file_name="covidxr_evaluation.csv",
                         mime="text/csv", key=state.EVAL_CSV, on_click="ignore")  # built on click only
    right.download_button("Download full report (JSON)",
                          exported("batch json", lambda: json.dumps(
                              {**({"site": scored_by["site"], "site_version": scored_by.get("version")}
                                  if scored_by["site"] else {}), **d,
                               "operating_point": fmt_threshold(batch.threshold)}, indent=2), scored_by, batch),
                          file_name="covidxr_evaluation.json", mime="application/json", key=state.EVAL_JSON,
                          on_click="ignore")
    st.page_link("pages/review.py", label="Review the heatmaps of this batch, errors first", icon=icons.REVIEW)
