"""Per-session state: what one browser session keeps (st.session_state) and decodes once."""
