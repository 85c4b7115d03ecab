"""Batch evaluation: a labelled server folder, uploads or a zip -> streamed scores -> metrics that a
threshold slider moves without re-scoring, ROC, per-source table, per-image table, failures, downloads.
With $COVIDXR_RAY_ADDRESS, server folders run on the cluster as runs of the server (webapp.cluster): the page
follows the open run (?run=ID) and shows its results as those of a batch scored here."""
import json
import time

import altair as alt
import streamlit as st

from covidxr.evaluate import iter_scores
from covidxr.films import FilmError
from covidxr.safety import PathRefused, ZipRefused
from covidxr.site import MIN_PER_CLASS, ROUGH_PER_CLASS, SiteError
from webapp import cluster, site_choice, sites, state
from webapp.batch_view import close_run, forget_last_batch, metric_tiles, open_run, open_run_id, run_list, show_run
from webapp.batch import Batch, folder_batch, interleave, progress_text, upload_batch
from webapp.films import SAMPLES, UPLOAD_TYPES, sample_films
from webapp.literal import literal, without_paths
from webapp.model import classifier
from webapp.roots import data_roots
from webapp.tables import (breakdown_rows, confusion_table, fmt_metric, image_rows, metric_rows,
                           refused_rows, roc_points, score_column)
from webapp.wording import DECISION_CAPTION, METRIC_HELP, METRIC_TITLES, NOT_CHEST, class_title, fmt_threshold

SOURCES = ["Upload films or a .zip", "A folder on the server", "The sample films"]

clf = classifier()  # the shipped model: site profiles are fitted with it
card = clf.card
in_use = sites.active()  # the session's operating point (chosen on the Screen page): batches are scored with it
scorer = clf if in_use.profile is None else sites.scoring_classifier(in_use.profile)
st.title("Batch evaluation")
st.caption(f"Films labelled by folder: one subfolder per class, `{card.positive_class}` positive, every other folder "
           "negative (`<source>/<class>/` is recognised too). Scores stream in; the threshold slider "
           "below recomputes every metric from the stored scores.")

state.restore_form(state.EVAL_FORM)  # the form as the user left it on another page
source = st.radio("Films to evaluate", SOURCES, horizontal=True, key=state.EVAL_SOURCE)
collect = None  # () -> (title, items, keep_for_review), called when the run starts
if source == SOURCES[0]:
    uploads = st.file_uploader("Drop films, or a .zip of a labelled folder", type=[*UPLOAD_TYPES, "zip"],
                               accept_multiple_files=True, key=state.EVAL_UPLOAD)
    loose_label = st.selectbox("Label of the films dropped without a folder (zips keep their folders)",
                               [None, *card.class_names], key=state.EVAL_LABEL,
                               format_func=lambda c: "no label (scored, not in the metrics)" if c is None
                               else class_title(c))
    if uploads:
        collect = lambda: upload_batch([(f.name, f.getvalue()) for f in uploads], loose_label,
                                         card.positive_class)  # noqa: E731
elif source == SOURCES[1]:
    roots = data_roots()
    if not roots:
        st.info("No server folders are enabled. The operator lists the folders this page may read in "
                "the environment variable `COVIDXR_DATA_ROOTS` or as `data_roots` in `.streamlit/secrets.toml`.")
    else:
        st.caption("Allowed folders: " + ", ".join(f"`{r}`" for r in roots))
        folder = st.text_input("Folder (absolute, or relative to an allowed folder)", key=state.EVAL_FOLDER)
        if folder.strip():
            collect = lambda: folder_batch(folder, roots, card.positive_class)  # noqa: E731
else:
    st.caption(f"{len(sample_films())} real films shipped with the app (`samples/`); they are in the "
               "training data, so they show how the page works, not how well the model works.")
    collect = lambda: folder_batch(str(SAMPLES), [SAMPLES], card.positive_class)  # noqa: E731
