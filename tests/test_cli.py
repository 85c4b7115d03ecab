"""The command-line contracts other tools rely on (see issue 2): JSON shapes, exit codes, one-line
errors and no tracebacks, with the shipped model on real films and on the bad-input corpus."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from covidxr import cli
from tests.bad_inputs import bad_inputs
from tests.conftest import shared_data

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CORPUS = bad_inputs()


def real_films(n: int = 2) -> list[Path]:
    return sorted((shared_data() / "cxr" / "hannover-mhh" / "covid").glob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    for b in CORPUS:
        sub = d / b.kind  # one folder per kind: several kinds share a file name
        sub.mkdir()
        (sub / b.filename).write_bytes(b.data)
    return d


def corpus_path(d: Path, b) -> Path:
    return d / b.kind / b.filename


def test_corpus_is_large_enough():
    assert len({b.kind for b in CORPUS}) >= 20


@pytest.mark.parametrize("bad", CORPUS, ids=[b.kind for b in CORPUS])
def test_predict_each_bad_input_exits_2_with_one_line(bad, corpus_dir, capsys, classifier):
    rc = cli.main(["predict", str(corpus_path(corpus_dir, bad)), "--json", "--weights", str(classifier.directory)])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and bad.expect.lower() in lines[0].lower(), err
    rows = json.loads(out)
    assert rows[0]["error"] and "probability" not in rows[0]


def test_predict_subprocess_scores_good_films_beside_bad_ones(corpus_dir, classifier, tmp_path):
    good = real_films(2)
    bad = [corpus_path(corpus_dir, b) for b in CORPUS[:5]]
    p = subprocess.run([sys.executable, "-m", "covidxr", "predict", *map(str, good + bad), "--json",
                        "--weights", str(classifier.directory), "--heatmap-dir", str(tmp_path / "heat")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    rows = json.loads(p.stdout)
    assert [r["path"] for r in rows] == list(map(str, good + bad))
    for r, f in zip(rows[:2], good):
        assert 0.0 <= r["probability"] <= 1.0
        assert r["label"] in ("covid", "non-covid")
        assert r["threshold"] == classifier.threshold
        assert (r["probability"] >= r["threshold"]) == (r["label"] == "covid")
        heat = Image.open(tmp_path / "heat" / (f.stem + ".png"))
        assert heat.mode == "L" and heat.size == Image.open(f).size
    assert all("error" in r for r in rows[2:])


def test_predict_all_readable_exits_0(classifier, capsys):
    rc = cli.main(["predict", *map(str, real_films(1)), "--weights", str(classifier.directory)])
    out, _ = capsys.readouterr()
    assert rc == 0 and "threshold" in out


def test_evaluate_contract(tmp_path, classifier):
    for label, src in (("covid", "hannover-mhh/covid"), ("normal", "kaggle-radiography-db-224px/normal")):
        (tmp_path / "set" / label).mkdir(parents=True)
        for f in sorted((shared_data() / "cxr" / src).glob("*.jpg"))[:3]:
            (tmp_path / "set" / label / f.name).write_bytes(f.read_bytes())
    (tmp_path / "set" / "normal" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "eval.json"
    rc = cli.main(["evaluate", str(tmp_path / "set"), "--json", str(out), "--weights", str(classifier.directory)])
    r = json.loads(out.read_text())
    assert rc == 2 and r["n"] == 6 and r["n_errors"] == 1 and len(r["images"]) == 7
    assert set(r["confusion"]) == {"tp", "fp", "tn", "fn"} and sum(r["confusion"].values()) == 6
    for k in ("sensitivity", "specificity", "accuracy", "auc"):
        ci = r["ci"][k]  # the AUC's may be null: too few films for an interval (metrics.py)
        assert isinstance(r[k], float) and ((ci is None and k == "auc") or len(ci) == 2)
    assert sum(1 for i in r["images"] if i["label"] == "covid") == 3
    assert all(i["chest_xray"] is True for i in r["images"] if "error" not in i) and r["n_not_chest"] == 0


def test_missing_weights_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["predict", *map(str, real_films(1)), "--weights", str(tmp_path)])
    assert rc == 1 and "no model card" in capsys.readouterr().err


def test_help_lists_the_commands():
    p = subprocess.run([sys.executable, "-m", "covidxr", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and all(c in p.stdout for c in ("predict", "evaluate", "train"))


# ------------------------------------------------------------------ the gate in predict and evaluate rows

HIP = shared_data("dicom", "other", "nema-wg04_RG2_JPLL_CR_hip.dcm")


def test_predict_rows_carry_the_gates_verdict_and_no_score_for_a_refused_film(classifier, capsys):
    good = real_films(1)[0]
    rc = cli.main(["predict", str(good), str(HIP), "--json", "--weights", str(classifier.directory)])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0
    film, hip = rows
    assert film["chest_xray"] is True and film["reasons"] == [] and film["details"].startswith("feature distance")
    assert 0 <= film["probability"] <= 1 and film["warnings"] == [] and "warning" not in film
    assert hip["chest_xray"] is False and hip["reasons"][0] == "DICOM body part is HIP, not chest"
    assert hip["probability"] is None and hip["label"] is None and hip["class_probabilities"] is None
    assert hip["warning"].startswith("does not look like a frontal chest radiograph: DICOM body part is HIP")
    rc = cli.main(["predict", str(HIP), "--json", "--include-non-chest", "--weights", str(classifier.directory)])
    (hip,) = json.loads(capsys.readouterr().out)
    assert rc == 0 and hip["chest_xray"] is False and 0 <= hip["probability"] <= 1 and hip["label"] in ("covid", "non-covid")


def test_predict_text_output_says_a_refused_film_was_not_scored(classifier, capsys):
    rc = cli.main(["predict", str(HIP), "--weights", str(classifier.directory)])
    out = capsys.readouterr().out
    assert rc == 0 and "not scored, does not look like a frontal chest radiograph: DICOM body part is HIP" in out
    assert "p = " not in out


def test_evaluate_leaves_refused_films_out_unless_asked(tmp_path, classifier, capsys):
    for label, src in (("covid", "hannover-mhh/covid"), ("normal", "kaggle-radiography-db-224px/normal")):
        (tmp_path / "set" / label).mkdir(parents=True)
        for f in sorted((shared_data() / "cxr" / src).glob("*.jpg"))[:2]:
            (tmp_path / "set" / label / f.name).write_bytes(f.read_bytes())
    (tmp_path / "set" / "normal" / "hip.dcm").write_bytes(HIP.read_bytes())
    out, csv_out = tmp_path / "eval.json", tmp_path / "rows.csv"
    rc = cli.main(["evaluate", str(tmp_path / "set"), "--json", str(out), "--csv", str(csv_out),
                   "--weights", str(classifier.directory)])
    err = capsys.readouterr().err
    r = json.loads(out.read_text())
    assert rc == 0 and r["n"] == 4 and r["n_not_chest"] == 1 and r["not_chest"][0].endswith("hip.dcm")
    assert sum(r["confusion"].values()) == 4 and isinstance(r["seconds"], float) and r["seconds"] > 0
    assert "not a frontal chest radiograph 1 (left out of the metrics)" in err
    hip = next(i for i in r["images"] if i["path"].endswith("hip.dcm"))
    assert hip["chest_xray"] is False and hip["probability"] is None and hip["prediction"] is None
    assert all(i["chest_xray"] is True for i in r["images"] if i is not hip)
    import csv

    table = list(csv.DictReader(csv_out.read_text().splitlines()))
    assert list(table[0])[6:] == ["chest_xray", "reasons", "details", "warnings"]
    hip_row = next(t for t in table if t["path"].endswith("hip.dcm"))
    assert hip_row["chest_xray"] == "False" and hip_row["probability"] == "" and hip_row["prediction"] == ""
    assert hip_row["reasons"].startswith("DICOM body part is HIP, not chest; ") and "feature distance" in hip_row["details"]
    rc = cli.main(["evaluate", str(tmp_path / "set"), "--json", str(out), "--include-non-chest",
                   "--weights", str(classifier.directory)])
    r = json.loads(out.read_text())
    assert rc == 0 and r["n"] == 5 and r["n_not_chest"] == 1 and r["include_non_chest"] is True
    hip = next(i for i in r["images"] if i["path"].endswith("hip.dcm"))
    assert hip["chest_xray"] is False and 0 <= hip["probability"] <= 1
