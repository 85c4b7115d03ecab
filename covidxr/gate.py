"""The input gate: is this a frontal adult chest radiograph? One verdict, used everywhere.

`predict()` runs the gate on every film, and everything downstream reads its verdict: the Screen page,
`predict --json`, `evaluate` (rows, CSV, JSON, metrics) and the batch pages. A film the gate refuses
gets no score anywhere unless the caller asks for it explicitly (`include_non_chest`).

Evidence, most decisive first (the order in which a verdict's reasons are listed):

1. what the file says about itself: DICOM Modality, BodyPartExamined, ViewPosition (lateral views)
   and a colour image. Missing tags are unknown, not failures: many real chest files lack them.
2. what the image looks like as a whole: a logistic on the first network's pooled features (`KindLook`),
   fitted on real frontal films, real lateral films, real CT slices and generated non-radiographs
   (text pages, photos, noise), says "a CT slice", "a lateral film" or "not a radiograph at all".
3. the lungs' shape: a frontal film shows two lung fields, one either side of the spine, with the
   mediastinum between them. The lung segmenter's mask of a lateral view, a photo or a document does
   not (one merged field, or fields that are not side by side): "looks like a lateral view".
4. image statistics: the orientation net (covidxr.orientation) calls it turned or inverted; the lungs
   cover an implausible share of the image; the classifier's pooled features lie far from those of the
   training films (Mahalanobis distance, covidxr.ood). A film with two clear lung fields and an upright
   layout is refused on its features only beyond a higher, second limit: ICU films with lines, tubes
   and wires sit between the two.

Warnings do not refuse the film but must be shown with its score: a DICOM PatientAge under 18, or a
film that looks like a child's (a logistic on the first network's features, `ChildLook`): the model was
not validated on children. A refused film has no score, so it gets no warning either.

Every number the gate uses comes from the model card's `ood` section (threshold, `gate` rules), set
by measurement (scripts/ood_report.py; docs/gate.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.special import expit, softmax

from .card import CardError, check_sha256, sha256_file
from .films import Film, dicom_age_years

# --- evidence from the file ------------------------------------------------------------------------
RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG"}  # computed, digital, direct and film radiography
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
MODALITY_WORDS = {"CT": "CT", "MR": "MR (magnetic resonance)", "MG": "MG (mammography)", "US": "US (ultrasound)",
                  "NM": "NM (nuclear medicine)", "PT": "PT (PET)", "XA": "XA (angiography)", "OT": "OT (other)",
                  "SC": "SC (secondary capture)", "IO": "IO (intra-oral)", "PX": "PX (panoramic dental)"}
ADULT_AGE = 18.0
CHILD_FILE = "gate.npz"  # the "looks paediatric" logistic, named and hashed in the card's ood.paediatric
CHILD_WARNING = ("it looks like a child's film: the model was not validated on children (under 18); interpret the "
                 "score with care")

KIND_FILE = "kind.npz"  # the "what kind of image" logistic, named and hashed in the card's ood.kind
KINDS = ("frontal", "lateral", "ct", "other")  # KindLook's classes, in the order of its outputs
KIND_REASONS = {"other": "it does not look like a radiograph",
                "ct": "it looks like a CT slice, not a radiograph",
                "lateral": "it looks like a lateral chest film, not a frontal one"}

# How decisive each kind of reason is: lower ranks are listed first. What the image is (a CT slice, a page
# of text) comes before how it lies (turned) or what its lungs look like: a clinician says "not a radiograph"
# of a page of text, not "rotated".
RANK_DICOM, RANK_FILE, RANK_KIND, RANK_LATERAL, RANK_ORIENTATION, RANK_LUNGS, RANK_FEATURES = range(7)


@dataclass(frozen=True)
class GateRules:
    """The gate's thresholds beyond the feature distance's own (which is `OODDetector.threshold`). Their
    values come from the model card's `ood.gate` section; the defaults here are the shipped ones."""
    lung_fraction_range: tuple[float, float] = (0.08, 0.75)  # share of the film a frontal film's lungs plausibly cover
    min_field_share: float = 0.10    # a lung field: a connected region holding at least this share of the lung mask
    min_balance: float = 0.25        # the smaller of the two largest fields against the larger
    min_separation: float = 0.20     # horizontal distance of their centres, share of the image width
    min_overlap: float = 0.40        # rows they share, share of the shorter field's height
    distance_hard_limit: float = 2.25  # feature distance above which even a clear frontal anatomy is refused

    @classmethod
    def from_card(cls, entry: dict | None) -> "GateRules":
        entry = dict(entry or {})
        if "lung_fraction_range" in entry:
            entry["lung_fraction_range"] = tuple(entry["lung_fraction_range"])
        known = {k: v for k, v in entry.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class LungFields:
    """The shape of the segmenter's lung mask over the whole film: a frontal film shows two fields side
    by side (left and right lung) with the mediastinum between them."""
    n_fields: int = 0           # connected regions holding at least `min_field_share` of the lung mask
    balance: float = 0.0        # area of the second-largest field / the largest (0 with fewer than two)
    separation: float = 0.0     # horizontal distance of the two largest fields' centres / image width
    overlap: float = 0.0        # rows the two largest share / the shorter one's height
    side_by_side: bool = False  # the rules' verdict: two lung fields either side of a gap

    def words(self) -> str:
        if self.n_fields < 2:
            return f"{self.n_fields} lung field{'s' if self.n_fields != 1 else ''}"
        return (f"{self.n_fields} lung fields (size balance {self.balance:.2f}, centres {self.separation:.0%} "
                f"of the width apart, {self.overlap:.0%} of their height side by side)")


def valley(field_mask: np.ndarray, depth: float = 0.5) -> int | None:
    """The column where one field narrows to a waist between two humps (two lungs joined across the
    mediastinum): its column profile falls below `depth` of the lower hump between them. None when the
    field has one hump, as a lateral view's overlapping lungs do."""
    cols = field_mask.sum(0).astype(np.float64)
    xs = np.flatnonzero(cols)
    if len(xs) < 5:
        return None
    lo, hi = xs[0], xs[-1] + 1
    mid = np.arange(lo + (hi - lo) // 4, hi - (hi - lo) // 4)  # the waist lies in the middle half
    if len(mid) == 0:
        return None
    cut = int(mid[np.argmin(cols[mid])])
    left, right = cols[lo:cut].max(initial=0), cols[cut + 1:hi].max(initial=0)
    return cut if cols[cut] <= depth * min(left, right) else None


def lung_fields(lung_prob: np.ndarray, rules: GateRules = GateRules(), split: bool = False) -> LungFields:
    """The lung fields in a lung probability map (any size; the segmenter's is 64 x 64). A single field
    with a waist in the middle (`valley`) is parted there and judged as two."""
    mask = (np.asarray(lung_prob) > 0.5).astype(np.uint8)
    total = int(mask.sum())
    if total == 0:
        return LungFields()
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=4)
    comps = [(int(stats[i, cv2.CC_STAT_AREA]), i) for i in range(1, n)]
    comps = sorted((c for c in comps if c[0] >= rules.min_field_share * total), reverse=True)
    if len(comps) == 1 and not split:
        cut = valley(labels == comps[0][1])  # two lungs the mask joins across the mediastinum
        if cut is not None:
            parted = mask.copy()
            parted[:, cut] = 0
            found = lung_fields(parted, rules, split=True)
            if found.side_by_side:
                return found
    if len(comps) < 2:
        return LungFields(n_fields=len(comps))
    (a1, i1), (a2, i2) = comps[:2]
    width = mask.shape[1]
    sep = abs(float(centroids[i1][0] - centroids[i2][0])) / width
    top1, h1 = stats[i1, cv2.CC_STAT_TOP], stats[i1, cv2.CC_STAT_HEIGHT]
    top2, h2 = stats[i2, cv2.CC_STAT_TOP], stats[i2, cv2.CC_STAT_HEIGHT]
    shared = max(0, min(top1 + h1, top2 + h2) - max(top1, top2))
    overlap = shared / max(1, min(h1, h2))
    balance = a2 / a1
    ok = balance >= rules.min_balance and sep >= rules.min_separation and overlap >= rules.min_overlap
    return LungFields(n_fields=len(comps), balance=float(balance), separation=float(sep), overlap=float(overlap),
                      side_by_side=bool(ok))


@dataclass
class ChildLook:
    """P(a child's film) from the first network's pooled features: a logistic fitted on the one paediatric
    source (Kermany, ages 1-5) against adult sources (covidxr.training.gate), so partly a detector of that
    source. It adds a warning, never a refusal."""
    w: np.ndarray
    b: float
    threshold: float = 0.8

    def probability(self, features: np.ndarray) -> np.ndarray:
        return expit(np.atleast_2d(np.asarray(features, np.float64)) @ self.w.astype(np.float64) + self.b)

    def save(self, directory, name: str = CHILD_FILE) -> tuple[str, str]:
        from pathlib import Path

        path = Path(directory) / name
        np.savez(path, child_w=self.w.astype(np.float32), child_b=np.float64(self.b))
        return name, sha256_file(path)

    @classmethod
    def load(cls, directory, entry: dict) -> "ChildLook":
        """The logistic named in the card's ood.paediatric, refused when its sha256 differs from the card's."""
        z = checked_arrays(directory, entry, "the paediatric-look statistics")
        try:
            return cls(z["child_w"], float(z["child_b"]), float(entry["threshold"]))
        except (ValueError, KeyError) as e:
            raise CardError(f"the paediatric-look statistics {entry.get('file')} could not be read: {e}") from None


def checked_arrays(directory, entry: dict, what: str) -> dict[str, np.ndarray]:
    """The arrays of the .npz a card entry names ({file, sha256}), refused when missing, unreadable or when its
    sha256 differs from the card's."""
    from pathlib import Path

    path = check_sha256(Path(directory) / str(entry.get("file", "")), entry.get("sha256"), what)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise CardError(f"{what} {path} could not be read: {e}") from None


@dataclass
class KindLook:
    """P(frontal chest film, lateral chest film, CT slice, other image) from the first network's pooled
    features: a multinomial logistic (covidxr.training.gate) fitted on real frontal films (../shared/data/cxr),
    real lateral films and CT slices (../shared/data/nonchest) and generated non-radiographs. A film whose
    P(frontal) is below 1 - `threshold` is refused, with the most likely other kind as the reason."""
    w: np.ndarray        # (d, len(KINDS))
    b: np.ndarray        # (len(KINDS),)
    threshold: float = 0.5

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(np.atleast_2d(np.asarray(features, np.float64)) @ self.w.astype(np.float64)
                       + self.b.astype(np.float64), axis=1)

    def save(self, directory, name: str = KIND_FILE) -> tuple[str, str]:
        from pathlib import Path

        path = Path(directory) / name
        np.savez(path, kind_w=self.w.astype(np.float32), kind_b=self.b.astype(np.float64),
                 kinds=np.array(KINDS, dtype=str))
        return name, sha256_file(path)

    @classmethod
    def load(cls, directory, entry: dict) -> "KindLook":
        """The logistic named in the card's ood.kind, refused when its sha256 differs from the card's."""
        z = checked_arrays(directory, entry, "the image-kind statistics")
        try:
            if tuple(str(k) for k in z["kinds"]) != KINDS:
                raise CardError(f"the image-kind statistics {entry.get('file')} name kinds {list(z['kinds'])}, "
                                f"this code reads {list(KINDS)}")
            return cls(z["kind_w"], z["kind_b"], float(entry["threshold"]))
        except (ValueError, KeyError) as e:
            raise CardError(f"the image-kind statistics {entry.get('file')} could not be read: {e}") from None


# --- the verdict -------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The gate's verdict on one film. `reasons` say why it is not a frontal chest radiograph, most
    decisive first, in words for a clinician (empty when it is one); `details` holds the numbers behind
    them; `warnings` are shown with the score but do not withhold it."""
    is_chest: bool
    reasons: list[str] = field(default_factory=list)
    details: str = ""
    warnings: list[str] = field(default_factory=list)
    distance: float = float("nan")      # feature distance (about 1 for a typical training film)
    turned: float | None = None         # the orientation net's P(rotated or inverted); None without one
    lung_fraction: float | None = None  # share of the film the segmenter called lung
    fields: LungFields | None = None    # the lung mask's shape; None when no mask was given

    @property
    def chest_xray(self) -> bool:
        return self.is_chest

    def summary(self) -> str:
        """One line: the verdict and its reasons, e.g. for a table cell or a log."""
        if self.is_chest:
            return "frontal chest radiograph"
        return "not a frontal chest radiograph: " + "; ".join(self.reasons)

    def as_dict(self) -> dict:
        """The fields every export carries: chest_xray, reasons, details, warnings."""
        return {"chest_xray": bool(self.is_chest), "reasons": list(self.reasons), "details": self.details,
                "warnings": list(self.warnings)}


def ranked(reasons: list[tuple[int, str]]) -> list[str]:
    """Reasons in order of rank (stable within a rank)."""
    return [text for _, text in sorted(reasons, key=lambda r: r[0])]


def fact_reasons(facts: dict[str, str]) -> list[tuple[int, str]]:
    """(rank, reason) from what the file says about itself; absent or blank facts are unknown, not failures."""
    get = lambda k: str(facts.get(k) or "").strip().upper()  # noqa: E731
    reasons = []
    modality, body, view = get("modality"), get("body_part"), get("view")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        reasons.append((RANK_DICOM, f"DICOM modality is {MODALITY_WORDS.get(modality, modality)}, not a radiograph"))
    if body and not any(p in body for p in CHEST_BODY_PARTS):
        reasons.append((RANK_DICOM, f"DICOM body part is {body}, not chest"))
    if view in LATERAL_VIEWS:
        reasons.append((RANK_DICOM, f"DICOM view is {view}: a lateral film, not a frontal one"))
    if get("colour") == "YES":
        reasons.append((RANK_FILE, "it is a colour image, not a radiograph"))
    return reasons


def age_warnings(facts: dict[str, str]) -> list[str]:
    """A warning when the file says the patient is a child."""
    age = facts.get("age_years")
    try:
        age = float(age) if age not in (None, "") else dicom_age_years(facts.get("patient_age"), facts.get("birth_date"),
                                                                          facts.get("study_date"))
    except (TypeError, ValueError):
        age = None
    if age is not None and age < ADULT_AGE:
        shown = f"{age:.0f} years" if age >= 2 else f"{age * 12:.0f} months"
        return [f"DICOM patient age is {shown}: the model was not validated on children (under {ADULT_AGE:.0f}); "
                "interpret the score with care"]
    return []


def kind_reason(kind: np.ndarray | None, limit: float) -> list[tuple[int, str]]:
    """(rank, reason) when KindLook's probabilities (in KINDS order) say the film is not a frontal one."""
    if kind is None or 1.0 - float(kind[0]) <= limit:
        return []
    other = KINDS[1 + int(np.argmax(kind[1:]))]
    return [(RANK_KIND, KIND_REASONS[other])]


def judge(*, distance: float, limit: float, turned: float | None, turned_limit: float, lung_fraction: float,
          lung_prob: np.ndarray | None, facts: dict[str, str], rules: GateRules = GateRules(),
          child: float | None = None, child_limit: float = 0.8, kind: np.ndarray | None = None,
          kind_limit: float = 0.5) -> Verdict:
    """The verdict from every piece of evidence (see the module docstring for the order). `kind`: KindLook's
    probabilities for the film (KINDS order), refused as another kind above `kind_limit`."""
    reasons = fact_reasons(facts) + kind_reason(kind, kind_limit)
    fields = lung_fields(lung_prob, rules) if lung_prob is not None else None
    lo, hi = rules.lung_fraction_range
    has_lungs = lung_fraction > 0
    upright = turned is None or turned <= turned_limit
    if not upright:
        reasons.append((RANK_ORIENTATION, "it looks rotated or inverted (a frontal chest film is read upright, "
                                          "not turned or in negative)"))
    if not has_lungs:
        reasons.append((RANK_LUNGS, "no lungs were found in it"))
    elif not lo <= lung_fraction <= hi:
        reasons.append((RANK_LUNGS, "the lungs found are too " + ("small" if lung_fraction < lo else "large")
                        + " a share of the image for a chest film"))
    elif fields is not None and not fields.side_by_side and upright:
        reasons.append((RANK_LATERAL, "it looks like a lateral view: the lungs do not show as two fields "
                                      "either side of the spine"))
    frontal_anatomy = fields is not None and fields.side_by_side and upright and has_lungs
    hard = rules.distance_hard_limit if frontal_anatomy else limit
    if not distance <= max(limit, hard):
        reasons.append((RANK_FEATURES, "its image features are unlike the chest radiographs the model was trained on"))
    details = [f"feature distance {distance:.2f} (limit {limit:.2f}"
               + (f", {rules.distance_hard_limit:.2f} with two clear lung fields)" if fields is not None else ")"),
               f"lung share {lung_fraction:.0%} (plausible {lo:.0%}-{hi:.0%})"]
    if fields is not None:
        details.append(fields.words())
    if turned is not None:
        details.append(f"turned probability {turned:.2f} (limit {turned_limit:.2f})")
    if kind is not None:
        details.append("looks " + ", ".join(f"{k} {p:.2f}" for k, p in zip(KINDS, kind))
                       + f" (refused when not frontal above {kind_limit:.2f})")
    warnings = age_warnings(facts)
    if child is not None:
        details.append(f"paediatric look {child:.2f} (limit {child_limit:.2f})")
        if child > child_limit and not warnings:
            warnings.append(CHILD_WARNING)
    if reasons:
        warnings = []  # a refused film has no score: nothing to interpret with care
    return Verdict(is_chest=not reasons, reasons=ranked(reasons), details="; ".join(details),
                   warnings=warnings, distance=float(distance), turned=turned,
                   lung_fraction=float(lung_fraction), fields=fields)


def check(detector, rules: GateRules, features_1d: np.ndarray, lung_fraction: float, film: Film,
          overview: np.ndarray | None = None, lung_prob: np.ndarray | None = None,
          child_look: ChildLook | None = None, kind_look: KindLook | None = None) -> Verdict:
    """The verdict on a film from its first network's pooled features, its lung fraction and lung map,
    with the feature statistics and orientation net of `detector` (covidxr.ood.OODDetector)."""
    dist = float(detector.distance(features_1d)[0])
    turned = detector.turned_probability(film, overview)
    limit = detector.threshold if math.isfinite(detector.threshold) else float("inf")
    child = None if child_look is None else float(child_look.probability(features_1d)[0])
    kind = None if kind_look is None else kind_look.probabilities(features_1d)[0]
    return judge(distance=dist, limit=limit, turned=turned, turned_limit=detector.orient_threshold,
                 lung_fraction=lung_fraction, lung_prob=lung_prob, facts=film.facts, rules=rules, child=child,
                 child_limit=child_look.threshold if child_look else 0.8, kind=kind,
                 kind_limit=kind_look.threshold if kind_look else 0.5)


def rule_text(detector, rules: GateRules, kind_look: KindLook | None = None) -> str:
    """The whole gate in words, for the model card."""
    lo, hi = rules.lung_fraction_range
    kind = ("" if kind_look is None else
            "; (1b) a logistic on the first network's pooled features (ood.kind) gives the film a probability of "
            f"being a frontal film below {1 - kind_look.threshold:.2f}: then it is called, by the likeliest other "
            "kind, a CT slice, a lateral chest film or not a radiograph")
    return ("A film is refused as not a frontal chest radiograph when any of these holds, listed in this order: "
            "(1) its DICOM tags name another modality than CR/DX/DR/RG, another body part than chest, or a lateral "
            "view (ViewPosition LL/RL/LAT...), or it is a colour image" + kind + "; (2) it looks like a lateral view: the lung "
            "segmenter's mask does not show two lung fields side by side (two connected regions each holding at "
            f"least {rules.min_field_share:.0%} of the lung mask, the smaller at least {rules.min_balance:.0%} of "
            f"the larger, centres at least {rules.min_separation:.0%} of the width apart, sharing at least "
            f"{rules.min_overlap:.0%} of the shorter one's rows); (3) the orientation net calls it turned or "
            f"inverted; no lungs are found, or they cover outside {lo:.0%}-{hi:.0%} of the film; or its image "
            f"features are far from the training films' (Mahalanobis distance above {detector.threshold:.2f}, or "
            f"above {rules.distance_hard_limit:.2f} for a film with two clear lung fields, upright). Features: "
            + detector.rule + ". A DICOM PatientAge under 18, or a film that looks like a child's (ood.paediatric), adds a "
            "warning, not a refusal, and only on a film that is not refused")
