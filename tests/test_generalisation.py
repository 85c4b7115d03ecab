"""scripts/generalisation.py prints the card's generalisation figures (issue 6): every LOSO row, the pooled
LOSO report and the adversary comparison, with the numbers the card holds."""
import importlib.util
from pathlib import Path

import pytest

from covidxr.card import ModelCard
from covidxr.classifier import DEFAULT_WEIGHTS
from covidxr.training.experiments import NETWORKS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("generalisation", ROOT / "scripts" / "generalisation.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_tables_print_every_loso_row_and_the_pooled_report():
    card = ModelCard.load(DEFAULT_WEIGHTS)
    text = "\n".join(gen.tables(card))
    for r in card.metrics["leave_one_source_out"]:
        line = next(l for l in text.splitlines() if l.startswith(f"| {r['held_out']} | {r['n']} "))
        assert gen.fmt(r["auc"], (r.get("ci") or {}).get("auc")) in line
    for part, what in gen.POOLS.items():
        pooled = card.metrics["leave_one_source_out_pooled"][part]
        assert f"Pooled, {what}: every film scored by the LOSO model that never saw its source ({pooled['n']} films" in text
        assert gen.summary(pooled) in text
    for r in card.metrics["source_adversary"]["per_source"]:
        assert any(l.startswith(f"| {r['held_out']} | ") and gen.fmt(r["without"]["auc"]) in l for l in text.splitlines())


def test_summary_formats_missing_values_as_a_dash():
    assert gen.summary({"auc": None, "sensitivity": 0.5, "specificity": 0.25, "ci": {"sensitivity": [0.4, 0.6]}}) == \
        "auc -, sensitivity 0.500 (0.400-0.600), specificity 0.250"


def test_tables_print_each_networks_fold_and_the_ensembles_kaggle_only_row():
    card = ModelCard.load(DEFAULT_WEIGHTS)
    lines = gen.tables(card)
    rows = card.metrics["leave_one_source_out"]
    assert all(len(r["members"]) == len(NETWORKS) for r in rows)  # the shipped ensemble's folds
    start = lines.index(next(l for l in lines if l.startswith("Each network of the ensemble alone")))
    for r in rows:  # one line per source with every network's own number
        line = next(l for l in lines[start:] if l.startswith(f"| {r['held_out']} | "))
        assert all(gen.fmt(gen.one_number(n, r)) in line for n in r["members"])
    k = card.metrics["kaggle_only_to_other_sources"]
    line = next(l for l in lines if "(shipped)" in l)
    assert gen.fmt(k["test"]["auc"], k["test"]["ci"]["auc"]) in line


def test_one_number_is_the_auc_or_the_only_rate_a_source_has():
    member = {"auc": 0.8, "sensitivity": 0.9, "specificity": 0.3}
    assert gen.one_number(member, {"n_pos": 5, "n_neg": 5}) == 0.8
    assert gen.one_number(member, {"n_pos": 5, "n_neg": 0}) == 0.9
    assert gen.one_number(member, {"n_pos": 0, "n_neg": 5}) == 0.3
