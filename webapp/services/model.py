"""The server's one model: loaded once per process (st.cache_resource), shared read-only by every session."""
from __future__ import annotations

import os

import streamlit as st

from covidxr.card import CardError, ModelCard
from covidxr.classifier import DEFAULT_WEIGHTS, Classifier, load
from covidxr.explain import explain
from covidxr.films import read_film

from webapp.session.films import sample_films

WEIGHTS_ENV = "COVIDXR_WEIGHTS"   # development only: another weights folder; the default is the shipped one


@st.cache_resource(show_spinner="Loading the model…")
def _load_classifier(directory: str) -> Classifier:
    clf = load(directory)
    samples = sample_films()
    if samples:  # warm up (first-call allocations, the Grad-CAM network copy) before a clinician waits on it
        explain(clf, read_film(samples[0]))
    return clf


def classifier() -> Classifier:
    """The server's one model; a page stops with a message if it fails to load."""
    directory = os.environ.get(WEIGHTS_ENV) or str(DEFAULT_WEIGHTS)
    try:
        return _load_classifier(directory)
    except (CardError, OSError) as e:
        st.error(f"The model could not be loaded: {e}")
        st.stop()
        raise  # unreachable: st.stop() ends the script run


def card() -> ModelCard:
    """The model card of the server's model: classes, positive class, threshold, everything shown about it."""
    return classifier().card
