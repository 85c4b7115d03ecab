"""Batch evaluation with the real model on real films copied from ../shared/data/cxr."""
import io
import json
import shutil
import zipfile

import pytest

from PIL import Image, ImageDraw

from covidxr.evaluate import (LabelledItem, Row, build_report, evaluate_folder, evaluate_uploads, evaluate_zip,
                              iter_scores, scan_folder, scan_uploads)
from covidxr.films import FilmError, read_film
from covidxr.safety import PathRefused, ZipRefused
from tests.conftest import shared_data

CXR = shared_data("cxr")


def films(source: str, label: str, k: int):
    return sorted((CXR / source / label).iterdir())[:k]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """COVID/ (upper case: any case is positive) 3 Hannover films; normal/ 3 NIH films and a broken
    file; plus files that are not films and must be skipped."""
    root = tmp_path_factory.mktemp("set")
    for folder, src in (("COVID", films("hannover-mhh", "covid", 3)),
                        ("normal", films("nih-cxr8-via-darkcovidnet", "normal", 3))):
        (root / folder).mkdir()
        for f in src:
            shutil.copy(f, root / folder / f.name)
    (root / "normal" / "broken.png").write_bytes(b"not an image")
    (root / "normal" / ".DS_Store").write_bytes(b"\0\0")
    (root / "normal" / "notes.txt").write_text("reader notes")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"x")
    return root


@pytest.fixture(scope="module")
def report(classifier, labelled):
    return evaluate_folder(classifier, labelled)


def check_contract(d: dict, n_files: int, n_covid: int, n_errors: int) -> None:
    """The `evaluate --json` contract of ../shared/tools/check-contracts, plus strict JSON."""
    json.dumps(d, allow_nan=False)
    for k in ("n", "n_errors", "threshold", "sensitivity", "specificity", "accuracy", "auc"):
        assert isinstance(d[k], (int, float)), k
    for k in ("sensitivity", "specificity", "accuracy", "auc", "ppv", "npv", "ece"):
        assert k in d and k in d["ci"]
    for k in ("sensitivity", "specificity", "accuracy", "auc"):
        if k == "auc" and d["ci"][k] is None:  # too few films of a class for an AUC interval (metrics.py)
            continue
        assert isinstance(d["ci"][k], list) and len(d["ci"][k]) == 2
        assert d["ci"][k][0] <= d["ci"][k][1]
    for k in ("sensitivity", "specificity", "accuracy"):  # a Wilson interval always holds its proportion
        assert d["ci"][k][0] <= d[k] <= d["ci"][k][1]
    assert set(d["confusion"]) == {"tp", "fp", "tn", "fn"}
    assert set(d["roc"]) >= {"fpr", "tpr"} and len(d["roc"]["fpr"]) == len(d["roc"]["tpr"])
    assert isinstance(d["per_source"], dict)
    imgs = d["images"]
    assert len(imgs) == n_files and d["n_errors"] == n_errors
    assert sum(i["label"] == "covid" for i in imgs) == n_covid
    assert isinstance(d["n_not_chest"], int) and len(d["not_chest"]) == d["n_not_chest"]
    for i in imgs:
        assert set(i) >= ({"path", "label", "error"} if "error" in i else
                          {"path", "label", "probability", "prediction", "chest_xray", "reasons", "details", "warnings"})
        if "error" in i:
            continue
        assert isinstance(i["chest_xray"], bool) and isinstance(i["reasons"], list)
        assert (not i["reasons"]) == i["chest_xray"]
        if i["chest_xray"] or d["include_non_chest"]:
            assert 0 <= i["probability"] <= 1 and i["prediction"] in ("covid", "non-covid")
        else:  # no score for a refused image
            assert i["probability"] is None and i["prediction"] is None and i["path"] in d["not_chest"]


def test_scan_folder_labels_by_class_folder(labelled):
    items = scan_folder(labelled)
    names = [i.path.removeprefix(str(labelled) + "/") for i in items]
    assert names == sorted(names) and len(names) == 7  # no .DS_Store, notes.txt or hidden folder
    assert [i.label for i in items] == ["covid"] * 3 + ["normal"] * 4
    assert all(i.source is None and i.error is None for i in items)