state.remember_form(state.EVAL_FORM)
address = cluster.ray_address()  # None: every batch is scored in this session, as without a cluster
on_cluster = address is not None and source == SOURCES[1]
if on_cluster:
    st.caption(f"The folder is scored on the computing cluster (`{address}`). The run belongs to the server, "
               "not to this tab: it goes on if you close the tab, and this page's address brings it back.")
elif address is not None:
    st.caption("Uploads and the sample films are scored here, in your session (the cluster's machines cannot see "
               "files in your browser): keep this tab open until the results appear.")
if in_use.error:
    st.error(f"The site profile {literal(in_use.folder)} can no longer be used ({literal(in_use.error)}); the shipped "
             "model is in use.",
             icon="🚫")
st.caption(f"Scored with: **{literal(sites.in_use_line(in_use.profile))}** (the operating point in use in this session, "
           "chosen on the Screen page).")

clicked = st.button("Run on the cluster" if on_cluster else "Run evaluation", type="primary",
                    disabled=collect is None, key=state.EVAL_RUN)
if clicked:
    try:
        title, items, keep = collect()
    except (PathRefused, ZipRefused, FilmError) as e:
        st.error(f"Nothing was evaluated: {literal(e)}", icon="🚫")
        st.stop()
    if on_cluster:
        try:
            open_run(cluster.submit(title, len(items), scorer.threshold, card.positive_class, str(clf.directory),
                                    in_use).id)
        except OSError as e:  # the run folder cannot be written (the operator's COVIDXR_RUNS_DIR)
            st.error(f"The run could not be started: {literal(without_paths(e))}", icon="🚫")
            st.stop()
    elif address is not None:
        close_run()
if clicked and not on_cluster:  # scored here, in this session
    forget_last_batch()
    items = interleave(items, key=lambda it: it.label)  # classes spread out: partial results stay balanced
    batch = Batch(title, len(items), scorer.threshold, card.positive_class, items if keep else None)
    st.session_state[state.BATCH] = batch
    st.session_state[state.BATCH_SCORED_BY] = {"site": None if in_use.profile is None else in_use.profile.name,
                                               "profile": in_use.profile,  # the review page decides with it too
                                               "line": sites.in_use_line(in_use.profile),
                                               "threshold": scorer.threshold}
    bar = st.progress(0.0, text=progress_text(0, len(items), 0.0))
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=progress_text(done, total, time.perf_counter() - t0))

    for row in iter_scores(scorer, items, batch_size=8, progress=progress, include_non_chest=True):  # kept, never shown
        batch.rows.append(row)  # kept even if the run is interrupted (a click elsewhere stops the script)
    batch.done, batch.seconds = True, time.perf_counter() - t0
    bar.empty()
if address is not None:  # the cluster's runs: the list, and the run this session or its address opened
    opened = open_run_id()
    run_list(opened)
    if opened:
        show_run(opened, card)

batch: Batch | None = st.session_state.get(state.BATCH)
if batch is None or not batch.rows:
    st.stop()

# ---------------------------------------------------------------- results
st.divider()
st.subheader(f"Results · {literal(batch.title)}")
scored_by = st.session_state.get(state.BATCH_SCORED_BY) or {"site": None, "line": sites.SHIPPED,
                                                            "threshold": card.threshold}
