"""covidxr's Streamlit app: the glue between the pages (pages/) and the engine (covidxr/).

`covidxr` never imports Streamlit or this package. Its subpackages, by what a module is for:

  services/ (process-wide, one per server process, shared by every session): model (the cached model),
    sites (site profiles as loaded and saved), auth (who is signed in, and the roles), audit_log (the audit
    trail's records, fail closed), cluster (the server's cluster runs), roots (the server folders a page may
    read), uploads (uploads kept in memory), worklist (the DICOM node's studies)
  session/ (per browser session, in st.session_state): state (the keys), batch (a batch scored in a session),
    films (uploads and samples decoded once per session), site_session (the profile version a session decides with)
  views/ (what a page lays out, and what the layouts share): view (one result), evaluate_view and batch_view
    (Batch evaluation), card_view (the model card), site_view, site_choice and site_admin (site profiles),
    access (sign-in screen and role checks), charts, images (drawings of a heatmap), tables, wording,
    literal (outside text shown literally), review (a batch's review order)
  serve (how the server starts: `python -m webapp.serve`)

The modules that need no Streamlit (wording, tables, review, batch, images, charts, literal) do not import it,
so that they are unit-tested without it; importing a package imports none of its modules.
"""
