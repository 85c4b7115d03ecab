"""How the app words a result, so that every page (and every export the app offers) says it the same way.
No Streamlit here.

Probabilities and the operating point are percentages ("COVID-19 pattern: 98% (operating point 14.9%)"),
never "p = 0.98", which a clinician reads as a p-value. `fmt_threshold` is the one way the operating point
is printed: pages, captions, the text summary and the annotated overlay all call it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

CLASS_TITLES = {"covid": "COVID-19", "normal": "no finding", "pneumonia": "other pneumonia"}
# Class names that mean "nothing abnormal": every other non-positive class of the card is an abnormal finding.
NORMAL_CLASSES = {"normal", "no_finding", "no finding", "nofinding", "healthy"}
OTHER_FINDING_AT = 0.5  # another abnormal class this likely turns a negative decision into "review"
OUTCOME_TITLES = {"FN": "false negative", "FP": "false positive", "TP": "true positive",
                  "TN": "true negative", "?": "no label", "X": "not a frontal chest radiograph"}
METRIC_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "accuracy": "Accuracy",
                 "ppv": "PPV", "npv": "NPV", "auc": "AUC", "ece": "Calibration error (ECE)"}
METRIC_HELP = {
    "sensitivity": "Of the films labelled COVID-19, the share the model called positive (true positive rate). "
                   "A screening aid needs it high: a miss is the costly error.",
    "specificity": "Of the films labelled not COVID-19, the share the model called negative (true negative rate). "
                   "Low specificity means many false alarms to review.",
    "accuracy": "The share of all labelled films the model called right. It depends on the mix of classes, "
                "so read it with sensitivity and specificity.",
    "ppv": "Positive predictive value: of the films the model called positive, the share labelled COVID-19. "
           "It falls when COVID-19 is rarer than in this set.",
    "npv": "Negative predictive value: of the films the model called negative, the share really not COVID-19. "
           "It rises when COVID-19 is rarer than in this set.",
    "auc": "Area under the ROC curve: the chance that a random COVID-19 film scores higher than a random "
           "other film (50% = guessing, 100% = perfect ranking). It does not depend on the operating point.",
    "ece": "Expected calibration error: how far the stated probabilities lie from the observed share of "
           "COVID-19 films, on average (0% = a stated 30% means 30% of such films are COVID-19).",
}
NOT_CHEST = "not a frontal chest radiograph"
DISCLAIMER = ("**Research screening aid, not a diagnosis.** Every result must be reviewed by a qualified "
              "clinician together with the patient's history and other findings.")
DISCLAIMER_PLAIN = DISCLAIMER.replace("**", "")
DECISION_CAPTION = ("decision: the model's call at the operating point, in the words of the CSV and JSON "
                    "exports: `{pos}` = {title} pattern at or above the operating point, `non-{pos}` = below it.")


def class_title(name: str) -> str:
    """A class name as a clinician reads it ("covid" -> "COVID-19"); unknown names as they are."""
    return CLASS_TITLES.get(name.lower(), name)


# ---------------------------------------------------------------- numbers

def _pct(x: float, digits: int) -> str:
    text = f"{100.0 * x:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def fmt_pct(p: float | None, threshold: float | None = None) -> str:
    """A probability as a whole percentage that never rounds a near-certainty to a false 100% or 0%;
    with one decimal near `threshold`, so that the side of the operating point it fell on can be read."""
    if p is None:
        return "—"
    if p > 0.995:
        return "> 99%"
    if p < 0.005:
        return "< 1%"
    if threshold is not None and abs(p - threshold) < 0.01:
        return f"{100.0 * p:.1f}%"
    return f"{100.0 * p:.0f}%"


def fmt_threshold(threshold: float) -> str:
    """The operating point, printed the same way everywhere: a percentage to at most one decimal ("14.9%")."""
    return _pct(threshold, 1)


def operating_point(threshold: float) -> str:
    return f"operating point {fmt_threshold(threshold)}"


def fmt_change(what: str, delta: float, digits: int = 3) -> str:
    """A change written as a change: "AUC 0.056 lower", "AUC 0.073 higher", "AUC unchanged"; never "AUC -0.056",
    which reads as a negative AUC."""
    size = f"{abs(delta):.{digits}f}"
    if float(size) == 0.0:
        return f"{what} unchanged"
    return f"{what} {size} {'higher' if delta > 0 else 'lower'}"


def fmt_rate(x: float | None) -> str:
    """A metric (a proportion, AUC, ECE) as a percentage to one decimal: 0.9 -> "90%", 0.9123 -> "91.2%"."""
    return "—" if x is None else _pct(x, 1)


def fmt_rate_ci(ci: Any) -> str:
    """[low, high] -> "81.2–95.1%"; "—" when there is no interval."""
    if not ci or ci[0] is None or ci[1] is None:
        return "—"
    return f"{_pct(ci[0], 1)[:-1]}–{_pct(ci[1], 1)}"


# ---------------------------------------------------------------- the decision

def verdict(probability: float, positive: bool, threshold: float, positive_class: str, by: str | None = None) -> str:
    """The decision said plainly with the score and the operating point behind it, and whose operating point it is
    (`by`: "shipped model", "site profile NAME, version V"; decided_by words it), e.g.
    "Positive for COVID-19 pattern: 98% (operating point 14.9%, shipped model)"."""
    name = class_title(positive_class)
    numbers = f"{fmt_pct(probability, threshold)} ({operating_point(threshold)}{f', {by}' if by else ''})"
    return f"Positive for {name} pattern: {numbers}" if positive else f"No {name} pattern: {numbers}"


SHIPPED_POINT = "shipped model"


def decided_by(name: str | None = None, version: str | None = None) -> str:
    """Whose operating point decided, as the banner names it: "shipped model" or "site profile NAME, version V"."""
    if not name:
        return SHIPPED_POINT
    return f"site profile {name}" + (f", version {version}" if version else "")


def score_meaning(positive_class: str, short: bool = False) -> str:
    """What a score is, said once wherever a score is shown (a caption or a tooltip); `short`: without the pointer
    to the PPV / NPV (a report, which does not carry them)."""
    name = class_title(positive_class)
    text = (f"The score is the model's {name} score, calibrated on the public sources it was built from: not the "
            f"chance that this patient has {name}.")
    return text if short else text + " How often a call is right at your site: the PPV / NPV."


def trial_verdict(probability: float, trial: float, decided_at: float, positive_class: str,
                  by: str | None = None) -> str | None:
    """The review dialog's words when the batch's threshold was moved away from the operating point that decided
    (a trial on the Batch page): the film's side of both, so that a 97% film below a trial 98% is never shown as a
    plain "No COVID-19 pattern" in green. None when the two agree on the film's side (then verdict() is right)."""
    at_trial, at_point = probability >= trial, probability >= decided_at
    if abs(trial - decided_at) < 1e-9 or at_trial == at_point:
        return None
    name, score = class_title(positive_class), fmt_pct(probability, trial)
    side = "at or above" if at_trial else "below"
    point = f"{operating_point(decided_at)}{f', {by}' if by else ''}"
    other = "positive for a" if at_point else "no"
    return (f"{name} score {score}: {side} the batch's trial threshold {fmt_threshold(trial)} (moved on the Batch "
            f"page), but {other} {name} pattern at the {point}. Read the score, not a colour.")


