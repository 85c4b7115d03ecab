"""Choosing a fitted site profile's operating point, then adopting it (issue 25): the sensitivity the site
aims at, what it costs on its own films (the specificity to expect with its 95% CI, and "of 100 films
without COVID-19, about N flagged"), and the refusal of a profile clearly worse than the shipped model
unless an override with its reason is recorded.

Plain words on the clinician's screen; the engineering terms (how the profile was fitted and checked) go
into an expander labelled as such. `choose()` and `adopt_controls()` draw the Streamlit part; the rest is
pure and tested on its own.
"""
from __future__ import annotations

from typing import Any

from covidxr.site import FLOOR_FILMS, SiteProfile
from webapp.views import icons

ENGINEERING = "Engineering detail: how the profile was fitted and checked"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def _ci(ci: list | None) -> str:
    return "" if not ci else f" (95% CI {_pct(ci[0])}–{_pct(ci[1])})"


def target_label(target: float) -> str:
    return f"{100 * target:g}%"


def per_100(op: dict, shipped: dict | None = None) -> str:
    """"Of 100 films without COVID-19, about N are flagged (95% CI a–b); the shipped model flags about M."""
    n, ci = op.get("flagged_per_100"), op.get("flagged_per_100_ci")
    if n is None:
        return "No films without COVID-19 were available to say how many would be flagged."
    text = f"Of 100 films without COVID-19, about {n} are flagged" + (f" (95% CI {ci[0]}–{ci[1]})" if ci else "")
    if shipped and shipped.get("flagged_per_100") is not None:
        text += f"; the shipped model flags about {shipped['flagged_per_100']}"
    return text + "."


def target_rows(profile: SiteProfile) -> list[dict[str, Any]]:
    """One row per sensitivity the profile can aim at: what to expect on the site's next films."""
    rows = []
    for op in profile.operating_points:
        rows.append({"sensitivity aimed at": target_label(op["target"]),
                     "expected sensitivity": _pct(op["sensitivity"]) + _ci(op["ci"].get("sensitivity")),
                     "expected specificity": _pct(op["specificity"]) + _ci(op["ci"].get("specificity")),
                     "flagged of 100 without COVID-19": "—" if op["flagged_per_100"] is None else
                     f"about {op['flagged_per_100']}",
                     "offered": "yes" if op["offered"] else "no: worse than the shipped model"})
    return rows


def expectation(profile: SiteProfile) -> str:
    """The chosen point in words: sensitivity and specificity to expect on the site's next films."""
    a, s = profile.figures.get("adapted", {}), profile.figures.get("shipped", {})
    ci = a.get("ci", {})
    return (f"Aiming at {target_label(profile.target)} sensitivity: on your next films expect sensitivity "
            f"{_pct(a.get('sensitivity'))}{_ci(ci.get('sensitivity'))} and specificity "
            f"{_pct(a.get('specificity'))}{_ci(ci.get('specificity'))}. The shipped model on the same films: "
            f"sensitivity {_pct(s.get('sensitivity'))}, specificity {_pct(s.get('specificity'))}. "
            + per_100(a, s))


def floor_note(profile: SiteProfile) -> str | None:
    """Why every sensitivity gives the same decisions, when it does: the "floor" rule keeps the shipped operating
    point below FLOOR_FILMS films of a class (measured: steadier on few films; docs/site-profiles.md)."""
    if profile.rule != "floor" or not profile.films or min(profile.films.values()) >= FLOOR_FILMS:
        return None
    return (f"With fewer than {FLOOR_FILMS} films of a class, the profile keeps the shipped model's operating point "
            "and adapts only how it ranks your films, so every sensitivity below gives the same decisions: on so "
            "few films a threshold of their own moves a lot from one set of films to the next. From "
            f"{FLOOR_FILMS} films of each class, the threshold is read at the sensitivity you aim at.")


def refusal(profile: SiteProfile) -> str | None:
    """Why this choice is not offered for adoption (None: it is)."""
    if profile.offered:
        return None
    return (f"Not offered for adoption: on your films it does clearly worse than the shipped model ({profile.offered_why}). "
            "Keep the shipped model, choose another sensitivity, or record why you adopt it anyway.")


def choose(profile: SiteProfile, key: str) -> SiteProfile:
    """The sensitivity chooser (Streamlit): returns the profile at the chosen target."""
    import streamlit as st

    targets = [op["target"] for op in profile.operating_points]
    if not targets:  # a profile fitted before targets existed
        return profile
    chosen = st.select_slider("Sensitivity to aim at (the share of COVID-19 films to flag)", options=targets,
                              value=profile.target if profile.target in targets else targets[-1],
                              format_func=target_label, key=key)
    at = profile.at_target(chosen)
    if note := floor_note(profile):
        st.info(note, icon=icons.INFO)
    st.markdown(expectation(at))
    st.dataframe(target_rows(profile), hide_index=True)
    return at


def adopt_controls(profile: SiteProfile, key: str, by: str = "") -> tuple[SiteProfile, bool]:
    """(profile, allowed): a refused profile gets its reason, an explicit override box and the reason for it;
    only both together allow adopting it, and the override (reason, time, `by`) is recorded in the profile
    returned, so that it is part of the version (covidxr.profiles.version_of) and of the audit record."""
    import streamlit as st

    why = refusal(profile)
    if why is None:
        return profile, True
    st.error(why, icon=icons.ERROR)
    if not st.checkbox("Adopt it anyway, against this advice (the override and its reason are recorded)",
                       key=f"{key}_box"):
        return profile, False
    reason = st.text_input("The reason for adopting it anyway (recorded with the profile and in the audit trail: "
                           "a clinical reason, no patient details)",
                           key=key, max_chars=300)
    if not reason.strip():
        st.caption("Give the reason to adopt it.")
        return profile, False
    return profile.with_override(reason, by=by), True


def engineering(profile: SiteProfile) -> None:
    """The expander with the engineering terms: method, rule, folds, threshold."""
    import streamlit as st

    f = profile.figures or {}
    with st.expander(ENGINEERING):
        st.text(f"method kept: {profile.method} (candidates' cross-validated AUC: {f.get('candidates_auc')})\n"
                f"operating-point rule: {profile.rule}, threshold {profile.threshold:.4f} on the profile's probability\n"
                f"nested cross-validation: {f.get('folds', '?')} folds by {f.get('folds_by', 'film')}; "
                "each fold's profile and threshold fitted without its films (threshold on inner out-of-fold scores)\n"
                f"site temperature {profile.temperature:.3f}\n{f.get('note', '')}")
