"""How the app words a result, so that every page says it the same way. No Streamlit here."""
from __future__ import annotations

from typing import Any

CLASS_TITLES = {"covid": "COVID-19", "normal": "no finding", "pneumonia": "other pneumonia"}
OUTCOME_TITLES = {"FN": "false negative", "FP": "false positive", "TP": "true positive",
                  "TN": "true negative", "?": "no label"}
METRIC_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "accuracy": "Accuracy",
                 "ppv": "PPV", "npv": "NPV", "auc": "AUC", "ece": "Calibration error (ECE)"}
DISCLAIMER = ("**Research screening aid, not a diagnosis.** Every result must be reviewed by a qualified "
              "clinician together with the patient's history and other findings.")


def class_title(name: str) -> str:
    """A class name as a clinician reads it ("covid" -> "COVID-19"); unknown names as they are."""
    return CLASS_TITLES.get(name.lower(), name)


def fmt_p(p: float) -> str:
    """A probability to two decimals that never rounds a near-certainty to a false 1.00 or 0.00."""
    if p > 0.995:
        return "> 0.99"
    if p < 0.005:
        return "< 0.01"
    return f"= {p:.2f}"


def verdict(probability: float, positive: bool, threshold: float, positive_class: str) -> str:
    """The decision said plainly, with the number and the operating point behind it."""
    name = class_title(positive_class)
    numbers = f"(p {fmt_p(probability)}, threshold {threshold:.2f})"
    return f"Positive for {name} pattern {numbers}" if positive else f"No {name} pattern detected {numbers}"


def not_chest_notice(ood: Any, positive_class: str) -> str | None:
    """Why a film's score is withheld, or None when the film looks like a frontal chest radiograph.

    `ood` is the prediction's out-of-distribution verdict (is_chest, reasons) or None when no check ran."""
    if ood is None or getattr(ood, "is_chest", True):
        return None
    reasons = getattr(ood, "reasons", None) or []
    why = f" ({'; '.join(map(str, reasons))})" if reasons else ""
    return (f"This does not look like a frontal chest radiograph{why}. The {class_title(positive_class)} score is "
            "withheld: the model was not made for this kind of image.")
