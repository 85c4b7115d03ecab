"""covidxr: COVID-19 screening of chest radiographs. A research screening aid, not a diagnosis.

    from covidxr import Classifier, read_film
    clf = Classifier.from_dir()            # weights/ beside this package, checked against its model card
    pred = clf.predict([read_film("film.dcm")])[0]
"""
from .card import CardError, ModelCard
from .classifier import Classifier, Prediction, set_threads
from .films import Film, FilmError, film_summary, read_film

__all__ = ["CardError", "Classifier", "Film", "FilmError", "ModelCard", "Prediction", "film_summary", "read_film", "set_threads"]
__version__ = "1.0.0"
