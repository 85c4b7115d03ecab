"""Who is using the app, and what they may do: Streamlit's own sign-in (`st.login` / `st.user`, OpenID Connect)
and the two roles, from a claim of the ID token.

Two modes:
- **Signed-in** when `.streamlit/secrets.toml` has an `[auth]` section, exactly as Streamlit documents it
  (redirect_uri, cookie_secret, client_id, client_secret, server_metadata_url). Every page needs a signed-in
  user with a role; the user's name and a sign-out are always in the sidebar.
- **Local** without `[auth]`: a one-workstation tool. The server listens on loopback only (webapp.serve), every
  page says "Local mode: no sign-in", and the one local user has both roles.

Roles: the ID-token claim named by `[roles] claim` (default "groups": a list of group names, or one string)
is matched against `[roles] clinician` and `[roles] site_admin` (lists of group names; defaults
["covidxr-clinician"] and ["covidxr-site-admin"]). A site admin may do everything a clinician may.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

CLINICIAN, SITE_ADMIN = "clinician", "site-admin"
ROLE_TITLES = {CLINICIAN: "clinician", SITE_ADMIN: "site admin"}
DEFAULT_CLAIM = "groups"
DEFAULT_GROUPS = {CLINICIAN: ["covidxr-clinician"], SITE_ADMIN: ["covidxr-site-admin"]}
LOCAL_MODE = "Local mode: no sign-in"
SIGNED_IN = "signed_in_as"  # session key: the subject whose sign-in was recorded in this session


@dataclass(frozen=True)
class User:
    subject: str            # the OpenID Connect subject ("local" in local mode)
    name: str
    roles: frozenset[str]
    local: bool = False

    @property
    def is_admin(self) -> bool:
        return SITE_ADMIN in self.roles

    @property
    def role(self) -> str:
        """The user's highest role, as the audit trail records it ("" without one)."""
        return SITE_ADMIN if self.is_admin else CLINICIAN if CLINICIAN in self.roles else ""


LOCAL_USER = User("local", "local", frozenset({CLINICIAN, SITE_ADMIN}), local=True)


def auth_configured(secrets: Mapping[str, Any] | None = None) -> bool:
    """True when the secrets hold an `[auth]` section (the app then requires sign-in)."""
    try:
        if secrets is None:
            import streamlit as st

            secrets = st.secrets
        return "auth" in secrets
    except Exception:  # noqa: BLE001 - no secrets file at all (StreamlitSecretNotFoundError): local mode
        return False


def role_config(secrets: Mapping[str, Any] | None = None) -> tuple[str, dict[str, list[str]]]:
    """(claim name, {role: group names}) from the secrets' `[roles]` section, with the defaults."""
    try:
        if secrets is None:
            import streamlit as st

            secrets = st.secrets
        conf = dict(secrets.get("roles", {}))
    except Exception:  # noqa: BLE001 - no secrets: the defaults
        conf = {}
    groups = {CLINICIAN: list(conf.get("clinician", DEFAULT_GROUPS[CLINICIAN])),
              SITE_ADMIN: list(conf.get("site_admin", DEFAULT_GROUPS[SITE_ADMIN]))}
    return str(conf.get("claim", DEFAULT_CLAIM)), groups


def roles_of(claims: Mapping[str, Any], claim: str, groups: Mapping[str, list[str]]) -> frozenset[str]:
    """The roles a user's claims give: a site admin is a clinician too."""
    value = claims.get(claim)
    have = {value} if isinstance(value, str) else set(value or [])
    roles = {role for role, names in groups.items() if have & set(names)}
    if SITE_ADMIN in roles:
        roles.add(CLINICIAN)
    return frozenset(roles)


def user_from_claims(claims: Mapping[str, Any], claim: str, groups: Mapping[str, list[str]]) -> User:
    subject = str(claims.get("sub") or claims.get("email") or "")
    name = str(claims.get("name") or claims.get("preferred_username") or claims.get("email") or subject)
    return User(subject, name, roles_of(claims, claim, groups))


def current_user() -> User | None:
    """The session's user: the local user in local mode; None when sign-in is configured and nobody is signed in."""
    import streamlit as st

    if not auth_configured():
        return LOCAL_USER
    if not st.user.is_logged_in:
        return None
    claim, groups = role_config()
    return user_from_claims(st.user.to_dict(), claim, groups)


def user() -> User:
    """The session's signed-in user (app.py's gate ran first); the local user in local mode."""
    found = current_user()
    if found is None:  # a page run without the gate (AppTest of one page): nobody may do anything
        return User("", "", frozenset())
    return found
