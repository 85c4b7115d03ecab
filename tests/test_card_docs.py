"""docs/model-card.md is generated from weights/model_card.json by scripts/card_docs.py, and kept current.

The script imports nothing from covidxr, so these tests run it as a separate process with this Python.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "card_docs.py"
CARD = REPO / "weights" / "model_card.json"
PAGE = REPO / "docs" / "model-card.md"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def report(n_pos: int, n_neg: int, auc: float | None, sens: float | None, spec: float | None,
           auc_ci: list[float] | None = None) -> dict:
    return {"n": n_pos + n_neg, "n_pos": n_pos, "n_neg": n_neg, "threshold": 0.5, "auc": auc, "sensitivity": sens,
            "specificity": spec, "ci": {"auc": auc_ci} if auc_ci else {}}


def small_card(**top) -> dict:
    """A hand-built card in the shape `covidxr train` writes, with numbers that appear nowhere else."""
    card = {
        "name": "tiny-test-model", "architecture": "one tiny network", "input_size": 96, "lung_input_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "class_names": ["covid", "normal", "pneumonia"],
        "positive_class": "covid", "threshold": 0.2346, "threshold_rule": "a test rule", "temperature": 1.25,
        "weights_file": "model.pt", "weights_sha256": "ab" * 32, "crop_margin": 0.08, "mask_dilation": 0.025,
        "ood": {"file": "ood.npz", "sha256": "cd" * 32, "threshold": 2.5, "rule": "a test gate rule"},
        "data": {"films_per_source": {"site-a": {"covid": 30, "normal": 40}, "site-b": {"pneumonia": 12}},
                 "n_train": 70, "n_validation": 12, "split": "by patient"},
        "training": {"command": "python -m covidxr train --data d --out w", "seed": 20261127, "max_steps": 1400,
                     "networks": [{"name": "final", "variant": "crop", "seconds": 600,
                                   "early_stopping": {"steps_run": 700, "best_step": 600, "best_val_auc": 0.951,
                                                      "stopped_early": True}}]},
        "metrics": {
            "validation": {**report(40, 50, 0.987, 0.962, 0.944, [0.975, 0.995]),
                           "per_source": {"site-a": report(40, 40, 0.981, 0.962, 0.944)}},
            "leave_one_source_out": [
                {"held_out": "site-a", **report(300, 400, 0.912, 0.871, 0.654, [0.9001, 0.9249])},
                {"held_out": "site-b", **report(0, 12, None, None, 0.583)},
            ],
            "leave_one_source_out_pooled": {
                "all_sources": {**report(300, 412, 0.8761, 0.88, 0.6), "what": "every film scored by its fold"}},
            "kaggle_only_to_other_sources": {"variant": "crop", "steps": 120, "n_train": 50,
                                             "test": report(20, 30, 0.7771, 0.9, 0.4)},
            "ablations": [{"name": "crop_scratch", "split": "kaggle_only", "variant": "crop", "imagenet": False,
                           "jpeg_augmentation": True, "attention": 0.0, "steps": 120, "frozen_blocks": 3,
                           "val_auc": 0.61, **report(20, 30, 0.5432, 0.9, 0.1)}],
        },
        "limits": ["A test limit."],
        "intended_use": "Research screening aid for tests.",
    }
    card.update(top)
    return {k: v for k, v in card.items() if v is not None}


def render(tmp_path: Path, card: dict) -> str:
    (tmp_path / "card.json").write_text(json.dumps(card))
    done = run("--card", str(tmp_path / "card.json"), "--out", str(tmp_path / "page.md"))
    assert done.returncode == 0, done.stderr
    return (tmp_path / "page.md").read_text()


def test_committed_page_is_current():
    done = run("--check")
    assert done.returncode == 0, (f"{PAGE.relative_to(REPO)} is not what {CARD.relative_to(REPO)} renders "
                                  f"({done.stderr.strip()}); run: python3 scripts/card_docs.py")


def test_rendered_page_holds_the_card_numbers_held_out_folds_first(tmp_path):
    page = render(tmp_path, small_card(blank_outside_lungs=False))
    for expected in ("0.912 (0.900-0.925)",   # the two-class held-out fold, with its CI
                     "700 (300/400)", "0.583", "0.876", "0.777", "0.543", "| AUC | 0.987 | (0.975-0.995) |",
                     "**0.235**", "T = 1.250", "Research screening aid for tests.", "A test limit.",
                     "a test gate rule", "20261127"):
        assert expected in page, expected
    held_out = page.index("| site-a | 700 (300/400) | 0.912 (0.900-0.925)")
    assert "closest to an unseen hospital" in page[:held_out]
    assert held_out < page.index("0.876") < page.index("0.987")  # folds, then pooled, then same-source validation


def test_rendered_page_is_deterministic(tmp_path):
    first = render(tmp_path, small_card())
    assert render(tmp_path, small_card()) == first


def test_networks_are_read_from_either_card_format(tmp_path):
    old = render(tmp_path, small_card(blank_outside_lungs=False, members=[
        {"name": "final_film", "variant": "film_lungs",
         "view": {"crop_to_lungs": False, "blank_outside_lungs": False, "equalize_over": "box"}}]))
    new = render(tmp_path, small_card(networks=[
        {"name": "final", "variant": "crop",
         "view": {"crop_to_lungs": True, "blank_outside_lungs": False, "equalize_over": "lungs"}},
        {"name": "final_film", "variant": "film_lungs",
         "view": {"crop_to_lungs": False, "blank_outside_lungs": False, "equalize_over": "box"}}]))
    for page in (old, new):
        assert "| 1 | final | " in page and "| 2 | final_film | " in page
        assert "the film cropped to its lung box, nothing blanked, histogram-equalised inside the lungs" in page
        assert "the whole film, nothing blanked, histogram-equalised over the film" in page
    assert old == new


def test_check_fails_in_one_line_when_the_page_is_stale(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps(small_card()))
    (tmp_path / "page.md").write_text("# an old page\n")
    done = run("--card", str(tmp_path / "card.json"), "--out", str(tmp_path / "page.md"), "--check")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "card_docs.py" in done.stderr
    assert (tmp_path / "page.md").read_text() == "# an old page\n"  # --check writes nothing
    done = run("--card", str(tmp_path / "card.json"), "--out", str(tmp_path / "missing.md"), "--check")
    assert done.returncode == 1 and not (tmp_path / "missing.md").exists()


def test_site_adaptation_table_is_rendered_beside_the_held_out_folds(tmp_path):
    fold = {"films": {"covid": 283, "non-covid": 75},
            "fold_model": {"auc": 0.6612, "sensitivity": 0.9, "specificity": 0.2,
                           "ci": {"auc": [0.6, 0.72], "sensitivity": [0.86, 0.93], "specificity": [0.12, 0.3]}},
            "with_profile": {"auc": 0.7345, "sensitivity": 0.8, "specificity": 0.5,
                             "ci": {"auc": [0.68, 0.79], "sensitivity": [0.75, 0.84], "specificity": [0.39, 0.61]}},
            "auc_gain": 0.0733, "methods_chosen": ["head_l2_3"], "target_met": False,
            "by_site_size": {"8": {"draws": 4, "auc_mean": 0.6811, "gain_mean": 0.0199, "gain_min": -0.01,
                                   "gain_max": 0.05}}}
    card = small_card()
    card["metrics"]["site_adaptation"] = {"what": "halves by patient", "target": "a test target",
                                          "folds": {"site-a": fold}}
    page = render(tmp_path, card)
    for expected in ("A site profile on a hospital it has never seen", "| site-a | 283/75 | fold model | 0.661 (0.600-0.720)",
                     "| site-a | 283/75 | with the profile | 0.735 (0.680-0.790)", "AUC gain 0.073", "not met",
                     "8 per class", "0.681 (+0.020; -0.010 to 0.050; 4 draws)"):
        assert expected in page, expected
    assert "A site profile" not in render(tmp_path, small_card())


def by_rule_card() -> dict:
    """A card holding a site_adaptation table in the shape scripts/site_measure.py writes since issue 25."""
    def half(auc, sens, spec, per_half):
        return {"auc": auc, "auc_per_half": per_half, "sensitivity": sens, "specificity": spec,
                "flagged_per_100": round(100 * (1 - spec)),
                "ci": {"auc": [auc - 0.0411, auc + 0.0411], "sensitivity": [sens - 0.05, sens + 0.03],
                       "specificity": [spec - 0.1, spec + 0.1]}}
    rules = {"binormal": {"fold_model": half(0.6912, 0.93, 0.1333, [0.7212, 0.6611]),
                          "with_profile": half(0.6912, 0.8711, 0.3133, [0.7212, 0.6611]), "target_met": False},
             "empirical": {"fold_model": half(0.6912, 0.93, 0.1333, [0.7212, 0.6611]),
                           "with_profile": half(0.6912, 0.9611, 0.0667, [0.7212, 0.6611]), "target_met": False}}
    fold = {"films": {"covid": 283, "non-covid": 75}, "fold_networks": 1, "target_sensitivity": 0.9,
            "max_fit_per_class": 200, "halves": rules,
            "by_site_size": {"16": {"draws": 8, "fold_model": {"auc": 0.6912, "sensitivity": 0.93, "specificity": 0.1333},
                                    "binormal": {"auc": 0.7021, "sensitivity": 0.8877, "specificity": 0.2111,
                                                 "target_met": False}}}}
    card = small_card()
    card["metrics"]["site_adaptation"] = {"what": "halves by patient", "target": "a test target", "folds": {"site-a": fold},
                                          "rule": {"chosen": "binormal", "by_rule": {
                                              "binormal": {"cells_met": 0, "cells": 2, "mean_youden": 0.1844},
                                              "empirical": {"cells_met": 0, "cells": 2, "mean_youden": 0.0278}}},
                                          "by_target": {"0.85": {"binormal": {
                                              "cells": 2, "operating_point_held": 1, "target_met": 0,
                                              "mean_sensitivity": 0.8794, "min_sensitivity": 0.8711,
                                              "mean_specificity_gain": 0.1394}}}}
    return card


def test_site_adaptation_by_rule_is_rendered_at_the_profiles_own_threshold(tmp_path):
    """The table of scripts/site_measure.py since issue 25: the chosen rule's halves, with CIs, and by site size."""
    page = render(tmp_path, by_rule_card())
    for expected in ("operating-point rule: binormal", "| site-a | 283/75 | 1 | with the profile (binormal) | "
                     "0.691 (0.650-0.732); halves 0.721, 0.661 | 0.871 (0.821-0.901) | 0.313 (0.213-0.413) | 69 | no |",
                     "| site-a | 16 | 8 | 0.691 / 0.702 | 0.930 / 0.888 | 0.133 / 0.211 | no |",
                     "| binormal | 0 of 2 | 0.184 |", "| empirical | 0 of 2 | 0.028 |",
                     "| 0.85 | binormal | 1 of 2 | 0 of 2 | 0.879 | 0.871 | 0.139 |"):
        assert expected in page, expected
    assert "0.961" not in page.split("The rules compared")[0]     # the other rule's profile is not in the tables


def test_the_card_block_of_another_page_is_rendered_from_the_card():
    """README.md and docs/site-profiles.md hold the site-profile summary between markers; the script renders it
    from the card (links relative to the page) and leaves the rest of the page as it was."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("card_docs", SCRIPT)
    cd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cd)
    begin, end = cd.markers("site-adaptation")
    page = f"# Title\n\nbefore\n{begin}\nstale 0.999\n{end}\nafter\n"
    got = cd.with_blocks(page, by_rule_card(), "")
    assert got.startswith("# Title\n\nbefore\n" + begin) and got.endswith(end + "\nafter\n")
    assert "stale" not in got and "0.133 (0.033-0.233) -> 0.313 (0.213-0.413)" in got and "| 87 -> 69 |" in got
    assert "](model-card.md#a-site-profile" in got and "binormal" in got
    assert "](docs/model-card.md#" in cd.with_blocks(page, by_rule_card(), "docs/")
    assert cd.with_blocks("no markers\n", by_rule_card(), "") == "no markers\n"
    for p in cd.BLOCK_PAGES:                                 # the committed pages hold the block
        assert begin in p.read_text() and end in p.read_text(), p