def test_scan_folder_finds_extensionless_dicom_by_its_magic(tmp_path):
    (tmp_path / "covid").mkdir()
    (tmp_path / "covid" / "IM0001").write_bytes(bytes(128) + b"DICM" + bytes(16))
    (tmp_path / "covid" / "README").write_text("not a film")
    (tmp_path / "covid" / "scores.csv").write_text("a,b\n")
    assert [i.path for i in scan_folder(tmp_path)] == [str(tmp_path / "covid" / "IM0001")]


def test_every_file_gets_a_row_and_counts_add_up(report, labelled):
    assert len(report.rows) == 7
    (bad,) = report.failures
    assert bad.path.endswith("broken.png") and bad.label == "normal" and bad.probability is None
    assert "not an image" in bad.error or "text" in bad.error
    c = report.metrics.confusion
    assert report.n == c.tp + c.fp + c.tn + c.fn == 6
    assert c.tp + c.fn == 3 and c.tn + c.fp == 3
    assert report.threshold == pytest.approx(report.metrics.threshold)
    check_contract(report.as_dict(), n_files=7, n_covid=3, n_errors=1)


def test_report_predictions_follow_the_threshold(report):
    assert all(r.prediction == ("covid" if r.probability >= report.threshold else "non-covid")
               for r in report.rows if r.error is None)
    everything = report.at(0.0)
    assert everything.metrics.confusion.tn == 0 and everything.metrics.sensitivity.value == 1.0
    assert {r.prediction for r in everything.rows if r.error is None} == {"covid"}
    assert everything.metrics.auc == report.metrics.auc  # threshold-free numbers stay
    assert report.metrics_at(0.0) == everything.metrics.point
    lines = report.to_csv().splitlines()
    assert lines[0] == "path,label,source,probability,prediction,error,chest_xray,reasons,details,warnings"
    assert len(lines) == 8


@pytest.mark.slow
def test_streamed_scores_equal_predict(classifier, labelled, report):
    good = [r for r in report.rows if r.error is None]
    direct = classifier.predict([read_film(r.path) for r in good])
    assert [r.probability for r in good] == pytest.approx([p.probability for p in direct], abs=1e-5)
    small = [r.probability for r in iter_scores(classifier, scan_folder(labelled), batch_size=2) if r.error is None]
    assert small == pytest.approx([p.probability for p in direct], abs=1e-5)


def test_iter_scores_streams_and_reports_progress(classifier, labelled):
    reads = []

    def reader(path):
        reads.append(path)
        return open(path, "rb").read()

    items = [LabelledItem(i.path, i.label, read=lambda p=i.path: reader(p)) for i in scan_folder(labelled)]
    seen = []
    rows = iter_scores(classifier, items, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    first = next(rows)
    assert first.path == items[0].path and len(reads) == 2  # one batch read, not the whole set
    rest = list(rows)
    assert len(rest) == 6 and len(reads) == 7
    assert seen == [(0, 7), (2, 7), (4, 7), (6, 7), (7, 7)]


def test_source_layout_and_manifest(classifier, tmp_path):
    """root/<source>/<class>/file, as in ../shared/data/cxr; MANIFEST.csv may rename sources."""
    for src, label in (("hannover-mhh", "covid"), ("nih-cxr8-via-darkcovidnet", "normal")):
        (tmp_path / src / label).mkdir(parents=True)
        for f in films(src, label, 2):
            shutil.copy(f, tmp_path / src / label / f.name)
    renamed = films("nih-cxr8-via-darkcovidnet", "normal", 1)[0].name
    (tmp_path / "MANIFEST.csv").write_text(f"path,source\nnih-cxr8-via-darkcovidnet/normal/{renamed},nih-b\n")
    items = scan_folder(tmp_path)
    assert [(i.label, i.source) for i in items] == [("covid", "hannover-mhh")] * 2 + [
        ("normal", "nih-b"), ("normal", "nih-cxr8-via-darkcovidnet")]
    d = evaluate_folder(classifier, tmp_path).as_dict()
    hannover = d["per_source"]["hannover-mhh"]  # one class only: no specificity, no AUC, honestly
    assert hannover["n"] == 2 and hannover["specificity"] is None and hannover["auc"] is None
    assert hannover["sensitivity"] is not None and set(d["per_source"]) == {"hannover-mhh", "nih-b",
                                                                             "nih-cxr8-via-darkcovidnet"}
    json.dumps(d, allow_nan=False)


def zipped(root, wrapper="set") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f"{wrapper}/{f.relative_to(root).as_posix()}")
    return buf.getvalue()


