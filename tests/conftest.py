"""Shared test helpers. Real data lies beside the clone in ../shared (CI has it there too)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:  # `pytest` (not only `python -m pytest`) imports covidxr and ui from the clone
    sys.path.insert(0, str(REPO))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, e.g. shared_data("cxr", "MANIFEST.csv")."""
    return SHARED.joinpath("data", *parts)
