"""What the pages say about a site profile: the "in use" line (name and version), the rows of the shipped-against-
adapted table, the ROC points, and the advice beside them. Pure functions of a covidxr.site.SiteProfile; no Streamlit.
"""
from __future__ import annotations

from typing import Any

from covidxr import profiles
from covidxr.site import ROUGH_PER_CLASS, SiteProfile

from webapp.services.sites import SHIPPED
from webapp.views.tables import RATES, estimate_cells
from webapp.views.wording import class_title, decided_by, fmt_threshold

def in_use_line(profile: SiteProfile | None) -> str:
    """"Shipped model" or "Site profile: NAME, version V, fitted on N films, DATE"."""
    if profile is None:
        return SHIPPED
    return (f"Site profile: {profile.name}, version {profiles.version_of(profile)}, fitted on {profile.n_films} "
            f"films, {profile.created[:10]}")


def decider(profile: SiteProfile | None) -> str:
    """Whose operating point decides, as the decision banner names it: "shipped model" or "site profile NAME,
    version V"."""
    return decided_by() if profile is None else decided_by(profile.name, profiles.version_of(profile))


def method_title(method: str) -> str:
    if method == "temperature":
        return "temperature (the site's own temperature and threshold)"
    return f"head (a regularised layer on the frozen features, L2 {method.rsplit('_', 1)[-1]})"


def films_text(profile: SiteProfile, positive_class: str) -> str:
    """"16 films: 8 COVID-19, 8 other"."""
    pos = profile.films.get(positive_class, 0)
    return f"{profile.n_films} films: {pos} {class_title(positive_class)}, {profile.n_films - pos} other"


ADAPTED = "Adapted to your films"  # plain words: the method is engineering detail (issue 25)


def figure_rows(profile: SiteProfile) -> list[dict[str, str]]:
    """Shipped against adapted on the site's films, both cross-validated, each "value (95% CI)"."""
    f = profile.figures or {}
    rows = []
    for what, title in (("shipped", SHIPPED), ("adapted", ADAPTED)):
        r = f.get(what) or {}
        rows.append({"scored by": title,
                     "operating point": fmt_threshold(r["threshold"]) if r.get("threshold") is not None else "—",
                     **estimate_cells(r)})
    return rows


def roc_rows(profile: SiteProfile) -> list[dict[str, Any]]:
    """The cross-validated ROC points of both rows, for one chart: {model, fpr, tpr, i}."""
    out = []
    for what, title in (("shipped", SHIPPED), ("adapted", "Adapted (cross-validated)")):
        points = profile.roc.get(what)
        if points is None or len(points) != 2:
            continue
        out += [{"model": title, "fpr": float(x), "tpr": float(y), "i": i} for i, (x, y) in enumerate(zip(*points))]
    return out


def _ci(r: dict, k: str) -> tuple[float, float] | None:
    ci = (r.get("ci") or {}).get(k)
    return None if not ci or ci[0] is None or ci[1] is None else (float(ci[0]), float(ci[1]))


def clearly_better(profile: SiteProfile) -> tuple[list[str], list[str]]:
    """(metrics whose adapted 95% CI lies wholly above the shipped one's, those wholly below)."""
    f = profile.figures or {}
    shipped, adapted = f.get("shipped") or {}, f.get("adapted") or {}
    better, worse = [], []
    for k in RATES:
        a, s = _ci(adapted, k), _ci(shipped, k)
        if a and s:
            if a[0] > s[1]:
                better.append(k)
            elif a[1] < s[0]:
                worse.append(k)
    return better, worse


def advice(profile: SiteProfile) -> tuple[str, str]:
    """("info" | "warning", text): use the adapted row only when it is clearly better (docs/site-profiles.md)."""
    better, worse = clearly_better(profile)
    names = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity"}
    tail = ("If neither row is good enough for your purpose, do not use covidxr on these films. Re-fit when the "
            "equipment, the protocol or the population changes.")
    if better and not worse:
        return "info", (f"The adapted row is clearly better on your films: its 95% CI for "
                        f"{' and '.join(names[k] for k in better)} lies above the shipped model's. The way of "
                        "adapting was chosen on these same films, so the adapted row is slightly optimistic; check it on a fresh "
                        "labelled batch scored with the profile. " + tail)
    why = (f"it is clearly worse on {' and '.join(names[k] for k in worse)}" if worse
           else "the 95% CIs overlap")
    return "warning", (f"The adapted row is not clearly better than the shipped one on your films ({why}): keep "
                       "the shipped model. The shipped row is the honest estimate of how covidxr does on your "
                       "films. Use a profile only when its row is clearly better, with enough films that its CI "
                       "does not overlap the shipped one's. " + tail)


def rough_text(profile: SiteProfile) -> str | None:
    if not profile.rough:
        return None
    return (f"Fewer than {ROUGH_PER_CLASS} films of a class: these figures are a rough estimate, with wide "
            "intervals. More films give a steadier profile.")
