"""Screen a film: drop films (or pick a sample) -> decision, probabilities, film and Grad-CAM side by side."""
import streamlit as st

from webapp import state
from webapp.films import CHILD_LABEL, UPLOAD_TYPES, is_paediatric_sample, load_film, sample_films, sample_title
from webapp.model import classifier
from webapp.view import show_result

st.title("Screen a chest X-ray for a COVID-19 pattern")
st.caption("Frontal (PA/AP) chest radiographs of adults: PNG, JPEG, DICOM, BMP or TIFF. Films stay in this "
           "session's memory; nothing is stored.")

classifier()  # loaded when the page opens (once per server), not after the first drop
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
        st.caption(f"{name} is the same film as one above.")
        continue
    shown.add(loaded.key)
    with st.container(border=True):
        st.subheader(name)
        if loaded.film is None:
            st.error(f"{name} could not be read: {loaded.error}", icon="🚫")
            continue
        if name in children:
            st.warning(f"A child's film {CHILD_LABEL}: shown to demonstrate the app, not to be relied on.", icon="⚠️")
        show_result(loaded.key, loaded.film)
