"""DICOM results (covidxr/pacs): the SR and secondary capture `dicom score` writes, checked with pydicom and
Debian's dciodvfy (dicom3tools), and the command's rows and exit codes. The node and Orthanc: test_pacs_orthanc.py."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidxr.pacs import results
from covidxr.pacs.cli import score_files
from tests.conftest import shared_data

CHEST = shared_data("dicom", "cxr", "nema-wg04_RG1_J2KI.dcm")          # scored positive
CHEST_NEG = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")
HEADERLESS = shared_data("dicom", "cxr", "fo-dicom_CR-MONO1-10-chest.dcm")  # no File Meta, no preamble
HIP = shared_data("dicom", "other", "nema-wg04_RG2_JPLL_CR_hip.dcm")
CT = shared_data("dicom", "other", "pydicom_CT_small.dcm")


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian's dicom3tools) is missing: scripts/setup.sh --browser installs it")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stderr + out.stdout).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def scored_out(classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom-out")
    events: list[dict] = []
    rows = score_files(classifier, [str(CHEST), str(CHEST_NEG), str(HEADERLESS), str(HIP), str(CT)], out,
                       events=events.append, user="tester")
    return out, rows, events


def items(ds) -> list:
    """Every content item of an SR, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found += items(item)
    return found


def concept(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


@pytest.mark.slow
def test_every_result_passes_dciodvfy_and_sits_in_the_films_study_in_a_new_series(scored_out):
    out, rows, _ = scored_out
    files = sorted(p for p in out.rglob("*.dcm"))
    assert len(files) == 3 * 2 + 2                    # 3 chest films x (SR + SC), 2 refused films x SR
    for p in files:
        assert dciodvfy_errors(p) == [], p
    for row in rows:
        src = pydicom.dcmread(row["path"], stop_before_pixels=True, force=True)
        for key in ("sr", "sc"):
            if row[key] is None:
                continue
            ds = pydicom.dcmread(row[key])
            assert ds.StudyInstanceUID == src.StudyInstanceUID == row["study_uid"]
            assert ds.SeriesInstanceUID != src.SeriesInstanceUID
            assert str(ds.get("PatientID", "")) == str(src.get("PatientID", ""))
            assert "RESEARCH USE" in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.SeriesDescription
            equipment = [e.Manufacturer for e in ds.ContributingEquipmentSequence]
            assert results.MANUFACTURER in equipment


@pytest.mark.slow
def test_the_sr_carries_the_finding_probability_decision_operating_point_and_algorithm(scored_out, classifier):
    _, rows, _ = scored_out
    row = rows[0]
    assert row["chest_xray"] and row["label"] == "covid"
    sr = pydicom.dcmread(row["sr"])
    assert sr.Modality == "SR" and sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.VerificationFlag == "UNVERIFIED" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    all_items = items(sr)
    codes = {(c.CodeValue, c.CodingSchemeDesignator) for i in all_items for c in i.get("ConceptCodeSequence", [])}
    assert ("840539006", "SCT") in codes                       # COVID-19, as the finding type and the evaluation
    nums = {concept(i): i.MeasuredValueSequence[0] for i in all_items if i.ValueType == "NUM"}
    prob = nums["Probability"]
    assert prob.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert float(prob.NumericValue) == pytest.approx(row["probability"], abs=1e-5)
    assert float(nums["CAD Operating Point"].NumericValue) == pytest.approx(classifier.threshold, abs=1e-5)
    evaluation = [i for i in all_items if i.ValueType == "CODE" and concept(i) == "COVID-19"]
    assert evaluation and evaluation[0].ConceptCodeSequence[0].CodeMeaning == "Present"
    texts = {concept(i): str(i.TextValue) for i in all_items if i.ValueType == "TEXT"}
    assert texts["Algorithm Name"] == classifier.card.name
    assert classifier.card.weights_sha256[:12] in texts["Algorithm Version"]
    params = " ".join(str(i.TextValue) for i in all_items if i.ValueType == "TEXT" and concept(i) == "Algorithm Parameters")
    assert classifier.card.weights_sha256 in params and "shipped model" in params
    refs = [i for i in all_items if i.ValueType == "IMAGE"]
    src = pydicom.dcmread(CHEST, stop_before_pixels=True)
    assert refs[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    negative = pydicom.dcmread(rows[1]["sr"])
    assert any(concept(i) == "COVID-19" and i.ConceptCodeSequence[0].CodeMeaning == "Absent"
               for i in items(negative) if i.ValueType == "CODE")


@pytest.mark.slow
def test_the_secondary_capture_is_the_apps_report_picture_burned_in(scored_out, classifier):
    _, rows, _ = scored_out
    sc = pydicom.dcmread(rows[0]["sc"])
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BurnedInAnnotation == "YES"
    scored = results.score(classifier, CHEST.read_bytes(), CHEST.name)
    picture = results.report_picture(scored, classifier)
    stored = sc.pixel_array
    assert stored.shape == picture.shape
    assert np.abs(stored.astype(int) - picture.astype(int)).mean() < 1.0   # the same drawing (Grad-CAM is deterministic)
    film_rows = scored.film.pixels.shape[0]
    top = stored[:film_rows].astype(int)
    assert (top[..., 0] - top[..., 2] > 60).any()                       # jet's red: the film was called positive


@pytest.mark.slow
def test_a_refused_film_gets_an_sr_saying_not_assessed_and_why_and_no_sc(scored_out):
    _, rows, events = scored_out
    for row, why in ((rows[3], "HIP"), (rows[4], "CT")):
        assert row["chest_xray"] is False and row["sc"] is None and row["probability"] is None
        texts = [str(i.TextValue) for i in items(pydicom.dcmread(row["sr"])) if i.ValueType == "TEXT"]
        assert any(t.startswith("Not assessed") and why in t for t in texts)
        nums = [i for i in items(pydicom.dcmread(row["sr"])) if i.ValueType == "NUM"]
        assert nums == []                                                  # no score where the gate refused
    assert [e["outcome"] for e in events] == ["scored", "scored", "scored", "refused", "refused"]
    e = events[0]
    assert e["user"] == "tester" and e["decision"] == "covid" and 0 <= e["probability"] <= 1
    sha = __import__("hashlib").sha256(CHEST.read_bytes()).hexdigest()
    assert e["object"].startswith("study=") and f"sha256={sha}" in e["object"]
    assert CHEST.name not in json.dumps(events)                            # no file names in the trail


@pytest.mark.slow
def test_the_command_gives_an_error_row_and_exit_2_for_a_file_that_is_no_dicom_film(tmp_path, capsys, classifier):
    from covidxr import cli

    sr_only = tmp_path / "report.dcm"                                      # a DICOM without pixels: our own SR
    rows = score_files(classifier, [str(CHEST_NEG)], tmp_path / "first")
    shutil.copy(rows[0]["sr"], sr_only)
    jpeg = Path(__file__).resolve().parents[1] / "samples" / "normal" / "00001300_000.jpg"
    out = tmp_path / "out"
    rc = cli.main(["dicom", "score", str(jpeg), str(sr_only), "--out", str(out), "--json",
                   "--weights", str(classifier.directory)])
    got = json.loads(capsys.readouterr().out)
    assert rc == 2
    assert [set(r) for r in got] == [{"path", "error"}] * 2
    assert "not a DICOM file" in got[0]["error"] and "no image" in got[1]["error"]
    assert not out.exists() or not any(out.rglob("*"))                     # nothing written for them


# ---------------------------------------------------------------- the node's settings and its worklist (no network)

def test_destinations_parse_or_say_what_is_wrong():
    from covidxr.pacs.node import Destination, NodeConfig

    d = Destination.parse("ORTHANC@pacs.example:4242")
    assert (d.ae_title, d.host, d.port, d.stow_url) == ("ORTHANC", "pacs.example", 4242, "")
    assert Destination.parse(None, "http://pacs:8042/dicom-web").stow_url == "http://pacs:8042/dicom-web"
    for bad in ("ORTHANC", "ORTHANC@pacs", "@pacs:1", "A_TITLE_LONGER_THAN_16@h:1", "X@h:99999"):
        with pytest.raises(ValueError, match="AET@HOST:PORT"):
            Destination.parse(bad)
    with pytest.raises(ValueError, match="--send-to"):
        Destination.parse(None, None)
    assert NodeConfig("COVIDXR", 1, d).allowed == ("ORTHANC",)           # default: only the PACS it answers
    assert NodeConfig("COVIDXR", 1, d, allow=("A", "B")).allowed == ("A", "B")


def test_serve_refuses_to_start_without_anyone_allowed(capsys):
    from covidxr import cli

    rc = cli.main(["dicom", "serve", "--ae-title", "X", "--port", "1", "--stow-url", "http://pacs/dicom-web"])
    assert rc == 1 and "--allow" in capsys.readouterr().err


def test_a_missing_library_gives_one_clear_line(monkeypatch):
    import importlib.util

    from covidxr import pacs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynetdicom" else real(name, *a))
    with pytest.raises(pacs.PacsDependencyError, match=r"pynetdicom not installed.*covidxr\[pacs\]"):
        pacs.require("pynetdicom", "highdicom")


def test_the_worklist_ranks_studies_keeps_no_identity_and_forgets_after_retention(tmp_path, monkeypatch):
    import datetime as dt

    from covidxr.pacs.worklist import Worklist

    wl = Worklist.open(f"sqlite:///{tmp_path / 'w.db'}")
    a = wl.received("1.2.3", "1.2.3.1", "1.2.3.1.1", "ACC1", "ORTHANC")
    b1 = wl.received("1.2.4", "1.2.4.1", "1.2.4.1.1", "ACC2", "ORTHANC")
    b2 = wl.received("1.2.4", "1.2.4.1", "1.2.4.1.2", "ACC2", "ORTHANC")
    c = wl.received("1.2.5", "1.2.5.1", "1.2.5.1.1", "", "ORTHANC")
    wl.update(a, state="scored", probability=0.2, decision="covid", delivery="delivered")
    wl.update(b1, state="scored", probability=0.9, decision="covid", delivery="delivered")
    wl.update(b2, state="scored", probability=0.1, decision="non-covid", delivery="undelivered", error="down")
    wl.update(c, state="refused", decision="not assessed", reason="DICOM modality is CT", delivery="delivered")
    studies = wl.studies()
    assert [s.study_uid for s in studies] == ["1.2.4", "1.2.3", "1.2.5"]   # by the study's highest score, unscored last
    assert studies[0].probability == 0.9 and studies[0].delivery == "undelivered" and len(studies[0].films) == 2
    assert studies[2].state == "refused" and "CT" in studies[2].reason
    with pytest.raises(ValueError):
        wl.update(a, state="maybe")
    columns = {c.name for c in wl.table.columns}
    assert not {c for c in columns if "patient" in c or "name" in c or "pixel" in c}
    old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=31)
    with wl.engine.begin() as conn:
        conn.execute(wl.table.update().where(wl.table.c.id == a).values(received_at=old))
    assert wl.purge() == 1 and {r["id"] for r in wl.rows()} == {b1, b2, c}
    monkeypatch.setenv("COVIDXR_WORKLIST_DAYS", "0")
    assert wl.purge() == 3


@pytest.mark.slow
def test_the_worklist_page_without_a_database_says_so_and_creates_none(classifier, monkeypatch, tmp_path):
    from tests.test_pages import started_app

    monkeypatch.delenv("COVIDXR_DB", raising=False)
    monkeypatch.chdir(tmp_path)  # where the default database (data/audit.db) would be
    at = started_app(classifier.directory, monkeypatch)
    at.switch_page("pages/worklist.py").run()
    assert not at.exception
    assert any("No worklist database yet" in i.value for i in at.info)
    assert not any(tmp_path.rglob("*"))                                   # the page made no database


@pytest.mark.slow
def test_the_worklist_page_lists_studies_with_dicom_values_as_data(classifier, monkeypatch, tmp_path):
    from covidxr.pacs.worklist import Worklist
    from tests.test_pages import started_app

    db = f"sqlite:///{tmp_path / 'w.db'}"
    wl = Worklist.open(db)
    row = wl.received("1.2.3", "1.2.3.1", "1.2.3.1.1", "**ACC_1**", "ORTHANC")   # markdown-looking accession
    wl.update(row, state="scored", probability=0.7, decision="covid", delivery="undelivered", error="down")
    monkeypatch.setenv("COVIDXR_DB", db)
    at = started_app(classifier.directory, monkeypatch)
    at.switch_page("pages/worklist.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["accession"]) == ["**ACC_1**"] and "NOT in the PACS" in table["delivery"][0]
    assert "**ACC_1**" in at.selectbox[0].options[0]                     # shown literally in the chooser
    assert at.selectbox[0].proto.placeholder == "No study open"           # not "Choose an option"


@pytest.mark.slow
def test_an_audit_that_cannot_be_written_stops_dicom_score_before_it_writes(classifier, tmp_path):
    from covidxr.pacs.events import AuditFailed

    def broken(event):
        raise OSError("disk full")

    with pytest.raises(AuditFailed, match="disk full"):
        score_files(classifier, [str(CHEST_NEG)], tmp_path / "out", events=broken)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_with_a_site_profile_the_sr_names_it_and_decides_at_its_point(classifier, tmp_path, capsys):
    from covidxr import cli
    from tests.test_site_pages import made_profile

    profile = made_profile("Ward 7", classifier.card.weights_sha256)
    profile.save(tmp_path / "ward7")
    rc = cli.main(["dicom", "score", str(CHEST_NEG), "--out", str(tmp_path / "out"), "--json", "--site",
                   str(tmp_path / "ward7"), "--weights", str(classifier.directory)])
    row = json.loads(capsys.readouterr().out)[0]
    assert rc == 0 and row["site"] == "Ward 7" and row["threshold"] == pytest.approx(profile.threshold)
    sr = pydicom.dcmread(row["sr"])
    texts = " ".join(str(i.TextValue) for i in items(sr) if i.ValueType == "TEXT")
    assert "site profile Ward 7" in texts and profile.created in texts
    nums = {concept(i): float(i.MeasuredValueSequence[0].NumericValue) for i in items(sr) if i.ValueType == "NUM"}
    assert nums["CAD Operating Point"] == pytest.approx(profile.threshold, abs=1e-5)
    assert dciodvfy_errors(Path(row["sr"])) == [] and dciodvfy_errors(Path(row["sc"])) == []


@pytest.mark.slow
def test_the_secondary_capture_names_its_study_not_its_patient_and_carries_the_scale(classifier, tmp_path):
    """Issue 28: the SC's burned-in text says which film it is (accession number and study date, never the
    patient's name), whose operating point decided, and the picture carries the labelled colour scale; it still
    validates."""
    from copy import deepcopy

    from webapp.views import images

    scored = results.score(classifier, CHEST.read_bytes(), CHEST.name)
    scored.header = deepcopy(scored.header)
    scored.header.AccessionNumber, scored.header.StudyDate = "ACC-0042", "20200315"
    scored.header.PatientName = "Doe^Jane"
    lines = results.picture_lines(scored, classifier)
    assert "Accession number: ACC-0042" in lines and "Study date: 2020-03-15" in lines
    assert not any("Doe" in x or "Jane" in x for x in lines)
    assert any("shipped model" in x and "operating point" in x for x in lines)
    assert any("not the chance that this patient has COVID-19" in x for x in lines)
    picture = results.report_picture(scored, classifier)
    drawing_rows = scored.film.pixels.shape[0]
    legend = images.labelled_bar(max(scored.film.pixels.shape[1], 480), "covid", scored.prediction.probability, False)
    assert picture.shape[0] >= drawing_rows + legend.shape[0] + 8 + 20 * len(lines)   # drawing, scale, text
    band = picture[drawing_rows + 4: drawing_rows + 4 + 6].astype(int)                 # the scale's colours
    assert band[..., 2].max() - band[..., 0].min() > 100 and (band[..., 0] > 200).any()
    [path] = results.write([results.make_sc(scored, classifier)], tmp_path)
    assert dciodvfy_errors(path) == []
