"""The input gate (covidxr.gate): one verdict, its reasons in order, the numbers apart, the lung-field rule,
DICOM tags and ages; and, with the shipped model, real films and real non-chest inputs.

There is no real lateral chest film in ../shared or in any installed package: the lateral rule is tested
here on synthetic lung masks (stand-ins for what the segmenter finds), and its rate on real laterals is
unmeasured (docs/gate.md)."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from covidxr.films import Film, read_film
from covidxr.gate import (GateRules, Verdict, age_warnings, dicom_age_years, fact_reasons, judge, lung_fields,
                          ranked)
from tests.conftest import REPO, shared_data

ICU_FILM = shared_data("cxr", "hannover-mhh", "covid", "24de8686.jpg")


def ellipse(mask: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:mask.shape[0], 0:mask.shape[1]] / np.array(mask.shape, float)[:, None, None]
    return np.maximum(mask, (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1).astype(np.float32))


def frontal_mask() -> np.ndarray:
    """Two lung fields, left and right of a mediastinal gap, as the segmenter draws a PA film."""
    m = np.zeros((64, 64), np.float32)
    return ellipse(ellipse(m, 0.5, 0.28, 0.3, 0.14), 0.5, 0.72, 0.3, 0.15)


def lateral_mask() -> np.ndarray:
    """A lateral view's lungs overlap: one field, wider than deep, in the middle of the film."""
    return ellipse(np.zeros((64, 64), np.float32), 0.48, 0.5, 0.3, 0.28)


def evidence(**kw) -> dict:
    base = dict(distance=1.0, limit=1.9, turned=0.01, turned_limit=0.5, lung_fraction=0.3,
                lung_prob=frontal_mask(), facts={})
    return {**base, **kw}


# ------------------------------------------------------------------ the lung-field rule on synthetic masks

def test_two_fields_side_by_side_are_frontal():
    f = lung_fields(frontal_mask())
    assert f.n_fields == 2 and f.side_by_side
    assert 0.8 < f.balance <= 1.0 and f.separation > 0.4 and f.overlap > 0.9


def test_one_merged_field_is_not_frontal():
    f = lung_fields(lateral_mask())
    assert f.n_fields == 1 and not f.side_by_side


@pytest.mark.parametrize("mask, why", [
    (ellipse(ellipse(np.zeros((64, 64), np.float32), 0.25, 0.5, 0.15, 0.3), 0.75, 0.5, 0.15, 0.3), "stacked"),
    (ellipse(ellipse(np.zeros((64, 64), np.float32), 0.5, 0.3, 0.3, 0.15), 0.5, 0.7, 0.07, 0.04), "one field and a speck"),
    (ellipse(ellipse(np.zeros((64, 64), np.float32), 0.5, 0.42, 0.3, 0.07), 0.5, 0.58, 0.3, 0.07), "too close together"),
    (np.zeros((64, 64), np.float32), "nothing"),
])
def test_fields_that_are_not_two_lungs_side_by_side(mask, why):
    assert not lung_fields(mask).side_by_side, why


def test_a_lateral_mask_is_refused_as_a_lateral_view_and_a_frontal_one_passes():
    assert judge(**evidence()).is_chest
    v = judge(**evidence(lung_prob=lateral_mask()))
    assert not v.is_chest and v.reasons == ["it looks like a lateral view: the lungs do not show as two fields "
                                            "either side of the spine"]


# ------------------------------------------------------------------ the verdict: order, words, numbers

def test_reasons_are_ordered_by_how_decisive_they_are_and_numbers_stay_in_details():
    v = judge(**evidence(distance=3.5, lung_prob=lateral_mask(), facts={"modality": "CR", "body_part": "HIP"}))
    assert not v.is_chest
    assert v.reasons[0] == "DICOM body part is HIP, not chest"
    assert v.reasons[1].startswith("it looks like a lateral view")
    assert v.reasons[2].startswith("its image features are unlike")
    assert not any(re.search(r"\d", r) for r in v.reasons)  # words for a clinician; the numbers go to details
    assert v.details.startswith("feature distance 3.50 (limit 1.90") and "lung share 30%" in v.details
    assert "turned probability 0.01" in v.details and "1 lung field" in v.details


