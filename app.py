"""covidxr: the clinician app. Process-wide set-up, navigation and the disclaimer; each page lives in pages/."""
import streamlit as st

from webapp.uploads import keep_uploads_in_memory
from webapp.wording import DISCLAIMER

keep_uploads_in_memory()  # before any page can receive an upload

st.set_page_config(page_title="covidxr · chest X-ray COVID-19 screening", page_icon=":material/radiology:",
                   layout="wide")

# Every url_path differs from its file's name on purpose: when a page's hash equals that of a file in
# pages/, Streamlit 1.67's AppTest runs the file alone, skipping this script (and the disclaimer).
page = st.navigation([
    st.Page("pages/screen.py", title="Screen a film", icon=":material/radiology:", default=True,
            url_path="screen-a-film"),
    st.Page("pages/evaluate.py", title="Batch evaluation", icon=":material/analytics:", url_path="batch-evaluation"),
    st.Page("pages/review.py", title="Heatmap review", icon=":material/image_search:", url_path="heatmap-review"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/description:", url_path="model-card"),
])
st.sidebar.warning(DISCLAIMER, icon=":material/medical_information:")
page.run()
