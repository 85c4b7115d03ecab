"""covidxr: the clinician app. Navigation and the disclaimer; each page lives in pages/."""
import streamlit as st

from ui import DISCLAIMER

st.set_page_config(page_title="covidxr · chest X-ray COVID-19 screening", page_icon="🫁", layout="wide")

page = st.navigation([
    st.Page("pages/screen.py", title="Screen a film", icon="🩻", default=True),
    st.Page("pages/evaluate.py", title="Batch evaluation", icon="📊"),
    st.Page("pages/review.py", title="Heatmap review", icon="🔎"),
    st.Page("pages/model_card.py", title="Model card", icon="📄"),
])
st.sidebar.warning(DISCLAIMER, icon="⚕️")
page.run()