def trial_point(by: str, decided_at: float) -> str:
    """Whose threshold a verdict at the batch's moved threshold is at, for verdict()'s `by`: the trial's, with the
    operating point that decided beside it ("the batch's trial threshold; shipped model: 14.9%"), so that a trial
    50% is never called the shipped model's operating point."""
    return f"the batch's trial threshold; {by}: {fmt_threshold(decided_at)}"


def predictive_text(pv: Any, measured_on: str, setting_source: str) -> str:
    """"At a prevalence of 10% (this server's setting): a positive call is right 19% of the time (95% CI ...)" from
    a covidxr.intervals.PredictiveValues; `measured_on` where the operating point's rates come from."""
    return (f"At a prevalence of {fmt_rate(pv.prevalence)} ({setting_source}): a positive call is right "
            f"{fmt_rate(pv.ppv)} of the time (PPV, 95% CI {fmt_rate_ci(pv.ppv_ci)}), a negative call "
            f"{fmt_rate(pv.npv)} (NPV, {fmt_rate_ci(pv.npv_ci)}). From the operating point's sensitivity and "
            f"specificity on {measured_on}.")


def abnormal_classes(class_names: Iterable[str], positive_class: str) -> list[str]:
    """The card's classes that are a finding other than the positive class (not the normal class)."""
    return [c for c in class_names if c != positive_class and c.lower() not in NORMAL_CLASSES]


