"""Shared test helpers. Real data lies beside the clone in ../shared (CI has it there too)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, e.g. shared_data("cxr", "MANIFEST.csv")."""
    return SHARED.joinpath("data", *parts)


@pytest.fixture(scope="session")
def classifier():
    """The shipped model in weights/ (or $COVIDXR_TEST_WEIGHTS, another model folder), loaded once and
    shared, as the app shares it between sessions. The model ships with the repository: its absence
    is a failure, not a reason to skip."""
    from covidxr.classifier import DEFAULT_WEIGHTS, Classifier

    directory = Path(os.environ.get("COVIDXR_TEST_WEIGHTS") or DEFAULT_WEIGHTS)
    if not (directory / "model_card.json").exists():
        pytest.fail(f"no model card in {directory}: the shipped model is missing")
    return Classifier.from_dir(directory, threads=1)
