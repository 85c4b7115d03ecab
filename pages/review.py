"""Heatmap review: the last batch as a gallery of heatmap thumbnails, false negatives and false positives
first; "Open" shows a film large in a dialog where the user is, with previous/next through the errors.
A film the gate refused is listed with its reasons and never a score."""
import streamlit as st

from webapp.services import audit_log, sites
from webapp.session import state
from webapp.session.batch import Batch
from webapp.session.films import load_item, thumbnail
from webapp.views.literal import literal
from webapp.services.model import classifier
from webapp.views.review import ERRORS, OUTCOMES, REFUSED, neighbours, outcome, review_items
from webapp.views.view import heat_thumbnail, show_result
from webapp.views.wording import (NOT_CHEST, OUTCOME_TITLES, class_title, fmt_pct, fmt_threshold, is_refused,
                            review_explanation, row_reasons, row_warnings, score_meaning)

PER_PAGE = 12
COLUMNS = 4
ALL = (*OUTCOMES, "?", REFUSED)

st.title("Heatmap review")
batch: Batch | None = st.session_state.get(state.BATCH)
entries = [] if batch is None else [(i, r) for i, r in enumerate(batch.rows)
                                    if r.error is None and (r.probability is not None or is_refused(r))]
if not entries:
    st.info("No batch yet: run one on the Batch evaluation page, then review its heatmaps here.")
    st.page_link("pages/evaluate.py", label="Go to Batch evaluation", icon="📊")
    st.stop()

card = classifier().card
scored_by = st.session_state.get(state.BATCH_SCORED_BY) or {}
batch_profile = scored_by.get("profile")  # the films are decided as the batch was scored, whatever is in use now
st.caption(f"{literal(batch.title)} · {len(entries)} films · outcomes at operating point "
           f"{fmt_threshold(batch.threshold)} (set on the Batch evaluation page) · scored with: "
           f"{literal(scored_by.get('line', sites.SHIPPED))}. {score_meaning(card.positive_class, short=True)}")
pairs = [(r.probability, r.positive, is_refused(r)) for _, r in entries]
present = [o for o in ALL if o in {it.outcome for it in review_items(pairs, batch.threshold)}]
left, mid, right = st.columns([3, 1, 1])
shown = left.multiselect("Outcomes", list(ALL), default=present, key=state.REVIEW_OUTCOMES,
                         format_func=lambda o: OUTCOME_TITLES[o] if o in ("?", REFUSED) else f"{o} · {OUTCOME_TITLES[o]}")
order = mid.radio("Sort by confidence", ["Most confident first", "Least confident first"], key=state.REVIEW_SORT)
heatmaps = right.toggle("Heatmap thumbnails", value=True, key=state.REVIEW_HEATMAPS,
                        help="Each tile shows where the model looked (computed once per film). Coloured for "
                             "films called positive, muted slate below the operating point.")
items = review_items(pairs, batch.threshold, shown, most_confident_first=order.startswith("Most"))
index = [entries[it.index][0] for it in items]   # batch row of each shown film
outcome_of = {entries[it.index][0]: it.outcome for it in review_items(pairs, batch.threshold)}


def describe(i: int) -> tuple[str, str | None]:
    """(title line, explanation) of batch row i at the current operating point."""
    row, o = batch.rows[i], outcome_of[i]
    if o == REFUSED:
        return f"{NOT_CHEST}", row_reasons(row) or None
    title = f"{OUTCOME_TITLES[o]} · {class_title(card.positive_class)} {fmt_pct(row.probability, batch.threshold)}"
    return title, review_explanation(o, row.label, card.positive_class)


@st.dialog("Review a film", width="large", on_dismiss=lambda: st.session_state.pop(state.REVIEW_DIALOG, None))
def film_dialog() -> None:
    i = st.session_state.get(state.REVIEW_DIALOG)
    if i is None or i >= len(batch.rows):
        return
    row = batch.rows[i]
    errors = [k for k in index if outcome_of.get(k) in ERRORS]
    sequence = errors if i in errors else index
    prev, nxt = neighbours(sequence, i)
    where = f"{sequence.index(i) + 1} of {len(sequence)} {'errors' if sequence is errors else 'films'}" \
        if i in sequence else ""
    title, why = describe(i)
    st.subheader(literal(row.path))
    st.caption(literal(" · ".join(x for x in (where, f"label: {row.label or 'none'}",
                                              f"source: {row.source}" if row.source else "") if x)))
    if why:
        (st.info if outcome_of[i] == REFUSED else st.warning)(literal(why), icon="ℹ️")
    back, fwd, close = st.columns(3)
    back.button("◀ Previous", key=state.REVIEW_PREV, disabled=prev is None, width="stretch",
                on_click=lambda: st.session_state.update({state.REVIEW_DIALOG: prev}))
    fwd.button("Next ▶", key=state.REVIEW_NEXT, disabled=nxt is None, width="stretch",
               on_click=lambda: st.session_state.update({state.REVIEW_DIALOG: nxt}))
    if close.button("Close", key=state.REVIEW_CLOSE, width="stretch"):
        st.session_state.pop(state.REVIEW_DIALOG, None)
        st.rerun()
    if batch.items is None:
        st.info("The films of this upload were not kept (too large to hold in memory); evaluate a server "
                "folder to review its heatmaps.")
        return
    loaded = load_item(batch.items[i])
    if loaded.film is None:
        st.error(f"{literal(row.path)} could not be read again: {literal(loaded.error)}", icon="🚫")
    else:
        audit_log.once("review-open", loaded.key, profile=batch_profile, probability=row.probability,
                       decision=outcome_of[i], detail={"threshold": batch.threshold})
        show_result(loaded.key, loaded.film, threshold=batch.threshold, profile=batch_profile)


if st.session_state.get(state.REVIEW_DIALOG) is not None:
    film_dialog()

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
            if batch.items is not None:
                refused = items[k].outcome == REFUSED
                thumb = (heat_thumbnail(batch.items[i], row.probability >= batch.threshold, profile=batch_profile)
                         if heatmaps and not refused else thumbnail(batch.items[i]))
                if thumb is not None:
                    st.image(thumb, width="stretch", alt=f"{row.path} (heatmap)" if heatmaps and not refused
                             else row.path)
            title, why = describe(i)
            st.markdown(f"**{items[k].outcome}** · {literal(title)}")
            if why:
                st.caption(literal(why))
            if warned := row_warnings(row):
                st.caption(f"⚠️ {warned}")
            st.caption(literal(row.path))
            st.button("Open", key=state.review_open_button(i), width="stretch",
                      on_click=lambda i=i: st.session_state.update({state.REVIEW_DIALOG: i}))
