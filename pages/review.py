"""Heatmap review: the last batch as a gallery, false negatives and false positives first; a film
opens large with its overlay (Grad-CAM computed on open, then cached for the session)."""
import streamlit as st

from webapp import state
from webapp.batch import Batch
from webapp.films import load_item, thumbnail
from webapp.model import classifier
from webapp.review import OUTCOMES, outcome, review_items
from webapp.view import show_result
from webapp.wording import OUTCOME_TITLES, fmt_p

PER_PAGE = 12
COLUMNS = 4

st.title("Heatmap review")
batch: Batch | None = st.session_state.get(state.BATCH)
if batch is None or not batch.scored():
    st.info("No batch yet: run one on the Batch evaluation page, then review its heatmaps here.")
    st.page_link("pages/evaluate.py", label="Go to Batch evaluation", icon=":material/analytics:")
    st.stop()

classifier()
st.caption(f"{batch.title} · {len(batch.scored())} films scored · outcomes at threshold {batch.threshold:.3f} "
           "(set on the Batch evaluation page)")
scored = batch.scored()
pairs = [(r.probability, r.positive) for _, r in scored]
present = [o for o in (*OUTCOMES, "?") if o in {it.outcome for it in review_items(pairs, batch.threshold)}]
left, right = st.columns([3, 1])
shown = left.multiselect("Outcomes", [*OUTCOMES, "?"], default=present, key=state.REVIEW_OUTCOMES,
                         format_func=lambda o: f"{o} · {OUTCOME_TITLES[o]}" if o != "?" else OUTCOME_TITLES[o])
order = right.radio("Sort by confidence", ["Most confident first", "Least confident first"], key=state.REVIEW_SORT)
items = review_items(pairs, batch.threshold, shown, most_confident_first=order.startswith("Most"))
index = [scored[it.index][0] for it in items]  # position of each shown film in the batch's rows

opened = st.session_state.get(state.REVIEW_OPEN)  # a batch row index, stable under filtering and sorting
if opened is not None and opened < len(batch.rows):
    row = batch.rows[opened]
    with st.container(border=True):
        st.subheader(row.path)
        verdict = OUTCOME_TITLES[outcome(row.positive, row.probability >= batch.threshold)]
        st.caption(f"{verdict} · label: {row.label or 'none'}" + (f" · source: {row.source}" if row.source else ""))
        if batch.items is None:
            st.info("The films of this upload were not kept (too large to hold in memory); evaluate a server "
                    "folder to review its heatmaps.")
        else:
            loaded = load_item(batch.items[opened])
            if loaded.film is None:
                st.error(f"{row.path} could not be read again: {loaded.error}", icon=":material/block:")
            else:
                show_result(loaded.key, loaded.film, threshold=batch.threshold)
        st.button("Close", key=state.REVIEW_CLOSE, on_click=lambda: st.session_state.pop(state.REVIEW_OPEN, None))

if not items:
    st.info("No film has the selected outcomes.")
    st.stop()

pages = max(1, -(-len(items) // PER_PAGE))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=state.REVIEW_PAGE) if pages > 1 else 1
start = (page - 1) * PER_PAGE
for r0 in range(start, min(start + PER_PAGE, len(items)), COLUMNS):
    for col, k in zip(st.columns(COLUMNS), range(r0, min(r0 + COLUMNS, start + PER_PAGE, len(items)))):
        i, row = index[k], batch.rows[index[k]]
        with col.container(border=True):
            if batch.items is not None and (thumb := thumbnail(batch.items[i])) is not None:
                st.image(thumb, width="stretch", alt=row.path)
            st.markdown(f"**{items[k].outcome}** · p {fmt_p(items[k].probability)}")
            st.caption(row.path)
            st.button("Open", key=state.review_open_button(i), width="stretch",
                      on_click=lambda i=i: st.session_state.update({state.REVIEW_OPEN: i}))
