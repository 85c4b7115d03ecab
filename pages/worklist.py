"""Worklist: the studies the DICOM node received (`dicom serve`), highest COVID-19 score first; a study opens
with its films fetched from the PACS (DICOMweb WADO-RS) in the Screen page's result view."""
import streamlit as st

from covidxr.pacs.wado import DICOMWEB_ENV, WadoError, dicomweb_url, fetch_film
from covidxr.audit import default_url
from covidxr.pacs.worklist import Worklist
from webapp.session import state
from webapp.session.films import load_film
from webapp.views.view import show_result
from webapp.services.worklist import study_label, study_rows
from webapp.views.wording import score_meaning
from webapp.views import icons

st.title("Worklist")
st.caption("Studies the DICOM node received, highest COVID-19 score first (triage). A research screening aid, "
           "not a diagnosis: every study is read by a radiologist whatever its rank.")

url = default_url(existing=True)  # the page never creates a database
if url is None:
    st.info("No worklist database yet: the DICOM node (`python -m covidxr dicom serve`) creates it "
            "(COVIDXR_DB, or the default SQLite file) when it starts.")
    st.stop()
try:
    studies = Worklist.open(url).studies()
except Exception as e:  # noqa: BLE001 - the database is down or unreadable: say so, show nothing
    st.error("The worklist database cannot be read.", icon=icons.ERROR)
    st.code(str(e), language=None)
    st.stop()
if not studies:
    st.info("No study yet: the DICOM node (`python -m covidxr dicom serve`) lists here what the PACS sends it.")
    st.stop()
st.dataframe(study_rows(studies), hide_index=True, width="stretch",
             column_config={"COVID-19 score": st.column_config.TextColumn(help=score_meaning("covid", short=True))})
pick = st.selectbox("Open a study", list(range(len(studies))), index=None, key=state.WORKLIST_STUDY,
                    format_func=lambda i: study_label(i + 1, studies[i]), placeholder="No study open")
if pick is None:
    st.stop()
study = studies[pick]
if not dicomweb_url():
    st.error(f"Set {DICOMWEB_ENV} to the PACS's DICOMweb root to open films from it.", icon=icons.ERROR)
    st.stop()
for film_row in study.films:
    with st.container(border=True):
        st.text(f"Film {film_row['sop_uid']}")
        try:
            with st.spinner("Fetching the film from the PACS…"):
                data = fetch_film(study.study_uid, film_row["series_uid"], film_row["sop_uid"])
        except WadoError as e:
            st.error("This film could not be fetched from the PACS.", icon=icons.ERROR)
            st.text(str(e))
            continue
        loaded = load_film(f"{film_row['sop_uid']}.dcm", data)
        if loaded.film is None:
            st.error("This film could not be read.", icon=icons.ERROR)
            st.text(loaded.error)
            continue
        show_result(loaded.key, loaded.film)