st.caption(f"Scored with: **{literal(scored_by['line'])}**")
if batch.interrupted:
    st.warning(f"The evaluation was interrupted after {len(batch.rows)} of {batch.total} films; the results "
               "below cover the films scored so far.", icon="⏸️")

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
               "for them, and the metrics leave them out unless you include them below.", icon="🚫")
    st.dataframe(refused_rows(r for _, r in refused), hide_index=True)
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
        fpr, tpr = 1 - (d["specificity"] or 0.0), d["sensitivity"] or 0.0
        curve = alt.Chart(alt.Data(values=[{**p, "i": i} for i, p in enumerate(points)])).mark_line().encode(
            x=alt.X("fpr:Q", title="1 − specificity (false positive rate)", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("tpr:Q", title="sensitivity (true positive rate)", scale=alt.Scale(domain=[0, 1])),
            order="i:Q")  # the points' own order: ties in fpr keep their rising tpr
        chance = alt.Chart(alt.Data(values=[{"fpr": 0, "tpr": 0}, {"fpr": 1, "tpr": 1}])).mark_line(
            strokeDash=[4, 4], color="gray").encode(x="fpr:Q", y="tpr:Q")
        here = alt.Chart(alt.Data(values=[{"fpr": fpr, "tpr": tpr, "operating point": fmt_threshold(batch.threshold)}])
                         ).mark_point(size=140, filled=True, color="#d62728").encode(
            x="fpr:Q", y="tpr:Q", tooltip=["operating point:N"])
        st.markdown(f"**ROC curve** (AUC {fmt_metric('auc', d.get('auc'))}; red: the operating point)")
        st.altair_chart(chance + curve + here, width="stretch")
    else:
        st.info("A ROC curve needs labelled films of both classes.")

if d.get("per_source") and len(d["per_source"]) > 1:
    st.markdown("**Per source**")
    st.dataframe(breakdown_rows(d["per_source"], card.positive_class), hide_index=True)

st.markdown("**Per image**")
per_image = image_rows(report.rows, batch.threshold, card.positive_class)
score = score_column(card.positive_class)
st.dataframe(per_image, hide_index=True, column_config={score: st.column_config.NumberColumn(format="%.1f%%")},
             column_order=[c for c in (per_image[0] if per_image else {}) if c != "source"
                           or any(r["source"] for r in per_image)])
st.caption(DECISION_CAPTION.format(pos=card.positive_class, title=class_title(card.positive_class))
           + f" A film judged {NOT_CHEST} gets no score; the outcome column gives the reasons.")
if report.failures:
    st.markdown(f"**Failed files ({len(report.failures)})**")
    st.dataframe([{"film": r.path, "reason": r.error} for r in report.failures], hide_index=True)

left, right = st.columns(2)
left.download_button("Download per-image CSV", report.to_csv, file_name="covidxr_evaluation.csv",
                     mime="text/csv", key=state.EVAL_CSV, on_click="ignore")  # built on click only
right.download_button("Download full report (JSON)",
                      lambda: json.dumps({**({"site": scored_by["site"]} if scored_by["site"] else {}), **d,
                                          "operating_point": fmt_threshold(batch.threshold)}, indent=2),
                      file_name="covidxr_evaluation.json", mime="application/json", key=state.EVAL_JSON,
                      on_click="ignore")
st.page_link("pages/review.py", label="Review the heatmaps of this batch, errors first", icon="🔎")

# ---------------------------------------------------------------- a site profile from this batch
st.divider()
st.subheader("Fit a site profile from this batch")
st.caption(f"A site profile recalibrates the model on your own labelled films: at least {MIN_PER_CLASS} of each "
           f"class; below {ROUGH_PER_CLASS} of a class its figures are rough. It is fitted with the shipped model "
           "(whatever is in use) and checked on films it was not fitted on, beside the shipped model. Fit it, choose "
           "the sensitivity to aim at and read what it costs; only then save it under its name in this server's "
           "profile folder, for every user of the server. The films are re-read in memory; only the profile is "
           "written, with no film names.")
blocker = sites.fit_blocker(batch)
name = st.text_input("Profile name (also its folder on the server)", key=state.SITE_NAME, max_chars=sites.MAX_NAME,
                     disabled=blocker is not None, placeholder="e.g. St Mary radiology 2024")
folder, problem, exists, overwrite = None, None, False, False
if blocker is None and name.strip():
    try:
        folder = sites.check_name(name)
    except ValueError as e:
        problem = f"This name cannot be used: {literal(e)}."
    else:
        exists = (sites.sites_dir() / folder).exists()
if exists:
    overwrite = st.checkbox(f"Replace the profile “{literal(folder)}” already saved on this server",
                            key=state.site_overwrite(folder))
if blocker:
    st.info(blocker, icon="ℹ️")
elif problem:
    st.error(problem, icon="🚫")
elif exists and not overwrite:
    st.warning(f"A profile named “{literal(folder)}” is already saved on this server: choose another name, or tick the box "
               "to replace it.", icon="⚠️")
if st.button("Fit a site profile", key=state.SITE_FIT,
             disabled=blocker is not None or folder is None or (exists and not overwrite)):
    bar = st.progress(0.0, text="Reading the films again…")

    def fit_progress(done: int, total: int) -> None:
        bar.progress(0.8 * done / total if total else 0.8,
                     text=f"Scoring {done} of {total} films with the shipped model")

    try:
        profile, skipped = sites.fit(clf, batch.items, folder, progress=fit_progress, fitting=lambda: bar.progress(
            0.85, text="Fitting the profile and checking it on films it was not fitted on…"))
    except SiteError as e:  # TooFewFilms is a SiteError
        bar.empty()
        st.error(f"No profile was fitted: {literal(without_paths(e))}", icon="🚫")
    else:
        bar.empty()
        st.session_state[state.SITE_FITTED] = {"folder": folder, "profile": profile, "skipped": len(skipped)}

fitted = st.session_state.get(state.SITE_FITTED)
if fitted:
    st.markdown(f"**Fitted “{literal(fitted['folder'])}”, not saved yet.** Choose the sensitivity to aim at; the "
                "figures are of your films, each scored by a profile fitted without it.")
    p = site_choice.choose(fitted["profile"], key=state.SITE_TARGET)
    st.markdown(f"**Shipped model against the adapted profile on your films**: "
                f"{sites.films_text(p, card.positive_class)}; 95% CIs in brackets.")
    st.dataframe(sites.figure_rows(p), hide_index=True)
    adopted, allowed = site_choice.adopt_controls(p, key=state.SITE_OVERRIDE)
    if st.button("Save the profile at this sensitivity", key=state.SITE_SAVE, disabled=not allowed or (
            exists and not overwrite) or folder != fitted["folder"]):
        try:
            sites.save(adopted, sites.sites_dir(), fitted["folder"], overwrite=overwrite)
        except (SiteError, FileExistsError, OSError) as e:
            st.error(f"No profile was saved: {literal(without_paths(e))}", icon="🚫")
        else:
            st.session_state[state.SITE_SAVED] = fitted["folder"]
    if st.session_state.get(state.SITE_SAVED) == fitted["folder"]:
        st.success(f"Saved as “{literal(fitted['folder'])}” in the server's profile folder: {literal(p.describe())}. "
                   "Choose it on the Screen page to use it.", icon="💾")
    if rough := sites.rough_text(p):
        st.warning(rough, icon="⚠️")
    kind, text = sites.advice(p)
    {"info": st.info, "warning": st.warning}[kind](text, icon="⚖️")
    if fitted["skipped"]:
        st.caption(f"{fitted['skipped']} film{'s' if fitted['skipped'] > 1 else ''} of the batch left out of the fit "
                   "(unreadable, unlabelled, or not a frontal chest radiograph).")
    if roc := sites.roc_rows(p):
        curves = alt.Chart(alt.Data(values=roc)).mark_line().encode(
            x=alt.X("fpr:Q", title="1 − specificity (false positive rate)", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("tpr:Q", title="sensitivity (true positive rate)", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("model:N", title=None, legend=alt.Legend(orient="bottom")), order="i:Q")
        chance = alt.Chart(alt.Data(values=[{"fpr": 0, "tpr": 0}, {"fpr": 1, "tpr": 1}])).mark_line(
            strokeDash=[4, 4], color="gray").encode(x="fpr:Q", y="tpr:Q")
        st.markdown("**ROC curves on your films** (each film scored by a profile fitted without it)")
        st.altair_chart(chance + curves, width="stretch")
    site_choice.engineering(p)
    st.page_link("pages/screen.py", label="Choose the profile on the Screen page", icon="🩻")
