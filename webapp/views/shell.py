"""What every page shares above its own content: the disclaimer at the top of the main area, and the one style
rule the app adds to Streamlit's. Called once by app.py before the page runs."""
from __future__ import annotations

import streamlit as st

from webapp.views import icons
from webapp.views.wording import DISCLAIMER

# The copy icon of a code block (the report line a clinician copies) is shown only on hover; a phone has no
# hover, so the icon was found by chance if at all. Shown always, on every device. Streamlit hides it with
# opacity and visibility on the wrappers around the button, whose class names are generated: the rule names
# them by what they hold.
ALWAYS_SHOW_COPY = """<style>
[data-testid="stCode"] div:has([data-testid="stElementToolbarButton"]) { visibility: visible !important; opacity: 1 !important; }
</style>"""


def frame() -> None:
    """The disclaimer heads every page's main area, not the sidebar: on a phone the sidebar starts collapsed
    (and closes after each choice), so a disclaimer there was never seen."""
    st.html(ALWAYS_SHOW_COPY)
    st.warning(DISCLAIMER, icon=icons.DISCLAIMER)
