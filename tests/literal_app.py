"""A page that renders each text of $LITERAL_TEXTS (a JSON list) through webapp.views.literal in every kind of
Markdown-rendering element the app uses, for tests/test_literal.py to read back in Chromium."""
import json
import os

import streamlit as st

from webapp.views.literal import literal

texts = json.loads(open(os.environ["LITERAL_TEXTS"], encoding="utf-8").read())
for i, t in enumerate(texts):
    shown = literal(t)
    with st.container(key=f"md-{i}"):
        st.markdown(shown)
    with st.container(key=f"mix-{i}"):
        st.caption(f"**In use:** {shown} · film")
    with st.container(key=f"err-{i}"):
        st.error(shown)
    with st.container(key=f"lab-{i}"):
        st.checkbox(shown, key=f"cb-{i}")
    with st.container(key=f"sub-{i}"):
        st.subheader(shown, anchor=False)
