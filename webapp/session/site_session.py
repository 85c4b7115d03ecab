"""The site-profile version this browser session decides with (webapp.session.state.SITE_ACTIVE + SITE_VERSION).

Why pinned: a profile replaced by a site admin must not change the decisions of a clinician who is screening
with it. The session keeps the version it chose until its user switches, and is told when a newer version of
that profile was adopted (`Active.newer`). A version that no longer loads (its files damaged) is dropped with
its reason, and the shipped model is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidxr.site import SiteProfile

from covidxr.lru import LRU

ACTIVE = object()  # "the session's profile", where a function takes a profile or None (the shipped model)


@dataclass
class Active:
    """The session's profile: None for the shipped model; `error` when the one chosen can no longer be used;
    `newer`: the version adopted since this session chose its own (None: it is the adopted one)."""
    profile: SiteProfile | None = None
    folder: str | None = None
    error: str | None = None
    version: str = ""
    path: Path | None = None
    newer: str | None = None


def choose(folder: str | None, version: str | None = None) -> None:
    """Decide with this profile from now on (None: the shipped model); `version` None: its adopted version,
    pinned on first use."""
    import streamlit as st

    from webapp.session import state

    st.session_state[state.SITE_ACTIVE] = folder
    st.session_state[state.SITE_VERSION] = version


def active() -> Active:
    """This session's site profile and version, loaded (cached)."""
    import streamlit as st

    from webapp.services import sites
    from webapp.session import state
    from webapp.services.model import card

    folder = st.session_state.get(state.SITE_ACTIVE)
    if not folder:
        return Active()
    pinned = st.session_state.get(state.SITE_VERSION)
    found = sites.find(sites.sites_dir(), folder, card(), pinned)
    if found.profile is None:
        choose(None)
        return Active(folder=folder, error=found.error)
    if not pinned:
        st.session_state[state.SITE_VERSION] = found.version
    current = sites.find(sites.sites_dir(), folder, card())
    newer = current.version if current.profile is not None and current.version != found.version else None
    return Active(found.profile, folder, version=found.version, path=found.path, newer=newer)


def active_profile() -> SiteProfile | None:
    return active().profile


_CACHE_SIZE = 64
_with_site: LRU[tuple, Any] = LRU(_CACHE_SIZE)  # the model at each profile version's operating point


def scoring_classifier(profile: SiteProfile | None = None):
    """The server's model at the operating point of `profile` (None: the shipped one): a shallow copy sharing
    the networks, cached per profile version."""
    from webapp.services import sites
    from webapp.services.model import classifier

    clf = classifier()
    if profile is None:
        return clf
    key = (id(clf), sites.token(profile))
    with sites._cache_lock:
        found = _with_site.get(key)
    if found is None:
        found = clf.with_site(profile)
        with sites._cache_lock:
            _with_site.put(key, found)
    return found
