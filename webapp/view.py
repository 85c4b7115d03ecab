"""One result, shown the same way on every page: decision, probabilities, film and Grad-CAM, opacity, download.

The heatmap is computed once per film (by content) and kept in this session, so that moving the
opacity slider, or opening the same film again on any page, only redraws. A film the gate refuses gets
its reasons and no score at all; a film below the operating point gets its map in a muted slate tone,
so that no colour suggests a finding the decision denies.
"""
from __future__ import annotations

import datetime as dt

import streamlit as st

import covidxr
from covidxr.explain import Explanation, explain, overlay
from covidxr.films import Film, film_summary

from . import state
from .images import annotated, colour_bar, muted_overlay, overlay_name, png_bytes, to_uint8
from .lru import LRU
from .model import card, classifier
from .tables import class_rows
from .wording import (DISCLAIMER_PLAIN, class_title, gate_warnings, other_finding_sentence, refusal, summary_line,
                      tone, verdict)

DEFAULT_OPACITY = 0.45
ICONS = {"positive": "🔴", "review": "⚠️", "negative": "✅", "refused": "🚫", "warning": "⚠️"}


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


def model_version() -> str:
    """The model as a report names it: card name, weights sha256[:12], package version."""
    c = card()
    return f"{c.name} (weights {c.weights_sha256[:12]}, covidxr {covidxr.__version__})"


def show_facts(film: Film) -> None:
    """What may be shown about the film (modality, view, size, format), never the patient's identity."""
    facts = film_summary(film)
    if facts:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))


def show_refusal(ood, film: Film, positive_class: str) -> None:
    """A film the gate refused: the decisive reason first, in words; the numbers on a details line; no score."""
    r = refusal(ood, positive_class)
    st.error(r.text(), icon=ICONS["refused"])
    if r.details:
        st.caption(f"Details: {r.details}")
    for w in r.warnings:
        st.warning(w, icon=ICONS["warning"])
    st.image(to_uint8(film.pixels), caption="Film", output_format="JPEG")
    show_facts(film)


def show_decision(pred, positive: bool, threshold: float, positive_class: str) -> str:
    """The decision in words, coloured by its tone (red positive, amber review, green negative only when
    no other finding is likely); returns the tone."""
    how = tone(positive, pred.class_probabilities, positive_class)
    text = verdict(pred.probability, positive, threshold, positive_class)
    if how == "review":
        text += "\n\n" + other_finding_sentence(pred.class_probabilities, positive_class)
    {"positive": st.error, "review": st.warning, "negative": st.success}[how](text, icon=ICONS[how])
    return how


def show_result(key: str, film: Film, threshold: float | None = None) -> Explanation:
    """The decision, per-class probabilities, film and overlay side by side, colour scale, opacity,
    larger view, report-ready download and a one-line summary. `key`: the film's content key.
    `threshold`: the review page's, when it differs from the model's."""
    positive_class = card().positive_class
    ex = explained(key, film)
    pred = ex.prediction
    if refusal(pred.ood, positive_class) is not None:
        show_refusal(pred.ood, film, positive_class)
        return ex
    t = pred.threshold if threshold is None else threshold
    positive = pred.probability >= t
    show_decision(pred, positive, t, positive_class)
    for w in gate_warnings(pred.ood):
        st.warning(w, icon=ICONS["warning"])
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key=state.opacity_slider(key),
                      help="Changes only the drawing; the heatmap is not recomputed.")
    name = class_title(positive_class)
    if positive:
        blended = overlay(film.pixels, ex.heatmap, alpha)
        caption = f"Grad-CAM for {name}: where the model looked"
        legend = f"Colour scale: low → high attention for the {name} class"
    else:
        blended = muted_overlay(film.pixels, ex.heatmap, alpha)
        caption = f"Grad-CAM for {name}, muted: below the operating point, not a finding"
        legend = (f"Muted scale (grey → slate): low → high attention for the {name} class. The film is below "
                  "the operating point: the map shows where the model looked, not a finding.")
    left, right = st.columns(2)
    left.image(to_uint8(film.pixels), caption="Film", width="stretch", output_format="JPEG", alt="Film")
    right.image(blended, caption=caption, width="stretch", output_format="JPEG", alt="Grad-CAM overlay")
    right.image(colour_bar(muted=not positive), width="stretch", alt="Heatmap colour scale")
    right.caption(legend)
    with st.expander("Larger view (full width; hover the image for full screen)"):
        st.image(blended, width="stretch", output_format="JPEG", alt="Grad-CAM overlay, large")
    cols = st.columns([2, 1])
    with cols[0]:
        st.dataframe(class_rows(pred.class_probabilities), hide_index=True, width="stretch",
                     column_config={"probability (%)": st.column_config.ProgressColumn(
                         "probability", min_value=0.0, max_value=100.0, format="%.0f%%")})
        show_facts(film)
    today = dt.date.today().isoformat()
    summary = summary_line(film.name or "film", pred.probability, positive, t, positive_class,
                           pred.class_probabilities, model_version(), today)
    other = None if positive else other_finding_sentence(pred.class_probabilities, positive_class)
    lines = [verdict(pred.probability, positive, t, positive_class) + (f". {other}" if other else ""),
             f"Model: {model_version()}", f"Date: {today}", DISCLAIMER_PLAIN]
    cols[1].download_button("Download overlay (PNG)", lambda: png_bytes(annotated(blended, lines)),
                            file_name=overlay_name(film.name), mime="image/png", key=state.overlay_download(key),
                            on_click="ignore", help="The overlay with the decision, score, operating point, "
                                                    "model version, date and disclaimer printed below it.")
    cols[1].caption("One line for a report (copy with the icon):")
    cols[1].code(summary, language=None, wrap_lines=True)
    return ex


def heat_thumbnail(item, called_positive: bool, side: int = 256):
    """A gallery tile: the film with its Grad-CAM (jet when the film is called positive, muted slate
    below the operating point), 8-bit RGB at most `side` px; None when the film cannot be read again.
    The heatmap comes from this session's cache (computed once per film, shared with the large view)."""
    from .films import load_item
    from .images import shrink

    thumbs = state.user_state(state.THUMBNAILS, lambda: LRU(256))
    key = (item.path, "heat", called_positive)
    if key not in thumbs:
        loaded = load_item(item)
        if loaded.film is None:
            thumbs.put(key, None)
        else:
            ex = explained(loaded.key, loaded.film)
            pixels, heat = shrink(loaded.film.pixels, side), shrink(ex.heatmap.astype("float32"), side)
            draw = overlay if called_positive else muted_overlay
            thumbs.put(key, draw(pixels, heat, DEFAULT_OPACITY))
    return thumbs.get(key)
