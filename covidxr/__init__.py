"""covidxr: COVID-19 screening of chest radiographs. A research screening aid, not a diagnosis.

    import covidxr
    model = covidxr.load()                                  # the shipped weights, checked against their model card
    film = covidxr.read_film("film.dcm")                    # PNG, JPEG, DICOM ...
    pred = model.predict([film])[0]                         # pred.probability, pred.positive, pred.ood.is_chest, .reasons, .warnings
    heat = covidxr.explain(model, film).heatmap             # Grad-CAM of the COVID-19 class, on the film
    report = covidxr.evaluate_folder(model, "labelled/")    # covid/ positive, other folders negative; report.as_dict()

Everything else in the package is the pipeline behind these names, free to change.
"""
from __future__ import annotations

from pathlib import Path

from .card import CardError, ModelCard
from . import classifier as _classifier
from .classifier import DEFAULT_WEIGHTS, Classifier, Prediction, set_threads
from .evaluate import EvaluationReport, evaluate_folder
from .explain import Explanation, explain
from .films import FILM_SUFFIXES, Film, FilmError, read_film
from .gate import Verdict
from .ood import OODResult  # the gate's Verdict under its former name

__all__ = ["CardError", "Classifier", "EvaluationReport", "Explanation", "FILM_SUFFIXES", "Film", "FilmError",
           "ModelCard", "OODResult", "Prediction", "Verdict", "evaluate_folder", "explain", "load", "read_film", "set_threads"]
__version__ = "1.0.0"


def load(directory: str | Path = DEFAULT_WEIGHTS, threads: int | None = None, site: str | Path | None = None) -> Classifier:
    """The model in `directory` (default: the shipped weights/), refused unless it matches its model card; with
    `site`, deciding at that site profile's operating point (a folder written by `covidxr site fit`)."""
    return _classifier.load(directory, threads=threads, site=site)
