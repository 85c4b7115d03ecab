"""covidxr's Streamlit app: the glue between the pages (pages/) and the engine (covidxr/).

`covidxr` never imports Streamlit or this package. Its modules, by what they are for:

  process-wide services (one per server process, shared by every session): model (the cached model),
  cluster (the server's cluster runs), roots (the server folders a page may read), uploads (the upload spool),
  serve (how the server starts), sites (site profiles as loaded and saved)
  per-session state: state (the session-state keys and the forms kept across pages), batch (a batch scored in a
  session), films (uploads and samples decoded once per session)
  views (what a page lays out): view (the Screen page's result), evaluate_view and batch_view (Batch evaluation),
  card_view (the model card), charts, images (drawings of a heatmap), tables, wording, review (a batch's review order)

The modules that need no Streamlit (wording, tables, review, batch, images, charts) do not import it,
so that they are unit-tested without it; importing this package imports nothing.
"""
