"""PPV and NPV at a prevalence, with intervals from the operating point's sensitivity and specificity
(covidxr.intervals): known values, monotonicity, the interval's method."""
import math

import pytest

from covidxr.intervals import npv, ppv, predictive_values


def test_known_values():
    # sens 0.9, spec 0.8, prevalence 0.1: PPV = 0.09 / (0.09 + 0.18) = 1/3; NPV = 0.72 / (0.72 + 0.01) = 72/73
    assert ppv(0.9, 0.8, 0.1) == pytest.approx(1 / 3)
    assert npv(0.9, 0.8, 0.1) == pytest.approx(72 / 73)
    # a perfect test is always right; at prevalence 0.5 with sens = spec, PPV = NPV = sens
    assert ppv(1.0, 1.0, 0.01) == 1.0 and npv(1.0, 1.0, 0.01) == 1.0
    assert ppv(0.85, 0.85, 0.5) == pytest.approx(0.85) and npv(0.85, 0.85, 0.5) == pytest.approx(0.85)


def test_ppv_falls_with_prevalence_npv_rises():
    """The point of the figure: the same model's positive calls are right far less often where the disease is rare."""
    ppvs = [ppv(0.97, 0.955, p) for p in (0.01, 0.05, 0.1, 0.3, 0.5)]
    npvs = [npv(0.97, 0.955, p) for p in (0.01, 0.05, 0.1, 0.3, 0.5)]
    assert ppvs == sorted(ppvs) and npvs == sorted(npvs, reverse=True)
    assert ppvs[0] < 0.2 < 0.95 < ppvs[-1]


def test_interval_from_the_rates_interval_ends():
    pv = predictive_values(0.9, 0.8, 0.1, (0.85, 0.94), (0.75, 0.84))
    assert pv.ppv == pytest.approx(1 / 3)
    assert pv.ppv_ci == pytest.approx((ppv(0.85, 0.75, 0.1), ppv(0.94, 0.84, 0.1)))
    assert pv.npv_ci == pytest.approx((npv(0.85, 0.75, 0.1), npv(0.94, 0.84, 0.1)))
    assert pv.ppv_ci[0] < pv.ppv < pv.ppv_ci[1] and pv.npv_ci[0] < pv.npv < pv.npv_ci[1]


@pytest.mark.parametrize("prevalence", [0.001, 0.05, 0.3, 0.9])
def test_interval_holds_every_pair_of_rates_inside_theirs(prevalence):
    """Monotone in both rates: any sensitivity and specificity inside their intervals give a PPV and NPV inside."""
    s_ci, c_ci = (0.80, 0.95), (0.60, 0.90)
    pv = predictive_values(0.9, 0.75, prevalence, s_ci, c_ci)
    for i in range(11):
        for j in range(11):
            s, c = s_ci[0] + i * (s_ci[1] - s_ci[0]) / 10, c_ci[0] + j * (c_ci[1] - c_ci[0]) / 10
            assert pv.ppv_ci[0] - 1e-12 <= ppv(s, c, prevalence) <= pv.ppv_ci[1] + 1e-12
            assert pv.npv_ci[0] - 1e-12 <= npv(s, c, prevalence) <= pv.npv_ci[1] + 1e-12


def test_bad_input():
    with pytest.raises(ValueError):
        ppv(1.2, 0.8, 0.1)
    with pytest.raises(ValueError):
        npv(0.9, 0.8, -0.1)
    with pytest.raises(ValueError):
        predictive_values(0.9, 0.8, 0.1, (0.95, 0.85), (0.7, 0.9))
    assert math.isnan(ppv(0.0, 1.0, 0.1))  # no positive calls at all: no PPV


def test_operating_rates_of_the_shipped_model_come_from_the_card():
    from covidxr.card import ModelCard
    from covidxr.predictive import operating_rates

    card = ModelCard.load("weights")
    r = operating_rates(card)
    v = card.metrics["validation"]
    assert r.sensitivity == v["sensitivity"] and tuple(r.specificity_ci) == tuple(v["ci"]["specificity"])
    pv = r.at(0.1)
    assert pv.ppv < v["ppv"]  # the card's PPV is at the validation set's ~48% prevalence: at 10% it is lower


def test_operating_rates_of_a_profile_are_its_own():
    from types import SimpleNamespace

    from covidxr.predictive import operating_rates

    prof = SimpleNamespace(figures={"adapted": {"sensitivity": 0.8, "specificity": 0.7,
                                                "ci": {"sensitivity": [0.7, 0.9], "specificity": [0.6, 0.8]}}})
    r = operating_rates(None, prof)
    assert (r.sensitivity, r.specificity_ci) == (0.8, (0.6, 0.8)) and "site" in r.measured_on
    assert operating_rates(None, SimpleNamespace(figures={})) is None  # an old profile without them: none shown


@pytest.mark.parametrize("text, value", [("0.1", 0.1), ("10%", 0.1), (" 2.5% ", 0.025), (0.3, 0.3)])
def test_parse_prevalence(text, value):
    from covidxr.predictive import parse_prevalence

    assert parse_prevalence(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "1", "100%", "-0.1", "ten", ""])
def test_parse_prevalence_refuses(text):
    from covidxr.predictive import parse_prevalence

    with pytest.raises(ValueError):
        parse_prevalence(text)
