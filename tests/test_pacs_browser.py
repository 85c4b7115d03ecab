"""The Worklist page in Debian's Chromium: the studies of a worklist database ranked by score, and a study opened
with its film fetched from a real Orthanc by DICOMweb WADO-RS, shown in the Screen page's result view.

The worklist rows are written with covidxr.pacs.worklist as the node writes them (the node itself is tested
in test_pacs_orthanc.py), with the shipped model's real scores of the films that are in Orthanc.
"""
from __future__ import annotations

import os
import re

import pydicom
import pytest
from playwright.sync_api import expect, sync_playwright

from covidxr.films import read_film
from covidxr.pacs.worklist import Worklist
from tests.conftest import shared_data
from tests.orthanc import available, running_orthanc
from tests.browser import CHROMIUM, CHROMIUM_ARGS, OVERLAYS_READY_JS, SCRIPT_IDLE, VERDICT_PATTERN, require_chromium, running_app

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHEST = shared_data("dicom", "cxr", "nema-wg04_RG1_J2KI.dcm")      # accession "exam Number", scored high
LOW = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")
HIP = shared_data("dicom", "other", "nema-wg04_RG2_JPLL_CR_hip.dcm")
TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory, classifier):
    why = available()
    if why:
        pytest.fail(why)
    folder = tmp_path_factory.mktemp("worklist-page")
    db = f"sqlite:///{folder / 'worklist.db'}"
    wl = Worklist.open(db)
    with running_orthanc(folder / "orthanc", {}) as pacs:
        for path in (CHEST, LOW, HIP):
            pacs.upload(path)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            row = wl.received(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                              str(ds.get("AccessionNumber", "") or ""), "ORTHANC")
            pred = classifier.predict([read_film(path)])[0]
            if pred.ood is not None and not pred.ood.is_chest:
                wl.update(row, state="refused", decision="not assessed", reason="; ".join(pred.ood.reasons),
                          delivery="delivered")
            else:
                wl.update(row, state="scored", probability=pred.probability, threshold=pred.threshold,
                          decision=pred.label, delivery="delivered")
        env = {**os.environ, "COVIDXR_DB": db, "COVIDXR_DICOMWEB_URL": pacs.dicomweb,
               "COVIDXR_WEIGHTS": str(classifier.directory), "COVIDXR_THREADS": "1"}
        env.pop("COVIDXR_DATA_ROOTS", None)
        with running_app(folder / "server.log", env=env) as app:
            yield app.url, wl


def test_the_worklist_ranks_studies_and_opens_a_film_from_the_pacs(setup):
    url, wl = setup
    studies = wl.studies()
    assert studies[0].probability > studies[1].probability and studies[-1].probability is None  # the hip last
    require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page.goto(f"{url}/pacs-worklist")
        expect(page.get_by_role("heading", level=1).filter(has_text="Worklist")).to_be_visible()
        page.wait_for_selector(SCRIPT_IDLE)
        expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()
        page.get_by_role("combobox").last.click()
        options = page.get_by_role("option")
        texts = options.all_inner_texts()
        # No empty option (a placeholder, #28): the highest score first, its accession shown as is
        assert texts[0].startswith("1.") and "exam Number" in texts[0]
        assert texts[-1].startswith("3.") and "no score" in texts[-1]
        options.nth(0).click()
        expect(page.get_by_text(re.compile(VERDICT_PATTERN)).first).to_be_visible()
        page.wait_for_function(OVERLAYS_READY_JS, arg=1)
        expect(page.get_by_text(re.compile(r"Positive for COVID-19 pattern")).first).to_be_visible()  # the NEMA film
        assert page.get_by_text(re.compile(r"^No COVID-19 pattern")).count() == 0
        browser.close()
