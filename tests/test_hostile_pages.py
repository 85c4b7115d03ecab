"""The hostile corpus (tests/hostile.py) on every page, in-process (AppTest): every input field takes hostile
values and no exception box appears; every outside name reaches the page through webapp.views.literal only (the
browser test in test_literal.py shows that such text renders literally); the CSV export neutralises it; a
server folder with a FIFO, a character device and a 5 GB sparse file is evaluated without blocking."""
from __future__ import annotations

import csv
import io
import zipfile

import pydicom
import pytest

from covidxr.safety import FORMULA_STARTS
from tests.conftest import shared_data
from tests.hostile import (DICOM_VALUE, FORMULAS, LONG_NAME, MARKUP, NAMES, deadline, safe_file_name,
                           special_files)
from tests.test_pages import NORMAL_SAMPLE, SAMPLES, started_app, texts
from webapp.session import state
from webapp.views.literal import literal

pytestmark = [pytest.mark.slow, pytest.mark.model]
DICOM_FILM = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")
RAW = [t for t in MARKUP if any(c in t for c in "[*`:$<#>|~_!&")]  # texts Markdown would change if unescaped


@pytest.fixture
def app(classifier, monkeypatch):
    return started_app(classifier.directory, monkeypatch)


@pytest.fixture
def alarm():
    with deadline(600):
        yield


def shown_literally(at, names) -> None:
    """No exception; no outside text reached a Markdown element unescaped."""
    assert not at.exception
    everything = texts(at, raw=True) + [str(e.label) for e in at.checkbox]
    for raw in RAW:
        assert not any(raw in t for t in everything), raw


def film_bytes(i: int) -> bytes:
    """A real film, made distinct (JPEG ignores bytes after its end) so that each name is decoded and shown."""
    return NORMAL_SAMPLE.read_bytes() + bytes([i % 256]) * (i + 1)


def test_screen_page_shows_hostile_file_names_literally(app):
    names = NAMES[:6] + [n for n in NAMES if n.startswith(("[Log", "**BOLD", "report", "`code"))]
    app.file_uploader[0].set_value([(n, film_bytes(i), "image/jpeg") for i, n in enumerate(names)]
                                   + [("zz[Log in again](https:evil.example).png", b"not a film", "image/png")]).run()
    shown_literally(app, names)
    heads = [h.value for h in app.subheader]
    assert [literal(n) for n in names] == heads[:len(names)]
    assert any(e.value.startswith(literal("zz[Log in again](https:evil.example).png")) for e in app.error)


def test_a_dicom_with_markdown_in_its_header_is_shown_literally(app):
    ds = pydicom.dcmread(DICOM_FILM)
    ds.ViewPosition = DICOM_VALUE
    ds.Modality = DICOM_VALUE
    buf = io.BytesIO()
    ds.save_as(buf)
    app.file_uploader[0].set_value([("header.dcm", buf.getvalue(), "application/dicom")]).run()
    shown_literally(app, ["header.dcm"])
    assert any(literal(DICOM_VALUE) in t for t in texts(app, raw=True))  # in the facts line or the refusal


def test_evaluate_page_hostile_uploads_folder_and_profile_names(app, monkeypatch, tmp_path, alarm):
    app.switch_page("pages/evaluate.py").run()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, f in enumerate([f for f in FORMULAS if "\\" not in f][:4]):  # a backslash refuses the zip
            z.writestr(f"{f}/covid/{i}.jpg", film_bytes(i))
            z.writestr(f"{f}/normal/{i}.jpg", film_bytes(i + 9))
    files = [(n, film_bytes(i), "image/jpeg") for i, n in enumerate(NAMES)]
    files += [("covid\\site-a\\p1.png", film_bytes(99), "image/png"), (f"{FORMULAS[0]}.zip", buf.getvalue(),
                                                                       "application/zip")]
    app.file_uploader(key=state.EVAL_UPLOAD).set_value(files).run()
    app.button(key=state.EVAL_RUN).click().run()
    shown_literally(app, NAMES)
    batch = app.session_state[state.BATCH]
    assert len(batch.rows) == len(NAMES) + 1 + 8
    loose = {r.path: r for r in batch.rows if "/" not in r.path or r.path.startswith("[Log")}
    assert loose["covid\\site-a\\p1.png"].label is None and loose["covid\\site-a\\p1.png"].source is None
    report = batch.report()
    cells = [c for line in csv.reader(io.StringIO(report.to_csv(), newline="")) for c in line]
    assert not [c for c in cells if c.startswith(FORMULA_STARTS)]
    assert "'=cmd|' -c calc'!A0.png" in cells
    assert app.subheader[0].value.startswith("Results · ")

    monkeypatch.setattr("webapp.services.sites.fit_blocker", lambda batch: None)  # the name field, whatever the batch holds
    app.switch_page("pages/site_profiles.py").run()  # fitting lives on the Site profiles page (site admins; local: all)
    for name in [*MARKUP[:3], *FORMULAS[:2], "x" * 200, "\0", "CON", ".", "..", "a/b"]:
        app.text_input(key=state.SITE_NAME).set_value(name).run()
        shown_literally(app, [name])

    app.switch_page("pages/review.py").run()
    shown_literally(app, NAMES)
    assert any(literal(NAMES[0]) in c.value for c in app.caption)

    root = tmp_path / "root"
    made = special_files(root / "set" / "covid")
    (root / "set" / "normal").mkdir()
    for i, n in enumerate(NAMES[:5]):
        (root / "set" / "normal" / safe_file_name(n)).write_bytes(film_bytes(i))
    monkeypatch.setenv("COVIDXR_DATA_ROOTS", str(root))
    app.switch_page("pages/evaluate.py").run()
    app.radio(key=state.EVAL_SOURCE).set_value("A folder on the server").run()
    for folder in [LONG_NAME, "a/" + LONG_NAME, "\0", "../..", *FORMULAS[:2], *MARKUP[:4], "`x`"]:
        app.text_input(key=state.EVAL_FOLDER).set_value(folder).run()
        app.button(key=state.EVAL_RUN).click().run()
        shown_literally(app, [folder])
        assert any(e.value.startswith("Nothing was evaluated") for e in app.error), folder
    app.text_input(key=state.EVAL_FOLDER).set_value("set").run()
    app.button(key=state.EVAL_RUN).click().run()
    shown_literally(app, NAMES[:5])
    failed = {r.path.rsplit("/", 1)[1]: r.error for r in app.session_state[state.BATCH].rows if r.error}
    assert set(failed) == set(made)
    assert all(why in failed[n] or "outside the evaluated folder" in failed[n] for n, why in made.items())
