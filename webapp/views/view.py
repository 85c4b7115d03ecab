"""One result, shown the same way on every page: decision, probabilities, film and Grad-CAM, opacity, download.

The heatmap is computed once per film (by content) and kept in this session, so that moving the
opacity slider, or opening the same film again on any page, only redraws. A film the gate refuses gets
its reasons and no score at all (the gate's numbers in an expander labelled engineering detail); a film below
the operating point gets its map in a muted slate tone, so that no colour suggests a finding the decision denies;
a film called positive gets jet(map x score), so that a 7% film and a 99% film do not look alike
(covidxr.overlay). The decision names whose operating point decided; one line says what a score is, one the PPV
and NPV at the site's prevalence.
"""
from __future__ import annotations

import datetime as dt
import functools
import weakref
from dataclasses import dataclass

import numpy as np
import streamlit as st

import covidxr
from covidxr.explain import Explanation, explain
from covidxr.films import Film, film_summary

from webapp.session import state
from webapp.views.images import (DEFAULT_OPACITY, DISPLAY_SIDE, LARGE_SIDE, Drawing, colour_bar, data_url, heat_overlay,
                                 jpeg_bytes, overlay_name, png_bytes, report_image, scale_labels, to_uint8)
from webapp.views.literal import literal
from covidxr.lru import LRU
from webapp.services.model import card, classifier
from webapp.views.tables import class_rows
from webapp.views import site_view
from webapp.views.wording import (class_title, film_identifiers, gate_warnings, model_text, other_finding_sentence,
                                  predictive_text, refusal, report_lines, score_meaning, summary_line, tone,
                                  trial_point, trial_verdict, verdict)
from webapp.views import icons

ICONS = {"positive": icons.POSITIVE, "review": icons.WARNING, "negative": icons.NEGATIVE, "refused": icons.REFUSED,
         "warning": icons.WARNING}


def explanations() -> LRU[str, Explanation]:
    """Heatmaps already computed in this session, keyed by the film's content hash."""
    return state.user_state(state.EXPLANATIONS, lambda: LRU(48))


from webapp.session import site_session
from webapp.session.site_session import ACTIVE  # explained()/show_result(): the session's operating point


def explained(key: str, film: Film, profile=ACTIVE) -> Explanation:
    """The film's prediction and heatmap at an operating point: `profile` (a covidxr.site.SiteProfile, or None
    for the shipped model's), by default the session's (webapp.services.sites). Cached by (profile, film): switching
    profiles decides again. The review page passes the profile its batch was scored with, so that the film
    it opens is decided as its row was."""
    from webapp.session import site_session
    from webapp.services import sites

    if profile is ACTIVE:
        profile = site_session.active_profile()
    cache = explanations()
    found = cache.get((sites.token(profile), key))
    if found is None:
        clf = classifier() if profile is None else site_session.scoring_classifier(profile)
        with st.spinner(f"Computing the heatmap for {literal(film.name) if film.name else 'the film'}…"):
            found = cache.put((sites.token(profile), key), explain(clf, film))
    return found


def model_version(site: str | None = None) -> str:
    """The model as a report names it: card name, weights sha256[:12], package version, and the site profile
    that decided (the prediction's `site`), if any."""
    c = card()
    return model_text(c.name, c.weights_sha256, covidxr.__version__, site)


def show_facts(film: Film) -> None:
    """What may be shown about the film (modality, view, size, format), never the patient's identity."""
    facts = film_summary(film)
    if facts:
        st.caption(" · ".join(f"{k}: {literal(v)}" for k, v in facts.items()))  # DICOM values are outside text


ENGINEERING = "Engineering detail (the numbers behind this; also in the CSV and JSON)"


def show_refusal(ood, film: Film, positive_class: str, key: str) -> None:
    """A film the gate refused: the decisive reason first, in words; the numbers in an expander labelled as
    engineering detail; no score."""
    r = refusal(ood, positive_class)  # its reasons may quote a DICOM's values: each shown literally
    more = "".join(f"\n- {literal(x)}" for x in r.reasons)
    st.error(literal(r.headline) + (f"\n\nAlso:{more}" if more else ""), icon=ICONS["refused"])
    if r.details:
        with st.expander(ENGINEERING):
            st.caption(literal(r.details))
    for w in r.warnings:
        st.warning(literal(w), icon=ICONS["warning"])
    st.image(film_jpeg(key, film), caption="Film", output_format="JPEG")
    show_facts(film)


def show_decision(pred, positive: bool, threshold: float, positive_class: str, profile=None) -> str:
    """The decision in words, naming whose operating point decided, coloured by its tone (red positive, amber
    review, green negative only when no other finding is likely); what the score is, on one line; the PPV and NPV
    at the site's prevalence. At a trial threshold (the review page's, moved away from the operating point that
    decided) whose side differs from the operating point's: amber, both sides said, no predictive values (they
    belong to the operating point). Returns the tone."""
    by = literal(site_view.decider(profile))  # a profile's name is outside text
    trial = trial_verdict(pred.probability, threshold, pred.threshold, positive_class, by)
    if trial is not None:
        st.warning(trial, icon=ICONS["review"])
        st.caption(score_meaning(positive_class))
        return "review"
    at_point = abs(threshold - pred.threshold) < 1e-9
    how = tone(positive, pred.class_probabilities, positive_class)
    text = verdict(pred.probability, positive, threshold, positive_class,
                   by if at_point else trial_point(by, pred.threshold))
    if how == "review":
        text += "\n\n" + other_finding_sentence(pred.class_probabilities, positive_class)
    {"positive": st.error, "review": st.warning, "negative": st.success}[how](text, icon=ICONS[how])
    st.caption(score_meaning(positive_class))
    if at_point:
        show_predictive_values(profile)
    return how


