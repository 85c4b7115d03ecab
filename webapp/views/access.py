"""What the signed-in user may do, and the records it leaves: the sign-in screen and sidebar (gate), signing out,
and the role check every admin control calls (require_admin). Here webapp.services.auth (who the user is) and
webapp.services.audit_log (what is recorded) meet, so that neither imports the other."""
from __future__ import annotations

from typing import Any

from webapp.services import audit_log
from webapp.services.auth import LOCAL_MODE, ROLE_TITLES, SIGNED_IN, User, current_user, user
from webapp.views import icons


def gate() -> User:
    """Called by app.py before any page: local mode's notice, or the sign-in screen (stops the script until a
    user with a role is signed in); then the user's name, role and sign-out in the sidebar. Records sign-in
    once per session, and a signed-in user without a role as denied."""
    import streamlit as st

    user = current_user()
    if user is not None and user.local:
        st.sidebar.info(LOCAL_MODE, icon=icons.LOCAL)
        return user
    if user is None:
        st.title("covidxr · sign in")
        st.write("This server requires sign-in through your hospital's identity provider.")
        st.button("Sign in", type="primary", on_click=st.login, key="sign_in")
        st.stop()
    if st.session_state.get(SIGNED_IN) != user.subject:
        audit_log.record_as(user, "sign-in", outcome=audit_log.SUCCESS if user.roles else audit_log.DENIED,
                            detail={} if user.roles else {"why": "no covidxr role"})
        st.session_state[SIGNED_IN] = user.subject
    with st.sidebar:
        st.text(f"Signed in: {user.name}")
        st.caption(f"Role: {ROLE_TITLES.get(user.role, 'none')}")
        st.button("Sign out", on_click=sign_out, args=(user,), key="sign_out")
    if not user.roles:
        st.error("Your account has no covidxr role. Ask the site's administrator for the clinician or site admin "
                 "group.", icon=icons.ERROR)
        st.stop()
    return user


def sign_out(user: User) -> None:
    import streamlit as st

    audit_log.record_as(user, "sign-out", fail_quietly=True)  # signing out is never refused
    st.session_state.pop(SIGNED_IN, None)
    st.logout()


def require_admin(action: str, **detail: Any) -> User:
    """The user, when a site admin; otherwise the attempt is recorded as denied, the user told, and the script
    stopped. Every admin control calls this before acting, whether or not it was drawn."""
    import streamlit as st

    u = user()
    if u.is_admin:
        return u
    audit_log.record_as(u, "denied", outcome=audit_log.DENIED, detail={"attempted": action, **detail})
    st.error("Only a site admin may do this; the attempt was recorded.", icon=icons.ERROR)
    st.stop()
    raise RuntimeError("unreachable")  # st.stop() ends the script run