def other_finding(class_probabilities: Mapping[str, float], positive_class: str,
                  at: float = OTHER_FINDING_AT) -> tuple[str, float] | None:
    """(class, probability) of the most likely other abnormal class when it is at least `at`, else None."""
    others = [(c, float(p)) for c, p in class_probabilities.items()
              if c in abnormal_classes(class_probabilities, positive_class) and p >= at]
    return max(others, key=lambda cp: cp[1]) if others else None


def other_finding_sentence(class_probabilities: Mapping[str, float], positive_class: str) -> str | None:
    """"The model sees other pneumonia (98%): review." for a film whose other abnormal class is high."""
    found = other_finding(class_probabilities, positive_class)
    if found is None:
        return None
    return f"The model sees {class_title(found[0])} ({fmt_pct(found[1])}): review."


def tone(positive: bool, class_probabilities: Mapping[str, float], positive_class: str) -> str:
    """How a decision is coloured: "positive" (red), "review" (amber: negative but another finding is
    likely; never a green tick), "negative" (green)."""
    if positive:
        return "positive"
    return "review" if other_finding(class_probabilities, positive_class) else "negative"


def summary_line(name: str, probability: float, positive: bool, threshold: float, positive_class: str,
                 class_probabilities: Mapping[str, float], model: str, date: str,
                 warnings: Iterable[str] = (), by: str | None = None) -> str:
    """One line to paste into a report: film, decision (and whose operating point), other finding, the gate's
    warnings (a child's film), model and version, date, disclaimer."""
    parts = [name, verdict(probability, positive, threshold, positive_class, by)]
    if not positive and (other := other_finding_sentence(class_probabilities, positive_class)):
        parts.append(other.rstrip("."))
    parts += [f"warning: {w}" for w in warnings]
    parts += [f"model {model}", date, "research screening aid, not a diagnosis"]
    return " · ".join(parts)


def model_text(name: str, weights_sha256: str, version: str, site: str | None = None) -> str:
    """The model as a report names it: card name, weights sha256[:12], package version, and the site profile
    that decided, if any."""
    text = f"{name} (weights {weights_sha256[:12]}, covidxr {version})"
    return text if site is None else f"{text}, site profile {site}"


def report_lines(probability: float, positive: bool, threshold: float, positive_class: str,
                 class_probabilities: Mapping[str, float], model: str, date: str,
                 warnings: Iterable[str] = (), film: Iterable[str] = (), by: str | None = None) -> list[str]:
    """The text printed under a report image (images.report_image): the film's identifiers (`film`: "Film:
    chest.dcm", for DICOM "Accession: ..." and "Study date: ...", never the patient's name), the decision with
    score, operating point and whose it is, what the score is, the gate's warnings (a child's film), model and
    version, date, disclaimer. The app's download and the DICOM secondary capture print these."""
    other = None if positive else other_finding_sentence(class_probabilities, positive_class)
    return [*film, verdict(probability, positive, threshold, positive_class, by) + (f". {other}" if other else ""),
            *(f"Warning: {w}" for w in warnings), score_meaning(positive_class, short=True), f"Model: {model}", f"Date: {date}", DISCLAIMER_PLAIN]


