"""Streamlit glue shared by the pages: the one cached model, per-user state and one way to show a result.

`covidxr` never imports Streamlit; this module is where the two meet, so that the pages stay thin.
Per-user data (films, heatmaps, batch rows) lives only in `st.session_state`, which Streamlit keeps
per browser session: two clinicians never see each other's films. Nothing here writes to disk or logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from covidxr.card import CardError, ModelCard
from covidxr.classifier import DEFAULT_WEIGHTS, Classifier
from covidxr.evaluate import LabelledItem, scan_folder, scan_uploads
from covidxr.explain import Explanation, explain, overlay
from covidxr.films import Film, FilmError, film_summary, read_film
from covidxr.safety import PathRefused, ZipRefused, allowed_roots, resolve_inside
from covidxr.session import (LRU, class_rows, class_title, file_key, not_chest_notice, overlay_name, png_bytes,
                             shrink, to_uint8, verdict)

ROOT = Path(__file__).resolve().parent
SAMPLES = ROOT / "samples"
WEIGHTS_ENV = "COVIDXR_WEIGHTS"   # development only: another weights folder; the default is the shipped one
FILM_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom", "bmp", "tif", "tiff"]
DISCLAIMER = ("**Research screening aid, not a diagnosis.** Every result must be reviewed by a qualified "
              "clinician together with the patient's history and other findings.")
DEFAULT_OPACITY = 0.45
KEEP_UPLOAD_BYTES = 128 << 20  # a batch's uploads are kept for the review page up to this size per session
T = TypeVar("T")


def keep_uploads_in_memory() -> None:
    """Streamlit's upload route parses each upload with Starlette, which spools any part over 1 MiB
    (most DICOMs, most zips) to a temporary file on disk; raise that threshold to the upload limit so
    that uploads stay in memory, as promised (tests/test_privacy.py catches the spool under strace)."""
    from starlette.formparsers import MultiPartParser

    limit = (int(st.get_option("server.maxUploadSize")) + 1) << 20  # MB, plus the multipart framing
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit)


keep_uploads_in_memory()


# ---------------------------------------------------------------- the model, once per server

@st.cache_resource(show_spinner="Loading the model…")
def _load_classifier(directory: str) -> Classifier:
    clf = Classifier.from_dir(directory)
    samples = sample_films()
    if samples:  # warm up (first-call allocations, the Grad-CAM network copy) before a clinician waits on it
        explain(clf, read_film(samples[0]))
    return clf


def classifier() -> Classifier:
    """The server's one model, shared read-only by every session; a page stops with a message if it fails."""
    directory = os.environ.get(WEIGHTS_ENV) or str(DEFAULT_WEIGHTS)
    try:
        return _load_classifier(directory)
    except (CardError, OSError) as e:
        st.error(f"The model could not be loaded: {e}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


def card() -> ModelCard:
    return classifier().card


# ---------------------------------------------------------------- per-user state

def user_state(name: str, factory: Callable[[], T]) -> T:
    """This session's own object under `name`, created on first use."""
    if name not in st.session_state:
        st.session_state[name] = factory()
    return st.session_state[name]


def explanations() -> LRU[str, Explanation]:
    """Heatmaps already computed in this session, keyed by the film's content hash: moving the opacity
    slider, or opening the same film again (on any page), never recomputes Grad-CAM."""
    return user_state("explanations", lambda: LRU(48))


def explained(key: str, film: Film) -> Explanation:
    cache = explanations()
    found = cache.get(key)
    if found is None:
        with st.spinner(f"Computing the heatmap for {film.name or 'the film'}…"):
            found = cache.put(key, explain(classifier(), film))
    return found


# ---------------------------------------------------------------- films

@dataclass
class Loaded:
    key: str
    name: str
    film: Film | None
    error: str | None = None


def load_film(name: str, data: bytes) -> Loaded:
    """Bytes -> film, in memory; an unreadable file becomes a message, never an exception.
    Decoded films are kept per session by content, so that a rerun (a slider moved) does not decode again."""
    key = file_key(data)
    films: LRU[tuple[str, str], Loaded] = user_state("films", lambda: LRU(12))
    found = films.get((key, name))
    if found is None:
        try:
            found = Loaded(key, name, read_film(data, name=name))
        except FilmError as e:
            found = Loaded(key, name, None, str(e))
        films.put((key, name), found)
    return found


def load_item(item: LabelledItem) -> Loaded:
    """A batch film again (from the server folder, or the upload kept in this session)."""
    try:
        data = item.load()
    except (OSError, ZipRefused) as e:
        return Loaded("", item.path, None, f"could not be read: {e}")
    return load_film(Path(item.path).name, data)


def thumbnail(item: LabelledItem, side: int = 256) -> np.ndarray | None:
    """A small 8-bit picture of a batch film for the gallery (None if unreadable), cached per session."""
    thumbs: LRU[str, np.ndarray | None] = user_state("thumbnails", lambda: LRU(256))
    if item.path not in thumbs:
        try:
            film = read_film(item.load(), name=item.path)
            thumbs.put(item.path, to_uint8(shrink(film.pixels, side)))
        except (FilmError, OSError, ZipRefused):
            thumbs.put(item.path, None)
    return thumbs.get(item.path)


def sample_films() -> list[Path]:
    """The small real films shipped in samples/ (one subfolder per class)."""
    return sorted(p for p in SAMPLES.glob("*/*") if p.suffix.lower().lstrip(".") in FILM_TYPES)


def sample_title(path: Path) -> str:
    return f"{class_title(path.parent.name)} · {path.name}"


# ---------------------------------------------------------------- batches

def data_roots() -> list[Path]:
    """Server folders the operator allows: $COVIDXR_DATA_ROOTS plus `data_roots` in secrets.toml."""
    try:
        extra = st.secrets.get("data_roots", [])
    except (FileNotFoundError, StreamlitSecretNotFoundError):
        extra = []
    return allowed_roots([extra] if isinstance(extra, str) else extra)


def folder_batch(folder: str, roots: list[Path]) -> tuple[str, list[LabelledItem], bool]:
    """(title, items, keep) for a server folder, refused unless it lies inside `roots`; the films
    are re-read from disk for review, so they are always "kept"."""
    path = resolve_inside(folder, roots)
    items = scan_folder(path)
    if not items:
        raise PathRefused(f"{folder}: no films found (expected one subfolder per class, e.g. covid/ and normal/)")
    return str(path), items, True


def upload_batch(files: list[tuple[str, bytes]], label: str | None) -> tuple[str, list[LabelledItem], bool]:
    """(title, items, keep) for uploaded films and zips, read in memory; a refused zip becomes one
    failed item with its reason. The bytes are kept for review only when the upload is small."""
    items = scan_uploads(files, label)
    size = sum(len(d) for _, d in files)
    title = ", ".join(n for n, _ in files) if len(files) <= 3 else f"{len(files)} uploaded files"
    return title, items, size <= KEEP_UPLOAD_BYTES


# ---------------------------------------------------------------- one result, shown the same way everywhere

def show_facts(film: Film) -> None:
    facts = film_summary(film)
    if facts:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))


