"""One Classifier shared by many threads (a Streamlit server's sessions): predict and Grad-CAM at
once must give exactly what each gives alone."""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import shared_data
from covidxr.explain import explain
from covidxr.films import read_film

pytestmark = [pytest.mark.model, pytest.mark.slow]

THREADS = 8


def real_films(n: int):
    """n different real films, one every so often through the manifest (several sources)."""
    with open(shared_data("cxr", "MANIFEST.csv")) as f:
        rows = list(csv.DictReader(f))
    step = len(rows) // n
    return [read_film(shared_data("cxr", r["path"])) for r in rows[::step][:n]]


def test_predict_and_explain_from_many_threads_match_one_thread(classifier):
    films = real_films(THREADS)
    alone = [(classifier.predict([f])[0], explain(classifier, f)) for f in films]

    def both(i: int):
        # even threads explain then predict, odd ones the other way round, so that the two overlap
        if i % 2:
            p = classifier.predict([films[i]])[0]
            return p, explain(classifier, films[i])
        ex = explain(classifier, films[i])
        return classifier.predict([films[i]])[0], ex

    for _ in range(2):
        with ThreadPoolExecutor(THREADS) as pool:
            together = list(pool.map(both, range(THREADS)))
        for (p1, e1), (p8, e8) in zip(alone, together):
            assert p8.probability == pytest.approx(p1.probability, abs=1e-5)
            assert e8.prediction.probability == pytest.approx(p1.probability, abs=1e-5)
            assert p8.label == p1.label and e8.prediction.label == p1.label
            np.testing.assert_allclose(e8.heatmap, e1.heatmap, atol=1e-5)