def test_ranked_is_stable_within_a_rank():
    assert ranked([(2, "c"), (0, "a"), (2, "d"), (0, "b")]) == ["a", "b", "c", "d"]


def test_verdict_exports_the_same_fields_everywhere():
    v = judge(**evidence(facts={"modality": "MR"}))
    assert v.as_dict() == {"chest_xray": False, "reasons": ["DICOM modality is MR (magnetic resonance), not a radiograph"],
                           "details": v.details, "warnings": []}
    assert v.chest_xray is False and v.summary().startswith("not a frontal chest radiograph: DICOM modality is MR")
    assert Verdict(is_chest=True).summary() == "frontal chest radiograph"


def test_features_far_out_are_forgiven_only_up_to_the_second_limit_with_clear_frontal_anatomy():
    rules = GateRules(distance_hard_limit=2.6)
    assert judge(**evidence(distance=2.2), rules=rules).is_chest                    # an ICU film's distance
    assert not judge(**evidence(distance=2.7), rules=rules).is_chest                # beyond the second limit
    assert not judge(**evidence(distance=2.2, lung_prob=lateral_mask()), rules=rules).is_chest
    assert not judge(**evidence(distance=2.2, turned=0.9), rules=rules).is_chest
    v = judge(**evidence(distance=2.2, lung_prob=None), rules=rules)                # no mask: the first limit
    assert not v.is_chest and v.reasons[-1].startswith("its image features")


def test_turned_and_lung_share_reasons():
    v = judge(**evidence(turned=0.9))
    assert v.reasons == ["it looks rotated or inverted (a frontal chest film is read upright, not turned or in negative)"]
    assert judge(**evidence(lung_fraction=0.0)).reasons[0] == "no lungs were found in it"
    assert "too small" in judge(**evidence(lung_fraction=0.02)).reasons[0]
    assert "too large" in judge(**evidence(lung_fraction=0.9)).reasons[0]


def kinds(**p) -> np.ndarray:
    """KindLook's probabilities in KINDS order (frontal, lateral, ct, other)."""
    from covidxr.gate import KINDS

    return np.array([p.get(k, 0.0) for k in KINDS])


def test_what_the_image_is_comes_before_how_it_lies():
    """A page of text is "not a radiograph" first, then "rotated"; a CT slice "a CT slice" before its lungs."""
    page = judge(**evidence(turned=0.9, lung_fraction=0.02, distance=4.0), kind=kinds(frontal=0.05, other=0.8, ct=0.15))
    assert page.reasons[0] == "it does not look like a radiograph"
    assert page.reasons[1].startswith("it looks rotated or inverted")
    ct = judge(**evidence(distance=2.0), kind=kinds(frontal=0.1, ct=0.7, lateral=0.2))
    assert ct.reasons == ["it looks like a CT slice, not a radiograph"]
    lateral = judge(**evidence(lung_prob=lateral_mask()), kind=kinds(frontal=0.3, lateral=0.6, ct=0.1))
    assert lateral.reasons[0] == "it looks like a lateral chest film, not a frontal one"
    assert lateral.reasons[1].startswith("it looks like a lateral view")
    tagged = judge(**evidence(facts={"modality": "CT"}), kind=kinds(frontal=0.1, ct=0.9))
    assert tagged.reasons == ["DICOM modality is CT, not a radiograph", "it looks like a CT slice, not a radiograph"]
    assert "looks frontal 0.10, lateral 0.00, ct 0.90, other 0.00" in tagged.details


def test_the_image_kind_refuses_only_when_frontal_is_unlikely():
    assert judge(**evidence(), kind=kinds(frontal=0.6, ct=0.4)).is_chest
    assert not judge(**evidence(), kind=kinds(frontal=0.4, ct=0.6)).is_chest
    assert judge(**evidence(), kind=kinds(frontal=0.4, ct=0.6), kind_limit=0.7).is_chest


def test_a_refused_film_gets_no_age_or_child_warning():
    """No score is given, so there is nothing to "interpret with care" (a CT DICOM with age 000Y was warned)."""
    v = judge(**evidence(facts={"modality": "CT", "patient_age": "000Y"}), child=0.95, child_limit=0.8)
    assert not v.is_chest and v.warnings == [] and v.as_dict()["warnings"] == []
    assert judge(**evidence(facts={"patient_age": "000Y"})).warnings  # a scored film keeps it


