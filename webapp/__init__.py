"""covidxr's Streamlit app: the glue between the pages (pages/) and the engine (covidxr/).

`covidxr` never imports Streamlit or this package. Here the two meet: the cached model, the
session-state keys, how results are worded, shown and tabulated, and the batch runner. The modules
that need no Streamlit (wording, tables, review, batch, images, lru) do not import it, so that they
are unit-tested without it; importing this package imports nothing.
"""
