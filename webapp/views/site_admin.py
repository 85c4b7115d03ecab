"""The Site profiles page's parts (site admins only): fit a profile from the session's last batch, show its
figures, and the versions of every profile on the server with adopt / retire.

Every action checks the role again (webapp.views.access.require_admin: refused and recorded as denied without it) and
is recorded (site-fit, site-adopt, site-retire) with the profile's name and version.
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from covidxr import profiles
from covidxr.site import MIN_PER_CLASS, ROUGH_PER_CLASS, SiteError

from webapp.views import access, site_view
from webapp.services import audit_log, sites
from webapp.session import state
from webapp.views.charts import roc_chart
from webapp.views.literal import literal, without_paths


def fit_form(clf: Any, batch: Any) -> None:
    """Name, replace box and the Fit button for the session's last batch; the fitted profile's figures below."""
    card = clf.card
    st.caption(f"A site profile recalibrates the model on your own labelled films: at least {MIN_PER_CLASS} of each "
               f"class; below {ROUGH_PER_CLASS} of a class its figures are rough. It is fitted with the shipped model "
               "(whatever is in use), its figures are cross-validated beside the shipped model's, and it is saved as "
               "a new version under its name in this server's profile folder. Saving adopts it for every user of "
               "the server; sessions deciding with an older version keep it until their user switches. The films "
               "are re-read in memory; only the profile is written, with no film names.")
    blocker = "No batch yet: run one on the Batch evaluation page first." if batch is None else sites.fit_blocker(batch)
    name = st.text_input("Profile name (also its folder on the server)", key=state.SITE_NAME,
                         max_chars=sites.MAX_NAME, disabled=blocker is not None,
                         placeholder="e.g. St Mary radiology 2024")
    folder, problem, exists, overwrite = None, None, False, False
    if blocker is None and name.strip():
        try:
            folder = sites.check_name(name)
        except ValueError as e:
            problem = f"This name cannot be used: {literal(e)}."
        else:
            exists = profiles.current(sites.sites_dir() / folder) is not None
    if exists:
        overwrite = st.checkbox("Replace the adopted version of this profile (it is kept, retired, in the history)",
                                key=state.site_overwrite(folder))
    if blocker:
        st.info(blocker, icon="ℹ️")
    elif problem:
        st.error(problem, icon="🚫")
    elif exists and not overwrite:
        st.warning("A profile of this name is already adopted on this server: choose another name, or tick the box "
                   "to add a new version and retire the current one.", icon="⚠️")
    if st.button("Fit and save the site profile", key=state.SITE_FIT,
                 disabled=blocker is not None or folder is None or (exists and not overwrite)):
        fit_and_save(clf, batch, folder, overwrite)
    fitted = st.session_state.get(state.SITE_FITTED)
    if fitted:
        show_fitted(fitted, card.positive_class)


def fit_and_save(clf: Any, batch: Any, folder: str, overwrite: bool) -> None:
    user = access.require_admin("site-fit", profile=folder)
    audit_log.check()
    bar = st.progress(0.0, text="Reading the films again…")

    def fit_progress(done: int, total: int) -> None:
        bar.progress(0.8 * done / total if total else 0.8, text=f"Scoring {done} of {total} films with the shipped model")

    try:
        profile, skipped = sites.fit(clf, batch.items, folder, progress=fit_progress, fitting=lambda: bar.progress(
            0.85, text="Fitting and cross-validating the profile…"))
        path = sites.save(profile, sites.sites_dir(), folder, overwrite=overwrite, user=user.subject)
    except (SiteError, FileExistsError, OSError) as e:  # TooFewFilms is a SiteError
        bar.empty()
        audit_log.record("site-fit", outcome=audit_log.FAILURE, profile=None, detail={"name": folder, "why": str(e)})
        st.error(f"No profile was saved: {literal(without_paths(e))}", icon="🚫")
        return
    bar.empty()
    audit_log.record("site-fit", profile=profile, detail={"films": profile.n_films, "method": profile.method,
                                                          "threshold": profile.threshold, "replaced": overwrite})
    audit_log.record("site-adopt", profile=profile, detail={"version_folder": path.name})
    st.session_state[state.SITE_FITTED] = {"folder": folder, "profile": profile, "skipped": len(skipped)}


def show_fitted(fitted: dict, positive_class: str) -> None:
    p = fitted["profile"]
    figs = p.figures or {}
    st.success(f"Saved and adopted as version {profiles.version_of(p)}: {literal(site_view.in_use_line(p))}. Clinicians "
               "choose it on the Screen page.", icon="💾")
    st.markdown(f"**Shipped model against the adapted profile on your films**, both cross-validated: "
                f"{site_view.films_text(p, positive_class)}, {figs.get('folds', '?')} folds by "
                f"{figs.get('folds_by', 'film')}; 95% CIs in brackets. Method kept: {site_view.method_title(p.method)}.")
    st.dataframe(site_view.figure_rows(p), hide_index=True)
    if rough := site_view.rough_text(p):
        st.warning(rough, icon="⚠️")
    kind, text = site_view.advice(p)
    {"info": st.info, "warning": st.warning}[kind](text, icon="⚖️")
    if fitted["skipped"]:
        st.caption(f"{fitted['skipped']} film{'s' if fitted['skipped'] > 1 else ''} of the batch left out of the fit "
                   "(unreadable, unlabelled, or not a frontal chest radiograph).")
    if roc := site_view.roc_rows(p):
        st.markdown("**ROC curves, cross-validated** (out-of-fold scores on your films)")
        st.altair_chart(roc_chart(roc, by="model"), width="stretch")
    st.caption(figs.get("note", ""))


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
