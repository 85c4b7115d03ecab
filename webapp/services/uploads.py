"""Uploads stay in memory: the one process-wide patch that makes it so, called by app.py."""
from __future__ import annotations

import streamlit as st


def keep_uploads_in_memory() -> None:
    """Streamlit's upload route parses each upload with Starlette, which spools any part over 1 MiB
    (most DICOMs, most zips) to a temporary file on disk; raise that threshold to the upload limit so
    that uploads stay in memory, as promised (tests/test_privacy.py catches the spool under strace).
    Idempotent: app.py calls it on every script run, before any page can receive an upload."""
    from starlette.formparsers import MultiPartParser

    limit = (int(st.get_option("server.maxUploadSize")) + 1) << 20  # MB, plus the multipart framing
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit)
