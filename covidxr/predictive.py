"""What a result's predictive values are computed from: the sensitivity and specificity (with their 95% CIs) of the
operating point that decided, and the prevalence a site sets. covidxr.intervals does the arithmetic.

Why not the score itself: a score is calibrated on the sources the model was built from (about half of their films
are COVID-19), so it is not the chance that a patient at another hospital has COVID-19. What a clinician can use is
how often a positive (or negative) call is right at their own prevalence: the PPV and NPV.

Which rates: a site profile's own figures on the site's films (cross-validated, at its operating point); for the
shipped model the model card's validation figures at its operating point, measured on held-out films of the
training sources, which overstate how it does at a new hospital (the card's leave-one-source-out rows): the text
says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .intervals import PredictiveValues, predictive_values

DEFAULT_PREVALENCE = 0.10  # README "Configuration": a modest share, far below the validation films' ~48%


@dataclass(frozen=True)
class OperatingRates:
    """Sensitivity and specificity of an operating point with their 95% CIs, and where they were measured."""
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    measured_on: str  # "validation films of the training sources" / "the site's own films (cross-validated)"

    def at(self, prevalence: float) -> PredictiveValues:
        return predictive_values(self.sensitivity, self.specificity, prevalence,
                                 self.sensitivity_ci, self.specificity_ci)


def _rates(figures: dict[str, Any], measured_on: str) -> OperatingRates | None:
    ci = figures.get("ci") or {}
    try:
        s, c = float(figures["sensitivity"]), float(figures["specificity"])
        s_ci = (float(ci["sensitivity"][0]), float(ci["sensitivity"][1]))
        c_ci = (float(ci["specificity"][0]), float(ci["specificity"][1]))
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    return OperatingRates(s, s_ci, c, c_ci, measured_on)


def operating_rates(card, profile=None) -> OperatingRates | None:
    """The rates of the operating point in use: `profile`'s (a covidxr.site.SiteProfile) on the site's films, or
    the shipped model's on the card's validation films; None when the card or profile does not carry them."""
    if profile is not None:
        return _rates((profile.figures or {}).get("adapted") or {}, "the site's own films (cross-validated)")
    return _rates((card.metrics or {}).get("validation") or {},
                  "held-out films of the sources the model was trained on (a new hospital's may be lower)")


def parse_prevalence(value: Any) -> float:
    """A prevalence setting as a proportion in (0, 1): "0.1", 0.1, "10%" all give 0.1; ValueError otherwise."""
    text = str(value).strip()
    try:
        p = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"prevalence {text!r} is not a number (write 0.1 or 10%)") from None
    if not 0.0 < p < 1.0:
        raise ValueError(f"prevalence {text!r} must lie strictly between 0 and 1 (0% and 100%)")
    return p
