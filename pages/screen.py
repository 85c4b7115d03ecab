"""Screen a film: drop films (or pick a sample) -> decision, probabilities, film and Grad-CAM side by side."""
import streamlit as st

from webapp import sites, state
from webapp.literal import literal
from webapp.films import CHILD_LABEL, UPLOAD_TYPES, is_paediatric_sample, load_film, sample_films, sample_title
from webapp.model import classifier
from webapp.view import show_result

st.title("Screen a chest X-ray for a COVID-19 pattern")
st.caption("Frontal (PA/AP) chest radiographs of adults: PNG, JPEG, DICOM, BMP or TIFF. Films stay in this "
           "session's memory; nothing is stored.")

clf = classifier()  # loaded when the page opens (once per server), not after the first drop

# The operating point in use in this session: the shipped model's, or a site profile saved in the server's profile
# folder (Batch evaluation page, or `python -m covidxr site fit`). A profile that does not load cannot be chosen.
was = sites.active()
listed = sites.list_profiles(sites.sites_dir(), clf.card)
usable = {p.folder: p.profile for p in listed if p.profile is not None}
options = [None, *usable]
if state.SITE_SELECT not in st.session_state or st.session_state[state.SITE_SELECT] not in options:
    st.session_state[state.SITE_SELECT] = was.folder if was.folder in usable else None  # kept across pages
left, right = st.columns([2, 3])
choice = left.selectbox("Operating point", options, key=state.SITE_SELECT,
                        format_func=lambda f: sites.SHIPPED if f is None else f"Site profile: {f}",
                        disabled=len(options) == 1,
                        help="A site profile is this model recalibrated on a hospital's own labelled films "
                             "(fitted on the Batch evaluation page). No profile is saved on this server yet."
                        if len(options) == 1 else "A site profile is this model recalibrated on a hospital's own "
                                                  "labelled films; use one only where its figures were clearly better.")
st.session_state[state.SITE_ACTIVE] = choice
right.markdown(f"**In use:** {literal(sites.in_use_line(usable.get(choice)))}")
if was.error:
    st.error(f"The site profile {literal(was.folder)} can no longer be used ({literal(was.error)}); the shipped model "
             "is in use.",
             icon="🚫")
for p in listed:
    if p.profile is None and p.folder != was.folder:
        st.error(f"Site profile {literal(p.folder)} cannot be used: {literal(p.error)}", icon="🚫")
uploads = st.file_uploader("Drop one or more films", type=UPLOAD_TYPES, accept_multiple_files=True,
                           key=state.SCREEN_UPLOAD)
samples = sample_films()
sample = st.selectbox("…or try a sample film", [None, *samples], key=state.SCREEN_SAMPLE,
                      format_func=lambda p: "—" if p is None else sample_title(p))

inputs = [(f.name, f.getvalue()) for f in uploads or []]
if sample is not None:
    inputs.append((sample.name, sample.read_bytes()))
children = {sample.name} if sample is not None and is_paediatric_sample(sample) else set()

if not inputs:
    st.info("Drop a film above, or pick a sample film to see how the app works.")
    st.stop()

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
            st.error(f"{literal(name)} could not be read: {literal(loaded.error)}", icon="🚫")
            continue
        if name in children:
            st.warning(f"A child's film {CHILD_LABEL}: shown to demonstrate the app, not to be relied on.", icon="⚠️")
        show_result(loaded.key, loaded.film)
