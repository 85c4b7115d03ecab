"""Batch evaluation: a labelled server folder, uploads or a zip -> streamed scores -> metrics that a
threshold slider moves without re-scoring, ROC, per-source table, per-image table, failures, downloads.
With $COVIDXR_RAY_ADDRESS, server folders run on the cluster as runs of the server (webapp.services.cluster): the page
follows the open run (?run=ID) and shows its results as those of a batch scored here."""
import streamlit as st

from webapp.services import auth
from webapp.session import site_session, state
from webapp.views import site_view
from webapp.session.batch import Batch
from webapp.views.evaluate_view import choose_films, results, run_button, scoring_place
from webapp.views.literal import literal
from webapp.services.model import classifier
from webapp.views import icons

clf = classifier()  # the shipped model: site profiles are fitted with it
card = clf.card
in_use = site_session.active()  # the session's operating point (chosen on the Screen page): batches are scored with it
scorer = clf if in_use.profile is None else site_session.scoring_classifier(in_use.profile)
st.title("Batch evaluation")
st.caption(f"Films labelled by folder: one subfolder per class, `{card.positive_class}` positive, every other folder "
           "negative (`<source>/<class>/` is recognised too). Scores stream in; the threshold slider "
           "below recomputes every metric from the stored scores.")

source, collect = choose_films(card)
address, on_cluster = scoring_place(source)
if in_use.error:
    st.error(f"The site profile {literal(in_use.folder)} can no longer be used ({literal(in_use.error)}); the shipped "
             "model is in use.",
             icon=icons.ERROR)
st.caption(f"Scored with: **{literal(site_view.in_use_line(in_use.profile))}** (the operating point in use in this session, "
           "chosen on the Screen page).")

run_button(collect, on_cluster, address, clf, scorer, in_use)

batch: Batch | None = st.session_state.get(state.BATCH)
if batch is None or not batch.rows:
    st.stop()

# One block right after the run button: when a new run starts, its progress bar takes this block's place, so the
# previous batch's results leave the screen at once instead of lingering under the bar.
with st.container():
    results(batch, card)
    if auth.user().is_admin:
        st.page_link("pages/site_profiles.py", label="Fit a site profile from this batch (site admins)", icon=icons.SITE)
