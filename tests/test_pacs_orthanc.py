"""The DICOM node against a real PACS: Debian's Orthanc (tests/orthanc.py) on free ports with its own folder.

Films go into Orthanc over its REST API; Orthanc sends the studies to the node (`POST /modalities/covidxr/store`),
and the node's SR and SC must then be in the same studies in Orthanc, and the worklist must say delivered. A
calling AE title not allowed is refused at association; an MR is acknowledged and ignored; with the PACS
stopped the results wait, say so, and arrive once it is started again. One Orthanc and one node per module.
"""
from __future__ import annotations

import threading

import pydicom
import pytest

from covidxr.pacs.node import Destination, Node, NodeConfig
from covidxr.pacs.worklist import Worklist
from tests.conftest import shared_data
from tests.orthanc import available, free_port, running_orthanc, wait_for

pytestmark = pytest.mark.slow

NODE_AET = "COVIDXR"
CHEST = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")         # SC class, Modality CR
# One study of two CR films: the Fuji chest (RLE) and a copy of it with its own SOP instance UID, the second film
# of the study. (Debian's Orthanc 1.10 cannot re-encode JPEG 2000 or mix JPEG Lossless into an association it
# opened for RLE, without the GDCM plugin: docs/pacs.md.)
FUJI = shared_data("dicom", "cxr", "derived", "fo-dicom_CR-MONO1-10-chest__RLE.dcm")
HIP = shared_data("dicom", "other", "nema-wg04_RG2_JPLL_CR_hip.dcm")             # CR, refused by the gate
MR = shared_data("dicom", "other", "pydicom_MR_small.dcm")
DOWN_FILM = shared_data("dicom", "cxr", "orthanc-issue44_CR_MONO1_jpeg-baseline.dcm")
RESULT_TIMEOUT_S = 240  # first films pay for imports on a busy 2-core machine


@pytest.fixture(scope="module")
def study_of_two(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("study")
    second = pydicom.dcmread(FUJI)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    second.InstanceNumber = 2
    second.save_as(folder / "second.dcm")
    return [FUJI, folder / "second.dcm"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    why = available()
    if why:
        pytest.fail(why)
    node_port = free_port()
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), {"covidxr": (NODE_AET, "127.0.0.1", node_port)}) as o:
        o.node_port = node_port
        yield o


@pytest.fixture(scope="module")
def node(pacs, classifier, tmp_path_factory):
    events: list[dict] = []
    said: list[str] = []
    db = tmp_path_factory.mktemp("worklist") / "worklist.db"
    config = NodeConfig(ae_title=NODE_AET, port=pacs.node_port, host="127.0.0.1",
                        destination=Destination.parse(pacs.send_to), allow=("ORTHANC", "MODALITY"),
                        retry_base_s=0.5, retry_max_s=2.0)
    n = Node(classifier, config, Worklist.open(f"sqlite:///{db}"), events=events.append, say=said.append)
    n.events_seen, n.said = events, said
    n.start()
    yield n
    n.stop(wait=False)


