"""covidxr: the clinician app. Process-wide set-up, navigation and the disclaimer; each page lives in pages/.

Served by `python -m webapp.serve` (what `./run.sh app` runs): see webapp/serve.py for why.
"""
import streamlit as st

from webapp.views.access import gate
from webapp.services.uploads import keep_uploads_in_memory
from webapp.views.shell import frame
from webapp.views import icons

keep_uploads_in_memory()  # before any page can receive an upload

# The tab's icon is an inline image (icons.favicon says why); every other icon is a Material symbol.
st.set_page_config(page_title="covidxr · chest X-ray COVID-19 screening", page_icon=icons.favicon(), layout="wide")

# Every url_path differs from its file's name on purpose: when a page's hash equals that of a file in
# a pages folder, Streamlit 1.67's AppTest runs the file alone, skipping this script (and the disclaimer).
frame()  # the disclaimer at the top of every page (shell.frame says why it is not in the sidebar)
user = gate()  # local mode's notice, or sign-in (nothing below runs for a visitor who is not signed in)
pages = [
    st.Page("pages/screen.py", title="Screen a film", icon=icons.SCREEN, default=True, url_path="screen-a-film"),
    st.Page("pages/evaluate.py", title="Batch evaluation", icon=icons.BATCH, url_path="batch-evaluation"),
    st.Page("pages/review.py", title="Heatmap review", icon=icons.REVIEW, url_path="heatmap-review"),
    st.Page("pages/worklist.py", title="Worklist", icon=icons.WORKLIST, url_path="pacs-worklist"),
    st.Page("pages/model_card.py", title="Model card", icon=icons.CARD, url_path="model-card"),
]
if user.is_admin:  # a clinician never sees these (and each admin action checks the role again)
    pages += [st.Page("pages/site_profiles.py", title="Site profiles", icon=icons.SITE, url_path="site-admin"),
              st.Page("pages/audit.py", title="Audit trail", icon=icons.AUDIT, url_path="audit-trail")]
st.navigation(pages).run()