def show_result(key: str, film: Film, threshold: float | None = None) -> Explanation:
    """The decision, per-class probabilities, film and overlay side by side, opacity, download.
    `threshold`: the review page's, when it differs from the model's."""
    c = card()
    ex = explained(key, film)
    pred = ex.prediction
    notice = not_chest_notice(pred.ood)
    t = pred.threshold if threshold is None else threshold
    positive = pred.probability >= t
    sentence = verdict(pred.probability, positive, t, c.positive_class)
    if notice:
        st.warning(notice, icon=":material/warning:")
        st.image(to_uint8(film.pixels), caption="Film", output_format="JPEG")
        with st.expander("Show the score anyway (not valid for this image)"):
            st.write(f"{sentence} — **not valid: not a frontal chest radiograph**")
        show_facts(film)
        return ex
    (st.error if positive else st.success)(sentence, icon=":material/error:" if positive else ":material/check_circle:")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key=f"opacity_{key}",
                      help="Changes only the drawing; the heatmap is not recomputed.")
    blended = overlay(film.pixels, ex.heatmap, alpha)
    left, right = st.columns(2)
    left.image(to_uint8(film.pixels), caption="Film", width="stretch", output_format="JPEG", alt="Film")
    right.image(blended, caption=f"Grad-CAM for {class_title(c.positive_class)} (where the model looked)",
                width="stretch", output_format="JPEG", alt="Grad-CAM overlay")
    cols = st.columns([2, 1])
    with cols[0]:
        st.dataframe(class_rows(pred.class_probabilities), hide_index=True, width="stretch",
                     column_config={"probability": st.column_config.ProgressColumn(
                         "probability", min_value=0.0, max_value=1.0, format="%.2f")})
        show_facts(film)
    cols[1].download_button("Download overlay (PNG)", lambda: png_bytes(blended), file_name=overlay_name(film.name),
                            mime="image/png", key=f"download_{key}", on_click="ignore")  # PNG built on click only
    return ex
