"""The pipeline gives the answers it gave before it was reorganised: every class probability, decision
and gate verdict on the samples and 300 shared films, against tests/data/reference_answers.json
(recorded by scripts/same_answers.py with the code before the change).

Tolerance, measured: on the recording machine the differences are 0.0 with 1 torch thread and at most
2.5e-7 (probability) and 4.5e-7 (relative gate distance) with 2 threads; TOLERANCE allows 400x that for
another CPU's kernels. A decision or a verdict may only differ for a film that lies within TOLERANCE
of its threshold."""
from __future__ import annotations

import json

from scripts import same_answers
from tests.conftest import REPO

TOLERANCE = 1e-4
REFERENCE = REPO / "tests" / "data" / "reference_answers.json"


def test_the_model_gives_the_recorded_answers(classifier):
    reference = json.loads(REFERENCE.read_text())
    now = same_answers.answers(classifier, same_answers.films())
    diff = same_answers.differences(reference, now)
    print(diff)
    assert diff["films"] == 306
    assert diff["max_probability_difference"] <= TOLERANCE
    assert diff["max_relative_distance_difference"] <= TOLERANCE
    positive = classifier.card.positive_class
    for name, was in reference.items():
        if now[name]["positive"] != was["positive"]:
            assert abs(was["class_probabilities"][positive] - classifier.threshold) <= TOLERANCE, name
        if now[name]["is_chest"] != was["is_chest"]:
            assert abs(was["distance"] - classifier.ood.threshold) <= TOLERANCE * max(1.0, was["distance"]), name
