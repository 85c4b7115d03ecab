"""Sign-in, roles, local mode, the app's audit records and versioned site profiles, through Streamlit's AppTest
(`at.user` is what the app reads as st.user after st.login) with the shipped model and real sample films."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from covidxr.audit import AuditStore
from covidxr.profiles import version_of
from tests.conftest import REPO
from tests.test_site_pages import made_profile
from webapp.services import auth, sites
from webapp import serve
from webapp.session import state

pytestmark = [pytest.mark.model, pytest.mark.slow]
APP = str(REPO / "app.py")
NORMAL_SAMPLE = REPO / "samples" / "normal" / "00001300_000.jpg"
TIMEOUT = 300
AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32, "client_id": "covidxr",
        "client_secret": "s", "server_metadata_url": "http://127.0.0.1:1/.well-known/openid-configuration"}
CLINICIAN = {"is_logged_in": True, "sub": "sub-clin", "name": "Dr Clin", "groups": ["covidxr-clinician"]}
ADMIN = {"is_logged_in": True, "sub": "sub-admin", "name": "Ada Admin", "groups": ["covidxr-site-admin"]}


@pytest.fixture
def env(classifier, monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDXR_WEIGHTS", str(classifier.directory))
    monkeypatch.setenv("COVIDXR_THREADS", "1")
    monkeypatch.delenv("COVIDXR_DATA_ROOTS", raising=False)
    monkeypatch.setenv(sites.SITES_ENV, str(tmp_path / "profiles"))
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("COVIDXR_DB", url)
    return url


def app(user: dict | None = None, script: str = APP) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT)
    if user is not None:
        at.secrets["auth"] = AUTH
        at.user = user
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "text", "caption", "info", "error", "warning", "success")
                    for e in getattr(at, kind)) + " " + " ".join(str(e.value) for e in at.sidebar.text)


def actions(url: str) -> list[tuple[str, str, str]]:
    return [(r.action, r.user, r.outcome) for r in AuditStore(url).records()]


def test_roles_from_the_claim():
    claim, groups = auth.role_config({"roles": {"claim": "roles", "site_admin": ["radiology-it"]}})
    assert claim == "roles" and groups[auth.SITE_ADMIN] == ["radiology-it"]
    assert auth.roles_of({"roles": ["radiology-it"]}, claim, groups) == {auth.SITE_ADMIN, auth.CLINICIAN}
    assert auth.roles_of({"roles": "covidxr-clinician"}, claim, groups) == {auth.CLINICIAN}
    assert auth.roles_of({"groups": ["radiology-it"]}, claim, groups) == frozenset()  # another claim: no role


def test_local_mode_listens_on_loopback_only(tmp_path, capsys):
    assert not serve.sign_in_configured(tmp_path / "missing.toml")
    (tmp_path / "s.toml").write_text('[auth]\nclient_id = "x"\n')
    assert serve.sign_in_configured(tmp_path / "s.toml")
    assert serve.asked_address(["--server.address", "0.0.0.0"]) == "0.0.0.0"
    assert serve.asked_address(["--server.address=10.1.2.3"]) == "10.1.2.3"
    if serve.sign_in_configured():
        pytest.fail("this checkout's .streamlit/secrets.toml configures sign-in; the test needs local mode")
    assert serve.main(["--server.address", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "configure sign-in" in err[0] and "docs/operations.md" in err[0]


def test_local_mode_says_so_and_the_local_user_has_both_roles(env):
    at = app()
    assert any(i.value == auth.LOCAL_MODE for i in at.sidebar.info)
    at.switch_page("pages/site_profiles.py").run()
    assert not at.exception and at.title[0].value == "Site profiles"
    at.switch_page("pages/audit.py").run()
    assert not at.exception and at.title[0].value == "Audit trail"


def test_sign_in_is_required_when_configured(env):
    at = app({"is_logged_in": False})
    assert at.title[0].value == "covidxr · sign in" and at.button(key="sign_in")
    assert not at.file_uploader  # no page behind it


def test_a_clinician_sees_no_admin_control_and_is_refused_and_recorded(env):
    at = app(CLINICIAN)
    assert "Signed in: Dr Clin" in texts(at) and at.button(key="sign_out")
    assert not any(i.value == auth.LOCAL_MODE for i in at.sidebar.info)
    at.switch_page("pages/evaluate.py").run()
    assert "A folder on the server" not in at.radio(key=state.EVAL_SOURCE).options
    assert not [b for b in at.button if b.key == state.SITE_FIT]
    assert ("sign-in", "sub-clin", "success") in actions(env)
    # the admin pages' own code, run for a clinician (as a crafted request would): refused and recorded as denied
    for page in ("pages/site_profiles.py", "pages/audit.py"):
        page_app = app(CLINICIAN, str(REPO / page))
        assert any("Only a site admin" in e.value for e in page_app.error) and not page_app.title
    denied = [r for r in AuditStore(env).records(action="denied")]
    assert [(r.user, r.outcome, r.detail["attempted"]) for r in denied] == [
        ("sub-clin", "denied", "open the Site profiles page"), ("sub-clin", "denied", "open the Audit page")]


def test_an_admin_sees_the_admin_pages_and_the_audit_trail(env):
    at = app(ADMIN)
    at.switch_page("pages/audit.py").run()
    assert not at.exception and at.title[0].value == "Audit trail"
    assert any("The chain holds" in s.value for s in at.success)
    assert at.get("download_button")


def test_the_audit_page_filters_by_user_and_action(env):
    app(CLINICIAN)                                       # a clinician's sign-in
    at = app(ADMIN)
    at.switch_page("pages/audit.py").run()
    users = lambda: set(at.dataframe[0].value["user"])  # noqa: E731
    assert {"sub-clin", "sub-admin"} <= users()
    at.text_input(key="audit_user").set_value("sub-clin").run()
    assert users() == {"sub-clin"}
    at.text_input(key="audit_user").set_value("").run()
    at.selectbox(key="audit_action").set_value("sign-in").run()
    assert set(at.dataframe[0].value["action"]) == {"sign-in"}


def test_no_role_no_page(env):
    at = app({"is_logged_in": True, "sub": "sub-x", "name": "Visitor", "groups": ["other"]})
    assert any("no covidxr role" in e.value for e in at.error) and not at.file_uploader
    assert ("sign-in", "sub-x", "denied") in actions(env)


def screen_normal(at: AppTest) -> str:
    at.switch_page("pages/screen.py").run()
    at.selectbox(key=state.SCREEN_SAMPLE).set_value(NORMAL_SAMPLE).run()
    assert not at.exception
    return next(e.value for kind in ("success", "error", "warning") for e in getattr(at, kind)
                if "COVID-19 pattern" in str(e.value))


def test_a_sessions_decisions_keep_their_profile_version_until_it_switches(env, classifier):
    """The issue's two browsers: A screens with "General"; B (an admin) replaces it; A's next film is decided as
    before, A is told of the newer version, and only after switching decides with it. Every step recorded."""
    card = classifier.card
    first = made_profile("General", card.weights_sha256)
    sites.save(first, sites.sites_dir(), "General", user="sub-admin")
    a = app(CLINICIAN)
    a.selectbox(key=state.SITE_SELECT).set_value("General").run()
    before = screen_normal(a)
    assert f"version {version_of(first)}" in texts(a)
    second = made_profile("General", card.weights_sha256, n=10, seed=3)
    second.threshold = 0.001  # B's replacement would call every film positive
    sites.save(second, sites.sites_dir(), "General", overwrite=True, user="sub-admin")
    a.run()
    assert screen_normal(a) == before
    assert any("newer version" in w.value for w in a.warning)
    a.button(key=state.SITE_SWITCH).click().run()
    after = screen_normal(a)
    assert after != before and f"version {version_of(second)}" in texts(a)
    screens = AuditStore(env).records(action="screen")
    assert [r.profile_version for r in screens] == [version_of(first), version_of(second)]
    assert all(r.object and len(r.object) == 64 and NORMAL_SAMPLE.name not in str(r.as_dict()) for r in screens)
    assert AuditStore(env).verify().ok


def test_nothing_is_scored_when_the_audit_trail_cannot_be_written(env, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("COVIDXR_DB", f"sqlite:///{tmp_path / 'file' / 'audit.db'}")
    at = app()
    at.selectbox(key=state.SCREEN_SAMPLE).set_value(NORMAL_SAMPLE).run()
    assert any("audit trail cannot be written" in e.value for e in at.error)
    assert not [e for e in at.success if "COVID-19 pattern" in e.value]
