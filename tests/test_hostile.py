"""The hostile corpus (tests/hostile.py) through the core: CSV exports (property tests), uploads' names,
the results file. The pages, the CLI and the browser take it in test_pages.py, test_cli.py, test_literal.py."""
from __future__ import annotations

import csv
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from covidxr.evaluate import Row, build_report, upload_items
from covidxr.safety import FORMULA_STARTS, spreadsheet_raw, spreadsheet_safe
from tests.hostile import BACKSLASH_UPLOAD, FORMULAS, NAMES

CELLS = st.one_of(st.text(), st.sampled_from(FORMULAS),
                  st.tuples(st.sampled_from(list(FORMULA_STARTS) + ["'", "''"]), st.text()).map("".join))


@given(CELLS)
@settings(max_examples=500)
def test_a_safe_cell_never_starts_a_formula_and_gives_the_text_back(text):
    cell = spreadsheet_safe(text)
    assert not cell.startswith(FORMULA_STARTS)
    assert spreadsheet_raw(cell) == text
    if not text.startswith(FORMULA_STARTS + ("'",)):
        assert cell == text  # ordinary text is left as it is


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats()))
def test_numbers_pass_unchanged(value):
    assert spreadsheet_safe(value) is value


def report_of(paths: list[str]):
    rows = [Row(p, "covid" if i % 2 else p, p, 0.25 + 0.5 * (i % 2), reasons=(p,), warnings=(p,), chest_xray=True)
            for i, p in enumerate(paths)]
    return build_report(rows, 0.5, "covid", n_boot=10)


@given(st.lists(CELLS.filter(lambda t: "\0" not in t), min_size=2, max_size=6))
@settings(max_examples=60, deadline=None)
def test_the_csv_export_holds_no_formula_and_json_keeps_the_raw_value(paths):
    report = report_of(paths)
    cells = list(csv.reader(io.StringIO(report.to_csv(), newline="")))
    assert len(cells) == len(paths) + 1
    for line in cells[1:]:
        assert not any(c.startswith(FORMULA_STARTS) for c in line)
    assert [spreadsheet_raw(line[0]) for line in cells[1:]] == [r.path for r in report.rows]
    assert [i["path"] for i in json.loads(json.dumps(report.as_dict()))["images"]] == [r.path for r in report.rows]


def test_the_corpus_in_the_csv_export():
    report = report_of(NAMES)
    text = report.to_csv()
    for line in list(csv.reader(io.StringIO(text, newline="")))[1:]:
        assert not any(c.startswith(FORMULA_STARTS) for c in line)
    assert "'=cmd|' -c calc'!A0.png" in text and "'=HYPERLINK(" in text


def test_the_results_file_round_trips_hostile_paths(tmp_path):
    from covidxr.engines.batch import result_of, row_of
    from covidxr.engines.results import ResultsFile

    rows = [Row(p, "covid", "=src", 0.5, "covid", chest_xray=True) for p in NAMES + ["'", "''=x", "-"]]
    with ResultsFile(tmp_path / "rows.csv").open(fresh=True) as rf:
        rf.append(result_of(r, "a" * 64) for r in rows)
    back = ResultsFile(tmp_path / "rows.csv").read()
    assert [row_of(back[r.path]) for r in rows] == rows
    raw = (tmp_path / "rows.csv").read_text()
    assert not any(c.startswith(FORMULA_STARTS) for line in csv.reader(io.StringIO(raw, newline="")) for c in line)


def test_a_loose_uploads_name_is_a_name_never_a_path():
    """A name with backslashes or slashes (a browser sends base names; a crafted request need not) gives no
    folder, label or source: the film stays unlabelled, or takes the label chosen on the page."""
    items = upload_items([(BACKSLASH_UPLOAD, b"x"), ("covid/a.png", b"y"), ("normal/../covid/b.png", b"z")],
                         positive_class="covid")
    assert [(i.path, i.label, i.source) for i in items] == [
        (BACKSLASH_UPLOAD, None, None), ("covid/a.png", None, None), ("normal/../covid/b.png", None, None)]
    assert {i.label for i in upload_items([(BACKSLASH_UPLOAD, b"x")], label="Normal")} == {"normal"}


def test_a_malformed_site_json_says_so(tmp_path):
    """Not "made for another base model (weights None...)", as the penetration test saw."""
    import pytest

    from covidxr.card import ModelCard
    from covidxr.classifier import DEFAULT_WEIGHTS
    from covidxr.site import SiteError, SiteProfile

    card = ModelCard.load(DEFAULT_WEIGHTS)
    for meta in ({"name": "x"}, ["not", "an", "object"], {"base_sha256": None}):
        (tmp_path / "site.json").write_text(json.dumps(meta))
        with pytest.raises(SiteError, match="malformed: it names no base model"):
            SiteProfile.load(tmp_path, card)
