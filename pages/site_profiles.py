"""Site profiles (site admins): fit a profile from the session's last batch (kept in the session), look at it
beside the shipped model and choose its sensitivity, then adopt it; adopt or retire the versions of every
profile on the server, with their history. Parts in webapp/views/site_admin.py."""
import streamlit as st

from webapp.views import access, site_admin
from webapp.session import state
from webapp.services.model import classifier

access.require_admin("open the Site profiles page")
clf = classifier()  # the shipped model: site profiles are fitted with it
st.title("Site profiles")
st.subheader("Fit a site profile from the last batch")
site_admin.fit_form(clf, st.session_state.get(state.BATCH))
site_admin.review(clf.card.positive_class)
st.divider()
st.subheader("Profiles on this server and their versions")
st.caption("Versions are never rewritten: a replaced version is retired and kept. Clinicians choose among the "
           "adopted ones; a session keeps the version it chose until its user switches.")
site_admin.history(clf.card)