def test_zip_in_memory_matches_the_folder(classifier, labelled, report):
    z = evaluate_zip(classifier, zipped(labelled))
    assert [(r.path, r.label) for r in z.rows] == [
        ("set/" + r.path.removeprefix(str(labelled) + "/"), r.label) for r in report.rows]
    assert [r.probability for r in z.rows] == pytest.approx([r.probability for r in report.rows], abs=1e-6)
    check_contract(z.as_dict(), n_files=7, n_covid=3, n_errors=1)


def test_zip_refusals_come_before_scoring(classifier):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("covid/../../evil.png", b"x")
    with pytest.raises(ZipRefused, match="path traversal"):
        evaluate_zip(classifier, buf.getvalue())
    with pytest.raises(ZipRefused, match="not a readable zip"):
        evaluate_zip(classifier, b"plain bytes")


def test_uploads_labels_and_a_refused_zip(classifier, labelled):
    covid = sorted((labelled / "COVID").iterdir())
    files = [("covid/" + covid[0].name, covid[0].read_bytes()), ("loose.jpg", covid[1].read_bytes()),
             ("evil.zip", b"PK\x03\x04 not really")]
    r = evaluate_uploads(classifier, files)
    by = {row.path: row for row in r.rows}
    assert by["covid/" + covid[0].name].label is None  # a loose upload's name is a name, never a folder (#29)
    assert by["loose.jpg"].label is None and by["loose.jpg"].probability is not None
    assert "refused" in by["evil.zip"].error
    assert (r.n, r.n_unlabelled, r.n_errors) == (0, 2, 1)
    assert evaluate_uploads(classifier, files[1:2], label="Normal").rows[0].label == "normal"
    with pytest.raises(FilmError, match="no films"):
        scan_uploads([])


def test_build_report_without_labelled_films_is_defined():
    r = build_report([], 0.5, "covid", n_boot=10)
    d = r.as_dict()
    assert d["n"] == 0 and d["sensitivity"] is None and d["auc"] is None and d["images"] == []
    json.dumps(d, allow_nan=False)


def test_folder_without_films_is_refused(classifier, tmp_path):
    (tmp_path / "covid").mkdir()
    with pytest.raises(PathRefused, match="no films found"):
        evaluate_folder(classifier, tmp_path)
    with pytest.raises(PathRefused, match="not a folder"):
        evaluate_folder(classifier, tmp_path / "missing")


# ------------------------------------------------------------------ the gate in the report


def test_the_seconds_are_filled(report):
    d = report.as_dict()
    assert isinstance(d["seconds"], float) and d["seconds"] > 0


def test_every_scored_row_carries_the_gates_verdict(report):
    for r in report.rows:
        if r.error is None:
            assert r.chest_xray is True and r.reasons == () and r.details.startswith("feature distance")
    assert report.n_not_chest == 0 and report.as_dict()["not_chest"] == []


def gate_rows() -> list[Row]:
    """Two chest films per class and a refused film in each class, as iter_scores yields them with the switch on."""
    rows = [Row(f"c{i}", "covid", None, p, None, None, True, True) for i, p in enumerate((0.9, 0.8))]
    rows += [Row(f"n{i}", "normal", None, p, None, None, False, True) for i, p in enumerate((0.1, 0.05))]
    rows += [Row("dog.jpg", "normal", None, 0.86, None, None, False, False, ("it is a colour image, not a radiograph",),
                 "feature distance 9.00 (limit 1.87)"),
             Row("ct.dcm", "covid", None, 0.02, None, None, True, False, ("DICOM modality is CT, not a radiograph",))]
    return rows


