"""The server folders the Batch evaluation page may read, as the operator set them."""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from covidxr.safety import allowed_roots


def data_roots() -> list[Path]:
    """$COVIDXR_DATA_ROOTS plus `data_roots` in .streamlit/secrets.toml; empty: no server folder may be named."""
    try:
        extra = st.secrets.get("data_roots", [])
    except (FileNotFoundError, StreamlitSecretNotFoundError):
        extra = []
    return allowed_roots([extra] if isinstance(extra, str) else extra)
