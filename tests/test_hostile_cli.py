"""The hostile corpus (tests/hostile.py) through the command line: `predict` (and its DICOM path), `evaluate
--csv`, `site fit`. Special files are made in tmp; every refusal is one line, nothing blocks, the other films
are scored, the CSV holds no formula cell and the JSON keeps the raw names."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pydicom
import pytest

from covidxr import cli
from covidxr.safety import FORMULA_STARTS
from tests.conftest import shared_data
from tests.hostile import DICOM_VALUE, FORMULAS, MARKUP, NAMES, deadline, safe_file_name, special_files

pytestmark = [pytest.mark.slow, pytest.mark.model]
KAGGLE = shared_data("cxr", "kaggle-radiography-db-224px")
DICOM_FILM = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")


@pytest.fixture(autouse=True)
def alarm():
    with deadline(600):
        yield


def films(cls: str, n: int) -> list[Path]:
    found = sorted(p for p in (KAGGLE / cls).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    assert len(found) == n
    return found


def test_predict_hostile_names_special_files_and_dicom_values(tmp_path, classifier, capsys):
    made = special_files(tmp_path / "bad")
    good = []
    for i, (name, src) in enumerate(zip(NAMES[:6], films("normal", 6))):
        good.append(tmp_path / safe_file_name(name))
        good[-1].write_bytes(src.read_bytes())
    ds = pydicom.dcmread(DICOM_FILM)
    ds.ViewPosition = ds.Modality = DICOM_VALUE
    ds.save_as(tmp_path / "header.dcm")
    bad = [tmp_path / "bad" / n for n in made]
    rc = cli.main(["predict", *map(str, good + [tmp_path / "header.dcm"] + bad), "--json",
                   "--weights", str(classifier.directory)])
    out, err = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert rc == 2
    assert all(rows[p.name]["probability"] is not None for p in good)  # the raw names, scored
    assert "error" not in rows["header.dcm"]                            # read; scored or refused by the gate
    lines = err.strip().splitlines()
    assert len(lines) == len(made)
    for name, why in made.items():
        assert why in rows[name]["error"] and any(line.endswith(rows[name]["error"]) for line in lines)


def test_evaluate_csv_neutralises_hostile_sources_labels_and_names(tmp_path, classifier, capsys):
    source = safe_file_name(FORMULAS[1])  # =HYPERLINK("http:\\evil.example","src")
    for cls, label in (("covid", "covid"), ("normal", FORMULAS[0])):
        d = tmp_path / "set" / source / safe_file_name(label)
        d.mkdir(parents=True)
        for i, f in enumerate(films(cls if cls == "covid" else "normal", 3)):
            (d / safe_file_name(f"{NAMES[i + 2 * (cls == 'covid')]}")).write_bytes(f.read_bytes())
    special_files(tmp_path / "set" / source / "covid")
    out, table = tmp_path / "eval.json", tmp_path / "rows.csv"
    rc = cli.main(["evaluate", str(tmp_path / "set"), "--json", str(out), "--csv", str(table),
                   "--weights", str(classifier.directory)])
    capsys.readouterr()
    report = json.loads(out.read_text())
    assert rc == 2 and report["n"] == 6 and report["n_errors"] >= 3, report["images"]
    assert {i["source"] for i in report["images"]} == {source}  # JSON: the raw value
    cells = list(csv.reader(io.StringIO(table.read_text(), newline="")))
    assert len(cells) == len(report["images"]) + 1
    assert not [c for line in cells for c in line if c.startswith(FORMULA_STARTS)]
    assert {line[2] for line in cells[1:]} == {"'" + source}
    assert "'" + FORMULAS[0].lower() in {line[1] for line in cells[1:]}


def test_site_fit_with_a_hostile_name_and_special_files(tmp_path, classifier, capsys):
    for cls in ("covid", "normal"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for f in films(cls, 8):
            (tmp_path / "set" / cls / f.name).write_bytes(f.read_bytes())
    special_files(tmp_path / "set" / "covid")
    name = f"{MARKUP[0]} **BOLD** {FORMULAS[0]}"
    rc = cli.main(["site", "fit", str(tmp_path / "set"), "--out", str(tmp_path / "site"), "--name", name,
                   "--weights", str(classifier.directory)])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)["site"] == name  # the name is kept as given; pages show it literally
    assert "Traceback" not in err

    special_files(tmp_path / "zips")
    with open(tmp_path / "zips" / "huge.zip", "wb") as f:
        f.truncate(5 << 30)
    (tmp_path / "zips" / "fifo.zip").symlink_to(tmp_path / "zips" / "p.png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("covid/a.png", b"x")
    for zip_name, why in (("huge.zip", "too large"), ("fifo.zip", "named pipe")):
        rc = cli.main(["site", "fit", str(tmp_path / "zips" / zip_name), "--out", str(tmp_path / "s2"),
                       "--weights", str(classifier.directory)])
        err = capsys.readouterr().err
        assert rc != 0 and len(err.strip().splitlines()) == 1 and why in err, err
