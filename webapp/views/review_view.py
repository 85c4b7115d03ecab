"""The Heatmap review page's pieces (pages/review.py lays them out): a film's tile in the gallery and the body of
the dialog that shows it large. Which films, in which order, and what each says: webapp.views.review."""
from __future__ import annotations

from typing import Any

import streamlit as st

from webapp.services import audit_log
from webapp.session import state
from webapp.session.batch import Batch
from webapp.session.films import load_item, thumbnail
from webapp.views.literal import literal
from webapp.views.review import REFUSED, describe, place
from webapp.views.view import heat_thumbnail, show_result
from webapp.views.wording import row_warnings
from webapp.views import icons


def open_film(i: int | None) -> None:
    """Show batch row `i` in the dialog (None: close it)."""
    if i is None:
        st.session_state.pop(state.REVIEW_DIALOG, None)
    else:
        st.session_state[state.REVIEW_DIALOG] = i


def dialog_body(batch: Batch, i: int, shown: list[int], outcome_of: dict[int, str], positive_class: str,
                profile: Any) -> None:
    """Batch row `i` large, with previous/next through the errors (or the shown films) and its heatmap, decided
    at the batch's threshold with the profile it was scored with (`profile`)."""
    row = batch.rows[i]
    prev, nxt, where = place(shown, outcome_of, i)
    title, why = describe(row, outcome_of[i], positive_class, batch.threshold)
    st.subheader(literal(row.path))
    st.caption(literal(" · ".join(x for x in (where, f"label: {row.label or 'none'}",
                                              f"source: {row.source}" if row.source else "") if x)))
    if why:
        (st.info if outcome_of[i] == REFUSED else st.warning)(literal(why), icon=icons.INFO)
    back, fwd, close = st.columns(3)
    back.button("Previous", icon=icons.PREVIOUS, key=state.REVIEW_PREV, disabled=prev is None, width="stretch",
                on_click=open_film, args=(prev,))
    fwd.button("Next", icon=icons.NEXT, key=state.REVIEW_NEXT, disabled=nxt is None, width="stretch",
               on_click=open_film, args=(nxt,))
    if close.button("Close", key=state.REVIEW_CLOSE, width="stretch"):
        open_film(None)
        st.rerun()
    if batch.items is None:
        st.info("The films of this upload were not kept (too large to hold in memory); evaluate a server "
                "folder to review its heatmaps.")
        return
    loaded = load_item(batch.items[i])
    if loaded.film is None:
        st.error(f"{literal(row.path)} could not be read again: {literal(loaded.error)}", icon=icons.ERROR)
    else:
        audit_log.once("review-open", loaded.key, profile=profile, probability=row.probability,
                       decision=outcome_of[i], detail={"threshold": batch.threshold})
        show_result(loaded.key, loaded.film, threshold=batch.threshold, profile=profile)


def tile(batch: Batch, i: int, outcome: str, heatmaps: bool, positive_class: str, profile: Any) -> None:
    """Batch row `i` in the gallery: its thumbnail (the heatmap unless refused or turned off), outcome, title,
    why, warnings and an Open button."""
    row = batch.rows[i]
    if batch.items is not None:
        refused = outcome == REFUSED
        thumb = (heat_thumbnail(batch.items[i], row.probability >= batch.threshold, profile=profile)
                 if heatmaps and not refused else thumbnail(batch.items[i]))
        if thumb is not None:
            st.image(thumb, width="stretch", alt=f"{row.path} (heatmap)" if heatmaps and not refused else row.path)
    title, why = describe(row, outcome, positive_class, batch.threshold)
    st.markdown(f"**{outcome}** · {literal(title)}")
    if why:
        st.caption(literal(why))
    if warned := row_warnings(row):
        st.caption(f"{icons.WARNING} {warned}")
    st.caption(literal(row.path))
    st.button("Open", key=state.review_open_button(i), width="stretch", on_click=open_film, args=(i,))
