"""One result, shown the same way on every page: decision, probabilities, film and Grad-CAM, opacity, download.

The heatmap is computed once per film (by content) and kept in this session, so that moving the
opacity slider, or opening the same film again on any page, only redraws.
"""
from __future__ import annotations

import streamlit as st

from covidxr.explain import Explanation, explain, overlay
from covidxr.films import Film, film_summary

from . import state
from .images import overlay_name, png_bytes, to_uint8
from .lru import LRU
from .model import card, classifier
from .tables import class_rows
from .wording import class_title, not_chest_notice, verdict

DEFAULT_OPACITY = 0.45


def explanations() -> LRU[str, Explanation]:
    """Heatmaps already computed in this session, keyed by the film's content hash."""
    return state.user_state(state.EXPLANATIONS, lambda: LRU(48))


def explained(key: str, film: Film) -> Explanation:
    cache = explanations()
    found = cache.get(key)
    if found is None:
        with st.spinner(f"Computing the heatmap for {film.name or 'the film'}…"):
            found = cache.put(key, explain(classifier(), film))
    return found


def show_facts(film: Film) -> None:
    """What may be shown about the film (modality, view, size, format), never the patient's identity."""
    facts = film_summary(film)
    if facts:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))


def show_result(key: str, film: Film, threshold: float | None = None) -> Explanation:
    """The decision, per-class probabilities, film and overlay side by side, opacity, download.
    `key`: the film's content key. `threshold`: the review page's, when it differs from the model's."""
    positive_class = card().positive_class
    ex = explained(key, film)
    pred = ex.prediction
    notice = not_chest_notice(pred.ood, positive_class)
    t = pred.threshold if threshold is None else threshold
    positive = pred.probability >= t
    sentence = verdict(pred.probability, positive, t, positive_class)
    if notice:
        st.warning(notice, icon=":material/warning:")
        st.image(to_uint8(film.pixels), caption="Film", output_format="JPEG")
        with st.expander("Show the score anyway (not valid for this image)"):
            st.write(f"{sentence} — **not valid: not a frontal chest radiograph**")
        show_facts(film)
        return ex
    (st.error if positive else st.success)(sentence, icon=":material/error:" if positive else ":material/check_circle:")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key=state.opacity_slider(key),
                      help="Changes only the drawing; the heatmap is not recomputed.")
    blended = overlay(film.pixels, ex.heatmap, alpha)
    left, right = st.columns(2)
    left.image(to_uint8(film.pixels), caption="Film", width="stretch", output_format="JPEG", alt="Film")
    right.image(blended, caption=f"Grad-CAM for {class_title(positive_class)} (where the model looked)",
                width="stretch", output_format="JPEG", alt="Grad-CAM overlay")
    cols = st.columns([2, 1])
    with cols[0]:
        st.dataframe(class_rows(pred.class_probabilities), hide_index=True, width="stretch",
                     column_config={"probability": st.column_config.ProgressColumn(
                         "probability", min_value=0.0, max_value=1.0, format="%.2f")})
        show_facts(film)
    cols[1].download_button("Download overlay (PNG)", lambda: png_bytes(blended), file_name=overlay_name(film.name),
                            mime="image/png", key=state.overlay_download(key), on_click="ignore")  # built on click only
    return ex
