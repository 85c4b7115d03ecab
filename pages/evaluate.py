"""Batch evaluation: a labelled server folder, uploads or a zip -> streamed scores -> metrics that a
threshold slider moves without re-scoring, ROC, per-source table, per-image table, failures, downloads.
With $COVIDXR_RAY_ADDRESS, server folders run on the cluster as runs of the server (webapp.cluster): the page
follows the open run (?run=ID) and shows its results as those of a batch scored here."""
import altair as alt  # the site profile's ROC below: #23 moves it out (webapp.charts.roc_chart(roc, by="model"))
import streamlit as st

from covidxr.site import MIN_PER_CLASS, ROUGH_PER_CLASS, SiteError
from webapp import site_choice, sites, state
from webapp.batch import Batch
from webapp.evaluate_view import choose_films, results, run_button, scoring_place
from webapp.literal import literal, without_paths
from webapp.model import classifier

clf = classifier()  # the shipped model: site profiles are fitted with it
card = clf.card
in_use = sites.active()  # the session's operating point (chosen on the Screen page): batches are scored with it
scorer = clf if in_use.profile is None else sites.scoring_classifier(in_use.profile)
st.title("Batch evaluation")
st.caption(f"Films labelled by folder: one subfolder per class, `{card.positive_class}` positive, every other folder "
           "negative (`<source>/<class>/` is recognised too). Scores stream in; the threshold slider "
           "below recomputes every metric from the stored scores.")

source, collect = choose_films(card)
address, on_cluster = scoring_place(source)
if in_use.error:
    st.error(f"The site profile {literal(in_use.folder)} can no longer be used ({literal(in_use.error)}); the shipped "
             "model is in use.",
             icon="🚫")
st.caption(f"Scored with: **{literal(sites.in_use_line(in_use.profile))}** (the operating point in use in this session, "
           "chosen on the Screen page).")

run_button(collect, on_cluster, address, clf, scorer, in_use)

batch: Batch | None = st.session_state.get(state.BATCH)
if batch is None or not batch.rows:
    st.stop()

results(batch, card)

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
