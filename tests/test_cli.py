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
        assert isinstance(r[k], float) and len(r["ci"][k]) == 2
    assert sum(1 for i in r["images"] if i["label"] == "covid") == 3


def test_missing_weights_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["predict", *map(str, real_films(1)), "--weights", str(tmp_path)])
    assert rc == 1 and "no model card" in capsys.readouterr().err


def test_help_lists_the_commands():
    p = subprocess.run([sys.executable, "-m", "covidxr", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and all(c in p.stdout for c in ("predict", "evaluate", "train"))
