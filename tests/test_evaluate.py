"""Batch evaluation with the real model on real films copied from ../shared/data/cxr."""
import io
import json
import shutil
import zipfile

import pytest

from covidxr.evaluate import (LabelledItem, build_report, evaluate_folder, evaluate_uploads, evaluate_zip,
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
    for i in imgs:
        assert set(i) >= ({"path", "label", "error"} if "error" in i else {"path", "label", "probability", "prediction"})
        if "error" not in i:
            assert 0 <= i["probability"] <= 1 and i["prediction"] in ("covid", "non-covid")


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
    assert lines[0] == "path,label,source,probability,prediction,error" and len(lines) == 8


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
    assert by["covid/" + covid[0].name].label == "covid"
    assert by["loose.jpg"].label is None and by["loose.jpg"].probability is not None
    assert "refused" in by["evil.zip"].error
    assert (r.n, r.n_unlabelled, r.n_errors) == (1, 1, 1)
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