def test_refused_films_are_left_out_of_the_metrics_counted_and_listed():
    r = build_report(gate_rows(), 0.5, "covid", n_boot=20)
    d = r.as_dict()
    assert d["n"] == 4 and sum(d["confusion"].values()) == 4 and d["confusion"]["fp"] == 0 and d["confusion"]["fn"] == 0
    assert d["n_not_chest"] == 2 and d["not_chest"] == ["dog.jpg", "ct.dcm"] and d["include_non_chest"] is False
    dog = next(i for i in d["images"] if i["path"] == "dog.jpg")
    assert dog == {"path": "dog.jpg", "label": "normal", "source": None, "probability": None, "prediction": None,
                   "chest_xray": False, "reasons": ["it is a colour image, not a radiograph"],
                   "details": "feature distance 9.00 (limit 1.87)", "warnings": []}
    assert r.at(0.0).as_dict()["n_not_chest"] == 2 and dog["probability"] is None
    csv_dog = [line for line in r.to_csv().splitlines() if line.startswith("dog.jpg")][0]
    assert csv_dog == "dog.jpg,normal,,,,,False,\"it is a colour image, not a radiograph\",feature distance 9.00 (limit 1.87),"


def test_the_switch_puts_refused_films_back_into_the_metrics():
    r = build_report(gate_rows(), 0.5, "covid", n_boot=20, include_non_chest=True)
    d = r.as_dict()
    assert d["n"] == 6 and d["confusion"]["fp"] == 1 and d["confusion"]["fn"] == 1 and d["include_non_chest"] is True
    dog = next(i for i in d["images"] if i["path"] == "dog.jpg")
    assert dog["probability"] == 0.86 and dog["prediction"] == "covid" and dog["chest_xray"] is False
    assert d["n_not_chest"] == 2


@pytest.fixture(scope="module")
def with_non_chest(labelled, tmp_path_factory):
    """The labelled set plus a page of text under normal/ and a hip DICOM under COVID/."""
    root = tmp_path_factory.mktemp("gate")
    shutil.copytree(labelled, root, dirs_exist_ok=True)
    im = Image.new("RGB", (800, 1000), "white")
    d = ImageDraw.Draw(im)
    for y in range(60, 940, 28):
        d.line([(60, y), (740, y)], fill=(30, 30, 30), width=3)
    im.save(root / "normal" / "page.png")
    shutil.copy(shared_data("dicom", "other", "nema-wg04_RG2_JPLL_CR_hip.dcm"), root / "COVID" / "hip.dcm")
    return root


@pytest.mark.slow
def test_evaluate_folder_leaves_refused_films_out_and_the_switch_brings_them_in(classifier, with_non_chest, report):
    default = evaluate_folder(classifier, with_non_chest)
    d = default.as_dict()
    check_contract(d, n_files=9, n_covid=4, n_errors=1)
    assert d["n_not_chest"] == 2 and sorted(p.rsplit("/", 1)[-1] for p in d["not_chest"]) == ["hip.dcm", "page.png"]
    assert d["confusion"] == report.as_dict()["confusion"] and d["n"] == 6  # the same metrics as without them
    hip = next(i for i in d["images"] if i["path"].endswith("hip.dcm"))
    assert hip["reasons"][0] == "DICOM body part is HIP, not chest" and hip["probability"] is None
    both = evaluate_folder(classifier, with_non_chest, include_non_chest=True).as_dict()
    check_contract(both, n_files=9, n_covid=4, n_errors=1)
    assert both["n"] == 8 and both["n_not_chest"] == 2 and sum(both["confusion"].values()) == 8
    hip = next(i for i in both["images"] if i["path"].endswith("hip.dcm"))
    assert hip["chest_xray"] is False and 0 <= hip["probability"] <= 1