def test_kind_look_round_trips_and_refuses_a_tampered_file(tmp_path):
    from covidxr.card import CardError
    from covidxr.gate import KINDS, KindLook

    rng = np.random.default_rng(0)
    look = KindLook(rng.normal(size=(16, len(KINDS))).astype(np.float32), rng.normal(size=len(KINDS)), 0.5)
    name, sha = look.save(tmp_path)
    entry = {"file": name, "sha256": sha, "threshold": 0.5}
    x = rng.normal(size=(5, 16))
    p = KindLook.load(tmp_path, entry).probabilities(x)
    np.testing.assert_allclose(p, look.probabilities(x), rtol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1.0)
    with pytest.raises(CardError, match="sha256"):
        KindLook.load(tmp_path, {**entry, "sha256": "0" * 64})
    with pytest.raises(CardError, match="missing"):
        KindLook.load(tmp_path, {**entry, "file": "absent.npz"})


# ------------------------------------------------------------------ DICOM tags and ages

def test_dicom_tags():
    assert fact_reasons({}) == [] and fact_reasons({"modality": "", "body_part": " "}) == []
    assert fact_reasons({"modality": "CR", "body_part": "CHEST", "view": "PA", "colour": "no"}) == []
    assert fact_reasons({"modality": "dx", "body_part": "Thorax", "view": "AP"}) == []
    texts = [t for _, t in fact_reasons({"colour": "yes", "modality": "MR", "body_part": "HIP", "view": "LL"})]
    assert texts == ["DICOM modality is MR (magnetic resonance), not a radiograph", "DICOM body part is HIP, not chest",
                     "DICOM view is LL: a lateral film, not a frontal one", "it is a colour image, not a radiograph"]
    v = judge(**evidence(facts={"view": "LATERAL", "modality": "DX", "body_part": "CHEST"}))
    assert not v.is_chest and v.reasons[0].startswith("DICOM view is LATERAL")


@pytest.mark.parametrize("age, birth, study, years", [
    ("045Y", None, None, 45.0), ("006Y", None, None, 6.0), ("018M", None, None, 1.5), ("026W", None, None, 26 / 52.1775),
    ("010D", None, None, 10 / 365.25), (None, "20100301", "20200301", 10.0), ("", "19400305", "20200101", 79.82),
    ("junk", None, None, None), (None, "2010", "20200301", None), (None, "20200301", "20100301", None),
])
def test_dicom_age(age, birth, study, years):
    got = dicom_age_years(age, birth, study)
    assert got == (None if years is None else pytest.approx(years, abs=0.01))


def test_a_child_gets_a_warning_not_a_refusal():
    v = judge(**evidence(facts={"patient_age": "007Y", "modality": "CR"}))
    assert v.is_chest and len(v.warnings) == 1
    assert v.warnings[0].startswith("DICOM patient age is 7 years: the model was not validated on children")
    assert age_warnings({"patient_age": "045Y"}) == [] and age_warnings({}) == []
    assert "months" in age_warnings({"patient_age": "010M"})[0]
    assert age_warnings({"age_years": "12"}) and not age_warnings({"age_years": "30"})
    assert age_warnings({"birth_date": "20150101", "study_date": "20200601"})


def test_rules_round_trip_through_the_card():
    r = GateRules(min_balance=0.3, lung_fraction_range=(0.1, 0.7))
    assert GateRules.from_card(r.as_dict()) == r
    assert GateRules.from_card(None) == GateRules() and GateRules.from_card({"unknown": 1}) == GateRules()


# ------------------------------------------------------------------ with the shipped model

def verdict(classifier, data: bytes, name: str) -> Verdict:
    return classifier.predict([read_film(data, name=name)])[0].ood


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_the_shipped_card_holds_the_gate_rules(classifier):
    assert classifier.ood is not None and "gate" in classifier.card.ood
    assert classifier.gate_rules == GateRules.from_card(classifier.card.ood["gate"])


def test_an_icu_film_with_lines_and_tubes_passes(classifier):
    v = verdict(classifier, ICU_FILM.read_bytes(), ICU_FILM.name)
    print("\nICU film:", v.details)
    assert v.is_chest, v.reasons
    assert v.fields is not None and v.fields.side_by_side