def show_predictive_values(profile) -> None:
    """PPV and NPV of the operating point in use at the site's prevalence (webapp.services.prevalence), 95% CIs."""
    from covidxr.predictive import operating_rates
    from webapp.services.prevalence import site_prevalence

    rates = operating_rates(card(), profile)
    if rates is None:
        st.caption("This operating point carries no sensitivity and specificity with intervals: no PPV or NPV.")
        return
    prev = site_prevalence()
    if prev.error:
        st.warning(f"The prevalence setting is not used ({literal(prev.error)}); the default is shown.",
                   icon=ICONS["warning"])
    st.caption(literal(predictive_text(rates.at(prev.value), rates.measured_on, prev.source)))


def show_result(key: str, film: Film, threshold: float | None = None, profile=ACTIVE) -> Explanation:
    """The decision, per-class probabilities, film and overlay side by side, colour scale, opacity,
    larger view, report-ready download and a one-line summary. `key`: the film's content key.
    `threshold`: the review page's, when it differs from the model's; `profile`: see explained()."""
    positive_class = card().positive_class
    ex = explained(key, film, profile)
    pred = ex.prediction
    if refusal(pred.ood, positive_class) is not None:
        show_refusal(pred.ood, film, positive_class, key)
        return ex
    t = pred.threshold if threshold is None else threshold
    positive = pred.probability >= t
    deciding = site_session.active_profile() if profile is ACTIVE else profile
    show_decision(pred, positive, t, positive_class, deciding)
    for w in gate_warnings(pred.ood):
        st.warning(literal(w), icon=ICONS["warning"])
    by = site_view.decider(deciding)
    show_drawing(key, film, ex, positive, t, positive_class, _export_record(key, pred, positive, deciding),
                 by if abs(t - pred.threshold) < 1e-9 else trial_point(by, pred.threshold))
    return ex


def _export_record(key: str, pred, positive: bool, profile):
    """The audit record of the overlay's download (webapp.services.audit_log.deferred): recorded when the file is made."""
    from webapp.services import audit_log

    return audit_log.deferred("export", obj=key, profile=profile, decision=pred.label, probability=pred.probability,
                              detail={"what": "overlay png", "positive": positive})


@st.fragment
def show_drawing(key: str, film: Film, ex: Explanation, positive: bool, t: float, positive_class: str,
                 record_export=lambda: None, by: str | None = None) -> None:
    """Everything of a result that follows the opacity slider: film and overlay, colour scale, larger view,
    table, download and summary. A fragment, so that moving the slider reruns only this film's drawing, not
    the page (nor the other films on it); its images come encoded from this session's cache."""
    pred = ex.prediction
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key=state.opacity_slider(key),
                      help="Changes only the drawing; the heatmap is not recomputed.")
    name = class_title(positive_class)
    beside, large = overlay_jpegs(key, film, ex, positive, alpha)
    meaning = scale_labels(positive_class, pred.probability, not positive)[2]
    if positive:
        caption = f"Grad-CAM for {name}: where the model looked, coloured by the score"
    else:
        caption = f"Grad-CAM for {name}, muted: below the operating point, not a finding"
    legend = f"Colour scale: {meaning}"
    left, right = st.columns(2)
    # inline (images.data_url says why): nothing for the browser to fetch while the slider moves
    left.image(data_url(film_jpeg(key, film)), caption="Film", width="stretch", alt="Film")
    right.image(data_url(beside), caption=caption, width="stretch", alt="Grad-CAM overlay")
    right.image(data_url(colour_bar_png(not positive, None if not positive else round(float(pred.probability), 3)),
                         "image/png"), width="stretch", alt="Heatmap colour scale")
    right.caption(legend)
    with st.expander("Larger view (full width; hover the image for full screen)"):
        st.image(data_url(large), width="stretch", alt="Grad-CAM overlay, large")
    cols = st.columns([2, 1])
    with cols[0]:
        st.dataframe(class_rows(pred.class_probabilities), hide_index=True, width="stretch",
                     column_config={"probability": st.column_config.TextColumn(help=score_meaning(positive_class))})
        show_facts(film)
    today = dt.date.today().isoformat()
    warned = gate_warnings(pred.ood)
    summary = summary_line(film.name or "film", pred.probability, positive, t, positive_class,
                           pred.class_probabilities, model_version(pred.site), today, warned, by)
    lines = report_lines(pred.probability, positive, t, positive_class, pred.class_probabilities,
                         model_version(pred.site), today, warned, film_identifiers(film.name), by)

    def full_size() -> bytes:  # the report-ready PNG at the film's full size, made only when clicked (and recorded)
        record_export()
        return png_bytes(report_image(film.pixels, ex.heatmap, positive, alpha, lines, float(pred.probability),
                                      positive_class))

    cols[1].download_button("Download overlay (PNG)", full_size,
                            file_name=overlay_name(film.name), mime="image/png", key=state.overlay_download(key),
                            on_click="ignore", help="The overlay with the decision, score, operating point, "
                                                    "model version, date and disclaimer printed below it.")
    cols[1].caption("One line for a report (copy with the icon):")
    cols[1].code(summary, language=None, wrap_lines=True)


