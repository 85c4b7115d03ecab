"""The Site profiles page's parts (site admins only): fit a profile from the session's last batch, look at it
beside the shipped model and choose its sensitivity, and only then adopt it; and the versions of every profile
on the server with adopt / retire.

Fit, look, adopt (issue 25): a fitted profile is kept in this session only (SITE_FITTED); nothing is written to
the server's profile folder, so no other user sees it, until a site admin presses Adopt. Adopting saves it as
an immutable version (covidxr.profiles) at the sensitivity chosen, with the override if one was needed. A
profile clearly worse than the shipped model is not offered without an explicit override and its reason.

Every action checks the role again (webapp.views.access.require_admin: refused and recorded as denied without
it) and is recorded (site-fit, site-adopt, site-retire) with the profile's name and version. An adoption is
recorded before the profile is written: when the audit trail cannot be written nothing is adopted (fail closed).
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from covidxr import profiles
from covidxr.site import MIN_PER_CLASS, ROUGH_PER_CLASS, SiteError, SiteProfile

from webapp.views import access, site_choice, site_view
from webapp.services import audit_log, auth, sites
from webapp.session import state
from webapp.views.charts import roc_chart
from webapp.views.literal import literal, without_paths
from webapp.views import icons

FIT_LABEL = "Fit a site profile (nothing is saved yet)"
ADOPT_LABEL = "Adopt this profile for every user of the server"
# Widget keys of the look-and-adopt step that belong to one fitted profile: dropped when another is fitted.
_STEP_KEYS = (state.SITE_TARGET, state.SITE_OVERRIDE, f"{state.SITE_OVERRIDE}_box", state.SITE_SAVED)


def fit_form(clf: Any, batch: Any) -> None:
    """Name and the Fit button for the session's last batch. Fitting keeps the profile in this session only."""
    st.caption(f"A site profile adapts the model to your own labelled films: at least {MIN_PER_CLASS} of each "
               f"class; below {ROUGH_PER_CLASS} of a class its figures are rough. It is fitted with the shipped "
               "model, and its figures are checked on your films beside the shipped model's. Fitting saves "
               "nothing: you look at the profile first, choose the sensitivity it aims at, and only adopting it "
               "saves it, as a new version under its name, for every user of the server. The films are re-read "
               "in memory; only the adopted profile is written, with no film names.")
    blocker = "No batch yet: run one on the Batch evaluation page first." if batch is None else sites.fit_blocker(batch)
    name = st.text_input("Profile name (also its folder on the server)", key=state.SITE_NAME,
                         max_chars=sites.MAX_NAME, disabled=blocker is not None,
                         placeholder="e.g. St Mary radiology 2024")
    folder, problem = None, None
    if blocker is None and name.strip():
        try:
            folder = sites.check_name(name)
        except ValueError as e:
            problem = f"This name cannot be used: {literal(e)}."
    if blocker:
        st.info(blocker, icon=icons.INFO)
    elif problem:
        st.error(problem, icon=icons.ERROR)
    if st.button(FIT_LABEL, key=state.SITE_FIT, disabled=blocker is not None or folder is None):
        fit(clf, batch, folder)


def fit(clf: Any, batch: Any, folder: str) -> None:
    """Fit a profile on the batch's films and keep it in this session (SITE_FITTED): nothing is saved."""
    access.require_admin("site-fit", profile=folder)
    audit_log.check()
    bar = st.progress(0.0, text="Reading the films again…")

    def fit_progress(done: int, total: int) -> None:
        bar.progress(0.8 * done / total if total else 0.8, text=f"Scoring {done} of {total} films with the shipped model")

    try:
        profile, skipped = sites.fit(clf, batch.items, folder, progress=fit_progress, fitting=lambda: bar.progress(
            0.85, text="Fitting the profile and checking it on your films…"))
    except (SiteError, OSError) as e:  # TooFewFilms is a SiteError
        bar.empty()
        audit_log.record("site-fit", outcome=audit_log.FAILURE, profile=None, detail={"name": folder, "why": str(e)})
        st.error(f"No profile was fitted: {literal(without_paths(e))}", icon=icons.ERROR)
        return
    bar.empty()
    audit_log.record("site-fit", profile=profile, detail={"name": folder, "films": profile.n_films,
                                                          "method": profile.method, "saved": False})
    for k in _STEP_KEYS:
        st.session_state.pop(k, None)
    st.session_state[state.SITE_FITTED] = {"folder": folder, "profile": profile, "skipped": len(skipped)}