def test_a_page_of_text_is_refused(classifier):
    im = Image.new("RGB", (800, 1000), "white")
    d = ImageDraw.Draw(im)
    for y in range(60, 940, 28):
        d.line([(60, y), (740, y)], fill=(30, 30, 30), width=3)
    v = verdict(classifier, png(im), "page.png")
    assert not v.is_chest and v.details.startswith("feature distance")
    assert v.reasons[0] == "it does not look like a radiograph", v.reasons  # what it is, before "rotated"


def test_a_photo_is_refused(classifier):
    import sklearn.datasets
    from pathlib import Path

    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    gray = png(Image.open(photo).convert("L"))  # no colour to give it away
    assert not verdict(classifier, gray, "china-gray.png").is_chest
    v = verdict(classifier, photo.read_bytes(), "china.jpg")
    assert not v.is_chest and v.reasons[0] == "it is a colour image, not a radiograph"


def test_a_hip_dicom_is_refused_with_its_body_part_first(classifier):
    hip = shared_data("dicom", "other", "nema-wg04_RG2_JPLL_CR_hip.dcm")
    v = verdict(classifier, hip.read_bytes(), hip.name)
    assert not v.is_chest and v.reasons[0] == "DICOM body part is HIP, not chest"


def test_sample_films_pass(classifier):
    for p in sorted((REPO / "samples").glob("*/*.jpg")):
        v = verdict(classifier, p.read_bytes(), p.name)
        assert v.is_chest, (p.name, v.reasons, v.details)


def test_the_gate_reads_facts_from_the_film(classifier):
    """A DICOM age on the film reaches the verdict (the reader puts PatientAge in facts as `patient_age`)."""
    film = read_film(ICU_FILM)
    child = Film(film.pixels, film.width, film.height, film.format, film.name, {**film.facts, "patient_age": "009Y"})
    v = classifier.predict([child])[0].ood
    assert v.is_chest and v.warnings and "not validated on children" in v.warnings[0]


# ------------------------------------------------------------------ looks paediatric

def test_child_look_round_trips_and_refuses_a_tampered_file(tmp_path):
    from covidxr.card import CardError
    from covidxr.gate import ChildLook

    look = ChildLook(np.linspace(-1, 1, 16).astype(np.float32), 0.5, 0.8)
    name, sha = look.save(tmp_path)
    entry = {"file": name, "sha256": sha, "threshold": 0.8}
    back = ChildLook.load(tmp_path, entry)
    x = np.random.default_rng(0).normal(size=(5, 16))
    np.testing.assert_allclose(back.probability(x), look.probability(x), rtol=1e-6)
    with pytest.raises(CardError, match="sha256"):
        ChildLook.load(tmp_path, {**entry, "sha256": "0" * 64})
    with pytest.raises(CardError, match="missing"):
        ChildLook.load(tmp_path, {**entry, "file": "absent.npz"})


def test_looking_paediatric_warns_and_does_not_refuse():
    v = judge(**evidence(child=0.95, child_limit=0.8))
    assert v.is_chest and v.warnings == ["it looks like a child's film: the model was not validated on children "
                                         "(under 18); interpret the score with care"]
    assert "paediatric look 0.95 (limit 0.80)" in v.details
    assert judge(**evidence(child=0.2, child_limit=0.8)).warnings == []
    both = judge(**evidence(child=0.95, child_limit=0.8, facts={"patient_age": "004Y"}))
    assert len(both.warnings) == 1 and both.warnings[0].startswith("DICOM patient age is 4 years")  # one warning, the surer


def test_the_paediatric_sample_gets_the_warning_and_the_adult_samples_do_not(classifier):
    assert classifier.child_look is not None  # shipped, hashed in the card's ood.paediatric
    for p in sorted((REPO / "samples").glob("*/*.jpg")):
        v = verdict(classifier, p.read_bytes(), p.name)
        child = p.name == "person1000_virus_1681.jpg"  # Kermany, a child's film
        assert bool(v.warnings) == child and v.is_chest, (p.name, v.warnings, v.details)
        if child:
            assert "not validated on children" in v.warnings[0]
