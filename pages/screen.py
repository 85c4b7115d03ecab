"""Screen a film: drop films (or pick a sample) -> decision, probabilities, film and Grad-CAM side by side."""
import streamlit as st

from webapp.services import audit_log, sites
from webapp.session import site_session, state
from webapp.views import site_view
from webapp.views.literal import literal
from webapp.session.films import CHILD_LABEL, UPLOAD_TYPES, is_paediatric_sample, load_film, sample_films, sample_title
from webapp.services.model import classifier
from webapp.views.view import explained, show_result
from webapp.views import icons

st.title("Screen a chest X-ray for a COVID-19 pattern")
st.caption("Frontal (PA/AP) chest radiographs of adults: PNG, JPEG, DICOM, BMP or TIFF. Films stay in this "
           "session's memory; nothing is stored.")

clf = classifier()  # loaded when the page opens (once per server), not after the first drop

# The operating point in use in this session: the shipped model's, or the adopted version of a site profile (fitted
# by a site admin on the Site profiles page, or `python -m covidxr site fit`). The session keeps deciding with the
# version it chose until its user switches (webapp.session.site_session); a profile that does not load cannot be chosen.
was = site_session.active()
listed = sites.list_profiles(sites.sites_dir(), clf.card)
usable = {p.folder: p for p in listed if p.profile is not None}
options = ["", *usable]  # "": the shipped model (a None option would show as "Choose an option")
if state.SITE_SELECT not in st.session_state or st.session_state[state.SITE_SELECT] not in options:
    st.session_state[state.SITE_SELECT] = was.folder if was.folder in usable else ""  # kept across pages
left, right = st.columns([2, 3])
choice = left.selectbox("Operating point", options, key=state.SITE_SELECT,
                        format_func=lambda f: sites.SHIPPED if not f else f"Site profile: {f}",
                        disabled=len(options) == 1,
                        help="A site profile is this model recalibrated on a hospital's own labelled films "
                             "(fitted by a site admin). No profile is adopted on this server yet."
                        if len(options) == 1 else "A site profile is this model recalibrated on a hospital's own "
                                                  "labelled films; use one only where its figures were clearly better.")
choice = choice or None
if choice != (was.folder if was.profile is not None else None):  # the user switched: the adopted version, recorded
    site_session.choose(choice)
    was = site_session.active()
    audit_log.record("site-select", detail={"to": choice or "shipped"})
right.markdown(f"**In use:** {literal(site_view.in_use_line(was.profile))}")
if was.newer:
    right.warning(f"A newer version ({literal(was.newer)}) of this profile was adopted; this session still decides "
                  f"with version {literal(was.version)} until you switch.", icon=icons.SWITCHED)
    if right.button("Switch to the newer version", key=state.SITE_SWITCH):
        site_session.choose(was.folder, was.newer)
        audit_log.record("site-select", detail={"to": was.folder, "version": was.newer})
        st.rerun()
if was.error:
    st.error(f"The site profile {literal(was.folder)} can no longer be used ({literal(was.error)}); the shipped model "
             "is in use.",
             icon=icons.ERROR)
for p in listed:
    if p.profile is None and p.folder != was.folder:
        st.error(f"Site profile {literal(p.folder)} cannot be used: {literal(p.error)}", icon=icons.ERROR)
uploads = st.file_uploader("Drop one or more films", type=UPLOAD_TYPES, accept_multiple_files=True,
                           key=state.SCREEN_UPLOAD)
samples = sample_films()
sample = st.selectbox("…or try a sample film", samples, index=None, key=state.SCREEN_SAMPLE,
                      format_func=sample_title, placeholder="No sample film")

inputs = [(f.name, f.getvalue()) for f in uploads or []]
if sample is not None:
    inputs.append((sample.name, sample.read_bytes()))
children = {sample.name} if sample is not None and is_paediatric_sample(sample) else set()

if not inputs:
    st.info("Drop a film above, or pick a sample film to see how the app works.")
    st.stop()

audit_log.check()  # fail closed: nothing is scored when the audit trail cannot be written
shown: set[str] = set()
for name, data in inputs:
    loaded = load_film(name, data)
    if loaded.key in shown:  # the same film twice: once is enough (and its widgets are keyed by content)
        st.caption(f"{literal(name)} is the same film as one above.")
        continue
    shown.add(loaded.key)
    with st.container(border=True):
        st.subheader(literal(name))
        if loaded.film is None:
            st.error(f"{literal(name)} could not be read: {literal(loaded.error)}", icon=icons.ERROR)
            continue
        if name in children:
            st.warning(f"A child's film {CHILD_LABEL}: shown to demonstrate the app, not to be relied on.", icon=icons.WARNING)
        ex = explained(loaded.key, loaded.film)  # scored (cached), recorded, then shown: nothing shown unrecorded
        pred = ex.prediction
        chest = pred.ood is None or pred.ood.is_chest
        audit_log.once("screen", loaded.key, decision=(pred.label if chest else "not a chest film"),
                       probability=pred.probability if chest else None, profile=was.profile,
                       detail={"threshold": pred.threshold})
        show_result(loaded.key, loaded.film)
