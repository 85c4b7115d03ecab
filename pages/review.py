"""Heatmap review: the last batch as a gallery of heatmap thumbnails, false negatives and false positives
first; "Open" shows a film large in a dialog where the user is, with previous/next through the errors.
A film the gate refused is listed with its reasons and never a score."""
import streamlit as st

from webapp.services import sites
from webapp.services.model import classifier
from webapp.session import state
from webapp.session.batch import Batch
from webapp.views.literal import literal
from webapp.views.review import OUTCOMES, REFUSED, ordered, page_rows, reviewable
from webapp.views.review_view import dialog_body, open_film, tile
from webapp.views.wording import OUTCOME_TITLES, fmt_threshold, score_meaning
from webapp.views import icons

PER_PAGE = 12
COLUMNS = 4
ALL = (*OUTCOMES, "?", REFUSED)

st.title("Heatmap review")
batch: Batch | None = st.session_state.get(state.BATCH)
entries = [] if batch is None else reviewable(batch.rows)  # batch rows
if not entries:
    st.info("No batch yet: run one on the Batch evaluation page, then review its heatmaps here.")
    st.page_link("pages/evaluate.py", label="Go to Batch evaluation", icon=icons.BATCH)
    st.stop()

card = classifier().card
scored_by = st.session_state.get(state.BATCH_SCORED_BY) or {}
batch_profile = scored_by.get("profile")  # the films are decided as the batch was scored, whatever is in use now
st.caption(f"{literal(batch.title)} · {len(entries)} films · outcomes at operating point "
           f"{fmt_threshold(batch.threshold)} (set on the Batch evaluation page) · scored with: "
           f"{literal(scored_by.get('line', sites.SHIPPED))}. {score_meaning(card.positive_class, short=True)}")
outcome_of = dict(ordered(batch.rows, entries, batch.threshold))  # batch row: its outcome
present = [o for o in ALL if o in set(outcome_of.values())]
left, mid, right = st.columns([3, 1, 1])
shown = left.multiselect("Outcomes", list(ALL), default=present, key=state.REVIEW_OUTCOMES,
                         format_func=lambda o: OUTCOME_TITLES[o] if o in ("?", REFUSED) else f"{o} · {OUTCOME_TITLES[o]}")
order = mid.radio("Sort by confidence", ["Most confident first", "Least confident first"], key=state.REVIEW_SORT)
heatmaps = right.toggle("Heatmap thumbnails", value=True, key=state.REVIEW_HEATMAPS,
                        help="Each tile shows where the model looked (computed once per film). Coloured for "
                             "films called positive, muted slate below the operating point.")
items = ordered(batch.rows, entries, batch.threshold, shown, most_confident_first=order.startswith("Most"))
index = [i for i, _ in items]   # batch row of each shown film


@st.dialog("Review a film", width="large", on_dismiss=lambda: open_film(None))
def film_dialog() -> None:
    i = st.session_state.get(state.REVIEW_DIALOG)
    if i is not None and i < len(batch.rows):
        dialog_body(batch, i, index, outcome_of, card.positive_class, batch_profile)


if st.session_state.get(state.REVIEW_DIALOG) is not None:
    film_dialog()

if not items:
    st.info("No film has the selected outcomes.")
    st.stop()

pages = max(1, -(-len(items) // PER_PAGE))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=state.REVIEW_PAGE) if pages > 1 else 1
for positions in page_rows(len(items), page, PER_PAGE, COLUMNS):
    for col, k in zip(st.columns(COLUMNS), positions):
        with col.container(border=True):
            tile(batch, *items[k], heatmaps, card.positive_class, batch_profile)