def film_identifiers(name: str | None = None, accession: str | None = None, study_date: str | None = None) -> list[str]:
    """The lines that say which film a report is of: its file name, and for a DICOM result its accession number and
    study date (YYYYMMDD -> YYYY-MM-DD). Never the patient's name: a report leaves the app, and the study's own
    identifiers find the patient in the PACS."""
    lines = [f"Film: {name}"] if name else []
    if accession:
        lines.append(f"Accession number: {accession}")
    if study_date:
        d = str(study_date)
        lines.append(f"Study date: {d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else f"Study date: {d}")
    return lines


def review_explanation(outcome: str, label: str | None, positive_class: str) -> str | None:
    """Why a review tile's outcome is an error, in words: a false positive explains itself."""
    name, said = class_title(positive_class), class_title(label) if label else "none"
    if outcome == "FP":
        return f"The model called this {name} pattern; the label says {said}."
    if outcome == "FN":
        return f"The model called this no {name} pattern; the label says {said}."
    return None


# ---------------------------------------------------------------- the gate

_NUMBERS = re.compile(r"\s*\(([^()]*\d[^()]*)\)")


@dataclass
class Refusal:
    """Why a film is refused, most decisive reason first, in words; the numbers go on `details`."""
    headline: str                       # "Not a frontal chest radiograph: its DICOM body part is HIP, not chest."
    reasons: list[str]                  # the other reasons, in words
    details: str = ""                   # the numbers behind them
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        more = "".join(f"\n- {r}" for r in self.reasons)
        return self.headline + (f"\n\nAlso:{more}" if more else "")


def _split_numbers(reason: str) -> tuple[str, str]:
    """"unlike the chest films (distance 2.19, limit 1.87)" -> ("unlike the chest films", "distance 2.19, limit 1.87")."""
    found = _NUMBERS.findall(reason)
    return _NUMBERS.sub("", reason).strip(), "; ".join(found)


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def refusal(ood: Any, positive_class: str) -> Refusal | None:
    """The refusal of a film the gate judged not a frontal chest radiograph, or None when it passed
    (or no check ran). Reads `reasons` (most decisive first), `details` and `warnings` when present."""
    if ood is None or getattr(ood, "is_chest", True):
        return None
    words, numbers = [], []
    for r in getattr(ood, "reasons", None) or []:
        w, n = _split_numbers(str(r))
        words.append(w)
        if n:
            numbers.append(n)
    details = str(getattr(ood, "details", "") or "") or "; ".join(numbers)
    first = words[0] if words else "the model was not made for this kind of image"
    headline = (f"{NOT_CHEST[0].upper()}{NOT_CHEST[1:]}: {first.rstrip('.')}. No {class_title(positive_class)} score is given: "
                "the model was not made for this kind of image.")
    return Refusal(headline, [_sentence(w) for w in words[1:]], details, list(getattr(ood, "warnings", None) or []))


def not_chest_notice(ood: Any, positive_class: str) -> str | None:
    """The refusal as one text (headline, then the other reasons), or None for a film that passed."""
    r = refusal(ood, positive_class)
    return None if r is None else r.text()


def gate_warnings(ood: Any) -> list[str]:
    """The gate's warnings for a film it let through (e.g. "not validated on children")."""
    return [str(w) for w in (getattr(ood, "warnings", None) or [])] if ood is not None else []


def row_reasons(row: Any) -> str:
    """A batch row's refusal reasons in words ("; "-joined), whatever the core calls the field."""
    for name in ("reasons", "not_chest_reasons", "ood_reasons"):
        value = getattr(row, name, None)
        if value:
            return "; ".join(_split_numbers(str(v))[0] for v in ([value] if isinstance(value, str) else value))
    return ""


def row_warnings(row: Any) -> str:
    """A scored batch row's warnings ("; "-joined; e.g. a child's film); "" for a refused row, which has no score
    to read with care."""
    if is_refused(row):
        return ""
    return "; ".join(str(w) for w in (getattr(row, "warnings", None) or ()))


def is_refused(row: Any) -> bool:
    """A batch row the gate judged not a frontal chest radiograph (`chest_xray` False)."""
    return getattr(row, "chest_xray", True) is False