def review(positive_class: str) -> None:
    """Look, choose, adopt: the session's fitted profile beside the shipped model at the sensitivity chosen, in
    plain words (the engineering terms in an expander), then the Adopt button (site admins only)."""
    saved = st.session_state.get(state.SITE_SAVED)
    if saved:
        st.success(f"Adopted as version {saved['version']}: {literal(saved['line'])}. Clinicians choose it on the "
                   "Screen page.", icon=icons.SAVED)
    fitted = st.session_state.get(state.SITE_FITTED)
    if not fitted:
        return
    p: SiteProfile = fitted["profile"]
    folder = fitted["folder"]
    st.subheader("Look before adopting")
    st.info("This profile is kept in your session only: nothing is saved and no other user sees it until you "
            "adopt it below.", icon=icons.LOOK)
    st.markdown(f"**The shipped model against the profile adapted to your films** ({site_view.films_text(p, positive_class)}). "
                "Both are checked on your own films: each film is scored by a profile fitted without that film "
                "(cross-validated), so the figures are what to expect on your next films. 95% CIs in brackets.")
    at = site_choice.choose(p, key=state.SITE_TARGET)
    st.dataframe(site_view.figure_rows(at), hide_index=True)
    if rough := site_view.rough_text(at):
        st.warning(rough, icon=icons.WARNING)
    kind, text = site_view.advice(at)
    {"info": st.info, "warning": st.warning}[kind](text, icon=icons.COMPARE)
    if roc := site_view.roc_rows(at):
        a = at.figures.get("adapted") or {}
        point = None
        if a.get("sensitivity") is not None and a.get("specificity") is not None:
            point = (1 - a["specificity"], a["sensitivity"],
                     f"your choice: sensitivity {100 * a['sensitivity']:.0f}%, specificity {100 * a['specificity']:.0f}%")
        st.markdown("**ROC curves on your films, both checked the same way** (the red dot: the sensitivity you chose)")
        st.altair_chart(roc_chart(roc, by="model", operating_point=point), width="stretch")
    if fitted["skipped"]:
        st.caption(f"{fitted['skipped']} film{'s' if fitted['skipped'] > 1 else ''} of the batch left out of the fit "
                   "(unreadable, unlabelled, or not a frontal chest radiograph).")
    site_choice.engineering(at)
    adopt_form(folder, at)


def adopt_form(folder: str, profile: SiteProfile) -> None:
    """The replace box (when the name is adopted already), the refusal and override of a profile not offered,
    and the Adopt button."""
    st.subheader("Adopt it")
    exists = profiles.current(sites.sites_dir() / folder) is not None
    overwrite = False
    if exists:
        st.warning("A profile of this name is already adopted on this server: tick the box to add this one as a "
                   "new version and retire the current one (kept in the history), or fit again under another "
                   "name.", icon=icons.WARNING)
        overwrite = st.checkbox("Replace the adopted version of this profile", key=state.site_overwrite(folder))
    chosen, allowed = site_choice.adopt_controls(profile, key=state.SITE_OVERRIDE, by=auth.user().subject)
    if st.button(ADOPT_LABEL, key=state.SITE_SAVE, type="primary", disabled=not allowed or (exists and not overwrite)):
        version = adopt(folder, chosen, overwrite)
        if version is not None:
            st.session_state.pop(state.SITE_FITTED, None)
            st.session_state[state.SITE_SAVED] = {"folder": folder, "version": version,
                                                  "line": site_view.in_use_line(chosen)}
            st.rerun()


def adopt(folder: str, profile: SiteProfile, overwrite: bool) -> str | None:
    """Save the profile as a new adopted version (site admins only): recorded first, so that nothing is adopted
    without its record; a profile not offered needs its override. Returns its version, None when refused."""
    user = access.require_admin("site-adopt", profile=folder)
    audit_log.check()
    version = profiles.version_of(profile)
    if not profile.adoptable:
        audit_log.record("site-adopt", outcome=audit_log.DENIED, profile=None,
                         detail={"name": folder, "version": version, "why": profile.offered_why})
        st.error("Not adopted: this profile is not offered for adoption and no override was given.", icon=icons.ERROR)
        return None
    override = profile.override or {}
    audit_log.record("site-adopt", profile=profile, detail={
        "name": folder, "version": version, "target_sensitivity": profile.target, "threshold": profile.threshold,
        "rule": profile.rule, "method": profile.method, "films": profile.n_films, "offered": profile.offered,
        "override": override.get("reason"), "replaced": overwrite})
    try:
        sites.save(profile, sites.sites_dir(), folder, overwrite=overwrite, user=user.subject)
    except (SiteError, FileExistsError, OSError) as e:
        audit_log.record("site-adopt", outcome=audit_log.FAILURE, profile=None,
                         detail={"name": folder, "version": version, "why": str(e)})
        st.error(f"The profile was not adopted: {literal(without_paths(e))}", icon=icons.ERROR)
        return None
    return version


def version_rows(folder: str) -> list[dict[str, str]]:
    return [{"version": v.version or "(older layout)", "state": v.state, "adopted": v.adopted, "retired": v.retired,
             "adopted by": v.by} for v in sites.history(sites.sites_dir(), folder)]


def change_state(folder: str, version: str, event: str, card: Any) -> None:
    """Adopt or retire one version: site admins only, recorded."""
    user = access.require_admin(f"site-{'adopt' if event == profiles.ADOPTED else 'retire'}", profile=folder,
                              version=version)
    audit_log.check()
    profiles.set_state(sites.sites_dir(), folder, version, event, user=user.subject)
    found = sites.find(sites.sites_dir(), folder, card, version)
    audit_log.record("site-adopt" if event == profiles.ADOPTED else "site-retire", profile=found.profile,
                     detail={"name": folder, "version": version})


def history(card: Any) -> None:
    """Every profile on the server with the history of its versions, and adopt / retire per version."""
    try:
        names = sorted(p.name for p in sites.sites_dir().iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        names = []
    if not names:
        st.info("No site profile on this server yet.")
        return
    for folder in names:
        with st.container(border=True):
            st.text(f"Profile: {folder}")
            rows = version_rows(folder)
            st.dataframe(rows, hide_index=True)
            for r in rows:
                v = r["version"]
                if v.startswith("("):
                    continue
                if r["state"] == profiles.ADOPTED:
                    st.button(f"Retire version {v}", key=f"site_retire_{folder}_{v}",
                              on_click=change_state, args=(folder, v, profiles.RETIRED, card))
                else:
                    st.button(f"Adopt version {v} again", key=f"site_adopt_{folder}_{v}",
                              on_click=change_state, args=(folder, v, profiles.ADOPTED, card))
