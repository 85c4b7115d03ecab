"""The app's audit records (covidxr.audit): who did what, with which model and site-profile version, and fail closed.

The store is `$COVIDXR_DB` (default: the SQLite file data/audit.db under the working directory, covidxr.audit.default_url), opened once per process.
A record that cannot be written stops the page with the reason: nothing is scored, shown or changed without its
record. Only hashes, identifiers, counts and metrics are recorded: never pixels, file names or patient data.
"""
from __future__ import annotations

from typing import Any

from covidxr.audit import DENIED, FAILURE, SUCCESS, AuditEvent, AuditUnavailable, model_fields, open_store
from webapp.views import icons

__all__ = ["DENIED", "FAILURE", "SUCCESS", "record", "record_as", "deferred", "check", "once"]

RECORDED = "audit_recorded"  # session key: the (action, object, profile version) already recorded this session
UNAVAILABLE = ("The audit trail cannot be written, so nothing is scored or changed (the app fails closed). "
               "Tell the server's operator: ")


def _fields(profile: Any, model: bool = True) -> dict[str, str]:
    """The model and profile fields as every record names them (covidxr.audit.model_fields), with the served
    model's card when `model`, and site_session.ACTIVE resolved to the session's profile."""
    from webapp.services.model import card
    from webapp.session import site_session

    if profile is site_session.ACTIVE:
        profile = site_session.active_profile()
    return model_fields(card() if model else None, profile)


def _stop(e: Exception) -> None:
    import streamlit as st

    st.error(UNAVAILABLE + str(e), icon=icons.ERROR)
    st.stop()


def event(user: Any, action: str, obj: str = "", decision: str = "", probability: float | None = None,
          outcome: str = SUCCESS, detail: dict | None = None, profile: Any = None, model: bool = True) -> AuditEvent:
    """The event of `user` (webapp.services.auth.User). `profile`: a covidxr.site.SiteProfile, None (shipped model), or
    site_session.ACTIVE (the session's)."""
    fields = _fields(profile, model)
    return AuditEvent(action=action, user=user.subject, user_name=user.name, role=user.role, object=obj,
                      decision=decision, probability=probability, outcome=outcome, detail=detail or {}, **fields)


def record_as(user: Any, action: str, fail_quietly: bool = False, **kw: Any) -> None:
    """Record one event of `user` (see event). Stops the page when the store cannot be written, unless
    `fail_quietly` (signing out is never refused)."""
    try:
        open_store().record(event(user, action, **kw))
    except AuditUnavailable as e:
        if not fail_quietly:
            _stop(e)


def deferred(action: str, **kw: Any):
    """A function that records this event of the session's user when called: for downloads, whose content is
    made on click outside the page's run. The event is built now; AuditUnavailable raised then (no record, no
    file: the download fails)."""
    from webapp.services.auth import user

    ev = event(user(), action, **kw)
    return lambda: open_store().record(ev)


def record(action: str, **kw: Any) -> None:
    """Record one event of the session's user (see record_as)."""
    from webapp.services.auth import user

    record_as(user(), action, **kw)


def once(action: str, obj: str, **kw: Any) -> None:
    """Record an event once per session for (action, object, profile version): a film shown again when a
    slider moves is not screened again."""
    import streamlit as st

    done = st.session_state.setdefault(RECORDED, set())
    version = _fields(kw.get("profile"), model=False)["profile_version"]
    key = (action, obj, version, kw.get("decision", ""))
    if key in done:
        return
    record(action, obj=obj, **kw)
    done.add(key)


def check() -> None:
    """Before scoring: stop the page with the reason when the store cannot be written."""
    try:
        open_store().check_writable()
    except AuditUnavailable as e:
        _stop(e)