# ---------------------------------------------------------------- display images, encoded once per film and opacity

def display_images() -> LRU:
    """The result view's images as JPEG bytes at display size, kept in this session: a rerun (another film
    dropped, a slider moved back) sends the same bytes again without drawing or encoding anything."""
    return state.user_state(state.DISPLAY_IMAGES, lambda: LRU(48))


def drawn(film: Film, ex: Explanation, positive: bool, alpha: float) -> np.ndarray:
    """The overlay at the film's full size: jet for a film called positive, muted slate below the operating point."""
    return heat_overlay(film.pixels, ex.heatmap, positive, alpha, float(ex.prediction.probability))


def film_jpeg(key: str, film: Film) -> bytes:
    """The film as shown: JPEG at most DISPLAY_SIDE px, encoded once per film (by content) in this session."""
    cache = display_images()
    found = cache.get((key, "film"))
    if found is None:
        found = cache.put((key, "film"), jpeg_bytes(to_uint8(film.pixels), DISPLAY_SIDE))
    return found


@dataclass(frozen=True)
class _Drawings:
    source: weakref.ref     # the Explanation drawn (the same film scored under another site profile is another)
    beside: Drawing         # at most DISPLAY_SIDE px, beside the film
    large: Drawing | None   # at most LARGE_SIDE px, the larger view; None: the film fits the display size


@dataclass(frozen=True)
class _Overlay:
    source: weakref.ref
    beside: bytes           # JPEG at most DISPLAY_SIDE px
    large: bytes            # JPEG at most LARGE_SIDE px (the same bytes when the film fits the display size)


def drawings(key: str, film: Film, ex: Explanation) -> _Drawings:
    """The film and its heatmap reduced and quantized once per film and explanation, ready for any opacity."""
    cache = display_images()
    found = cache.get((key, "drawings"))
    if found is None or found.source() is not ex:
        beside = Drawing(film.pixels, ex.heatmap, DISPLAY_SIDE)
        large = None if max(film.pixels.shape) <= DISPLAY_SIDE else Drawing(film.pixels, ex.heatmap, LARGE_SIDE)
        found = cache.put((key, "drawings"), _Drawings(weakref.ref(ex), beside, large))
    return found


def overlay_jpegs(key: str, film: Film, ex: Explanation, positive: bool, alpha: float) -> tuple[bytes, bytes]:
    """The overlay beside the film and in the larger view, as JPEG bytes, drawn and encoded once per film,
    explanation, colouring and opacity in this session."""
    cache = display_images()
    k = (key, "overlay", positive, round(alpha, 4))
    found = cache.get(k)
    if found is None or found.source() is not ex:
        d = drawings(key, film, ex)
        score = float(ex.prediction.probability)
        beside = jpeg_bytes(d.beside.draw(alpha, muted=not positive, score=score))
        large = beside if d.large is None else jpeg_bytes(d.large.draw(alpha, muted=not positive, score=score))
        found = cache.put(k, _Overlay(weakref.ref(ex), beside, large))
    return found.beside, found.large


@functools.lru_cache(maxsize=256)
def colour_bar_png(muted: bool, score: float | None = None) -> bytes:
    """The colour scale as PNG bytes (with the film's score marked, images.colour_bar), made once per process
    and score (rounded to 0.1%)."""
    return png_bytes(colour_bar(muted=muted, score=score))


def heat_thumbnail(item, called_positive: bool, side: int = 256, profile=ACTIVE):
    """A gallery tile: the film with its Grad-CAM (jet when the film is called positive, muted slate
    below the operating point), 8-bit RGB at most `side` px; None when the film cannot be read again.
    The heatmap comes from this session's cache (computed once per film and `profile`, see explained(),
    shared with the large view)."""
    from webapp.session.films import load_item
    from webapp.views.images import shrink

    thumbs = state.user_state(state.THUMBNAILS, lambda: LRU(256))
    key = (item.path, "heat", called_positive)
    if key not in thumbs:
        loaded = load_item(item)
        if loaded.film is None:
            thumbs.put(key, None)
        else:
            ex = explained(loaded.key, loaded.film, profile)
            pixels, heat = shrink(loaded.film.pixels, side), shrink(ex.heatmap.astype("float32"), side)
            thumbs.put(key, heat_overlay(pixels, heat, called_positive, DEFAULT_OPACITY,
                                         float(ex.prediction.probability)))
    return thumbs.get(key)