def c_store(port: int, path, calling: str = "MODALITY"):
    """Send one file to the node as a modality would; (association established?, status or None)."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False, assoc.is_rejected
    try:
        status = assoc.send_c_store(ds)
        return True, getattr(status, "Status", None)
    finally:
        assoc.release()


def results_in(pacs, study_id: str, n_films: int, n_results: int):
    found = pacs.instances(study_id)
    return found if len(found) >= n_films + n_results else None


def test_orthanc_sends_studies_and_gets_sr_and_sc_back_in_the_same_studies(pacs, node, study_of_two):
    up = [pacs.upload(p) for p in [CHEST, *study_of_two, HIP]]
    studies = list(dict.fromkeys(u["ParentStudy"] for u in up))
    pacs.send_study("covidxr", studies)
    chest = wait_for(lambda: results_in(pacs, up[0]["ParentStudy"], 1, 2), RESULT_TIMEOUT_S)
    assert chest, f"no results in the study: {node.said[-5:]}"
    assert sorted(i["modality"] for i in chest) == ["CR", "OT", "SR"]
    sr = next(i for i in chest if i["modality"] == "SR")
    assert "RESEARCH USE" in sr["series_description"]
    two = wait_for(lambda: results_in(pacs, up[1]["ParentStudy"], 2, 4), RESULT_TIMEOUT_S)  # two films, 2 x (SR+SC)
    assert two and sorted(i["modality"] for i in two).count("SR") == 2
    # the hip (CR, in the NEMA study): scored as refused, an SR saying not assessed, no SC
    hip = wait_for(lambda: [i for i in pacs.instances(up[3]["ParentStudy"]) if i["modality"] in ("SR", "OT")],
                   RESULT_TIMEOUT_S)
    assert [i["modality"] for i in hip] == ["SR"]
    assert wait_for(lambda: node.idle(), 60)
    studies_seen = {s.study_uid: s for s in node.worklist.studies()}
    chest_uid = pydicom.dcmread(CHEST, stop_before_pixels=True).StudyInstanceUID
    assert studies_seen[chest_uid].delivery == "delivered" and studies_seen[chest_uid].state == "scored"
    hip_uid = pydicom.dcmread(HIP, stop_before_pixels=True).StudyInstanceUID
    assert studies_seen[hip_uid].state == "refused" and "HIP" in studies_seen[hip_uid].reason
    assert studies_seen[hip_uid].delivery == "delivered"
    assert len(studies_seen[pydicom.dcmread(FUJI, stop_before_pixels=True).StudyInstanceUID].films) == 2
    rows = node.worklist.rows()
    assert all(set(r) >= {"study_uid", "sop_uid", "accession", "probability", "state", "delivery"} for r in rows)
    text = repr(rows)
    for ident in ("PatientName", str(pydicom.dcmread(CHEST, stop_before_pixels=True).PatientID)):
        assert ident not in text                                        # no patient identity in the worklist
    assert any(e["action"] == "dicom.node.deliver" and e["outcome"] == "delivered" and e["user"] == "ORTHANC"
               for e in node.events_seen)


def test_a_calling_ae_title_not_allowed_is_refused_and_recorded(node):
    established, rejected = c_store(node.config.port, CHEST, calling="INTRUDER")
    assert not established and rejected
    assert wait_for(lambda: any(e["action"] == "dicom.node.association" and e["user"] == "INTRUDER"
                                and e["outcome"] == "refused" for e in node.events_seen), 10)
    assert any("INTRUDER" in line for line in node.said)


def test_other_sop_classes_are_acknowledged_ignored_and_recorded(node):
    before = len(node.worklist.rows())
    established, status = c_store(node.config.port, MR)
    assert established and status == 0x0000
    assert any(e["action"] == "dicom.node.ignored" for e in node.events_seen)
    assert len(node.worklist.rows()) == before


def test_several_associations_at_once(node, pacs, study_of_two):
    films = [CHEST, *study_of_two]
    out: list = [None] * len(films)

    def send(i):
        out[i] = c_store(node.config.port, films[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(films))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out == [(True, 0x0000)] * len(films)
    assert wait_for(lambda: node.idle(), RESULT_TIMEOUT_S)
    assert all(r["delivery"] == "delivered" for r in node.worklist.rows() if r["state"] != "error")


def test_the_pacs_down_then_up_still_gets_the_results(node, pacs):
    study_uid = pydicom.dcmread(DOWN_FILM, stop_before_pixels=True).StudyInstanceUID
    pacs.stop()
    try:
        assert c_store(node.config.port, DOWN_FILM) == (True, 0x0000)
        row = wait_for(lambda: next((r for r in node.worklist.rows() if r["study_uid"] == study_uid
                                     and r["delivery"] == "undelivered" and r["attempts"] >= 2), None), RESULT_TIMEOUT_S)
        assert row and row["error"]                                     # visible in the worklist, with why
        assert any("retrying" in line and study_uid in line for line in node.said)
        assert any(e["action"] == "dicom.node.deliver" and e["outcome"] == "undelivered" for e in node.events_seen)
    finally:
        pacs.start()
    delivered = wait_for(lambda: next((r for r in node.worklist.rows() if r["study_uid"] == study_uid
                                       and r["delivery"] == "delivered"), None), 60)
    assert delivered
    sid = pacs.study_id(study_uid)
    assert sid and sorted(i["modality"] for i in pacs.instances(sid)) == ["OT", "SR"]  # the film itself never went in


def test_results_by_stow_rs(pacs, classifier, tmp_path):
    """--stow-url: the same results, sent by STOW-RS (dicomweb-client) to Orthanc's DICOMweb root."""
    config = NodeConfig(ae_title="COVIDXR2", port=free_port(), host="127.0.0.1",
                        destination=Destination.parse(None, pacs.dicomweb), allow=("MODALITY",))
    n = Node(classifier, config, Worklist.open(f"sqlite:///{tmp_path / 'stow.db'}"), say=lambda m: None)
    n.start(warm=False)
    try:
        film = shared_data("dicom", "cxr", "nih-cxr_DX_1024_8bit.dcm")   # DX in a secondary capture
        assert c_store(config.port, film, calling="MODALITY") == (True, 0x0000)
        study_uid = pydicom.dcmread(film, stop_before_pixels=True).StudyInstanceUID
        assert wait_for(lambda: n.idle(), RESULT_TIMEOUT_S)
        sid = pacs.study_id(study_uid)
        assert sid and sorted(i["modality"] for i in pacs.instances(sid)) == ["OT", "SR"]
        assert [r["delivery"] for r in n.worklist.rows()] == ["delivered"]
    finally:
        n.stop(wait=False)
