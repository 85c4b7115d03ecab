"""Sign-in in a real browser: the served app with `[auth]` configured against a real OpenID Connect provider
(oidc-provider-mock, run in this process), Debian's Chromium signing in as a clinician and as a site admin
through the provider's own form, and signing out; the audit trail records each."""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect, sync_playwright

from covidxr.audit import AuditStore
from tests.conftest import REPO
from tests.browser import CHROMIUM, CHROMIUM_ARGS, SCRIPT_IDLE, free_port, require_chromium, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def provider():
    from oidc_provider_mock import User, run_server_in_thread

    users = [User(sub="clin-1", claims={"name": "Dr Clin", "groups": ["covidxr-clinician"]}),
             User(sub="admin-1", claims={"name": "Ada Admin", "groups": ["covidxr-site-admin"]})]
    with run_server_in_thread(port=free_port(), user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def signed_in_app(provider, tmp_path_factory):
    """The app with sign-in on: `[auth]` in the server's own HOME's ~/.streamlit/secrets.toml (Streamlit reads it
    beside the project's), its own audit store."""
    require_chromium()
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    (home / ".streamlit").mkdir()
    (home / ".streamlit" / "secrets.toml").write_text(f'''[auth]
redirect_uri = "http://127.0.0.1:{port}/oauth2callback"
cookie_secret = "{os.urandom(16).hex()}"
client_id = "covidxr"
client_secret = "covidxr-secret"
server_metadata_url = "{provider}/.well-known/openid-configuration"
''')
    url = f"sqlite:///{home / 'audit.db'}"
    env = {**os.environ, "HOME": str(home), "COVIDXR_DB": url, "PYTHONPATH": str(REPO), "COVIDXR_THREADS": "1"}
    with running_app(home / "app.log", env=env, port=port) as app:
        yield app, url


def sign_in(page, app_url: str, sub: str) -> None:
    page.goto(app_url)
    page.get_by_role("button", name="Sign in").click(timeout=TIMEOUT_MS)
    page.locator(f'button[name="sub"][value="{sub}"]').click(timeout=TIMEOUT_MS)  # the provider's own form
    page.wait_for_url(re.compile(re.escape(app_url)), timeout=TIMEOUT_MS)


def sign_out(page) -> None:
    """Streamlit's st.logout ends the session at the provider too (RP-initiated logout): its page confirms."""
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="End session").click(timeout=TIMEOUT_MS)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=TIMEOUT_MS)


def test_sign_in_as_clinician_and_admin_and_out(signed_in_app):
    app, url = signed_in_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.goto(app.url)
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.get_by_text("Screen a chest X-ray")).to_have_count(0)

            sign_in(page, app.url, "clin-1")
            expect(page.get_by_text("Signed in: Dr Clin")).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.get_by_role("heading", name=re.compile("Screen a chest X-ray"))).to_be_visible(timeout=TIMEOUT_MS)
            page.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)
            nav = page.locator('[data-testid="stSidebarNav"]')
            expect(nav.get_by_text("Batch evaluation")).to_be_visible()
            expect(nav.get_by_text("Site profiles")).to_have_count(0)   # a clinician never sees an admin page
            expect(nav.get_by_text("Audit trail")).to_have_count(0)
            sign_out(page)

            sign_in(page, app.url, "admin-1")
            expect(page.get_by_text("Signed in: Ada Admin")).to_be_visible(timeout=TIMEOUT_MS)
            nav = page.locator('[data-testid="stSidebarNav"]')
            expect(nav.get_by_text("Site profiles")).to_be_visible(timeout=TIMEOUT_MS)
            nav.get_by_text("Audit trail").click()
            expect(page.get_by_role("heading", name="Audit trail")).to_be_visible(timeout=TIMEOUT_MS)
            sign_out(page)
        finally:
            browser.close()
    store = AuditStore(url)
    trail = [(r.action, r.user, r.user_name, r.role) for r in store.records() if r.action.startswith("sign")]
    assert trail == [("sign-in", "clin-1", "Dr Clin", "clinician"), ("sign-out", "clin-1", "Dr Clin", "clinician"),
                     ("sign-in", "admin-1", "Ada Admin", "site-admin"),
                     ("sign-out", "admin-1", "Ada Admin", "site-admin")]
    assert store.verify().ok
