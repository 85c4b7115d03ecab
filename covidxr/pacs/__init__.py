"""covidxr in the radiology workflow: results back into the PACS study as DICOM, a DICOM node, a triage worklist.

- results.py: a DICOM film -> its score, and the results the PACS gets (IHE AI Results, as MONAI Deploy's
  writers make them): a Comprehensive 3D SR (TID 1500, highdicom) and an RGB secondary capture with the
  app's report picture burned in. Both in the film's patient and study, each in a new series.
- node.py: `dicom serve`, a pynetdicom Storage SCP that scores what a PACS sends it, in memory, and
  sends the results back (C-STORE or STOW-RS), retrying while the PACS is down.
- worklist.py: the node's table of studies in COVIDXR_DB (SQLAlchemy Core): identifiers, score, state;
  never pixels, names or patient ids.
- cli.py: `python -m covidxr dicom score|serve`.

The libraries are the `pacs` extra (highdicom, pynetdicom, dicomweb-client, SQLAlchemy); `require()` turns
their absence into one clear message. docs/pacs.md has the details.
"""
from __future__ import annotations

import importlib.util

EXTRA = "pacs"
MODULES = {"highdicom": "highdicom", "pynetdicom": "pynetdicom", "dicomweb_client": "dicomweb-client",
           "sqlalchemy": "SQLAlchemy"}


class PacsDependencyError(RuntimeError):
    """A library of the `pacs` extra is not installed."""


def require(*modules: str) -> None:
    """Raise PacsDependencyError naming what to install when any of `modules` (default: all) is missing."""
    missing = [MODULES[m] for m in (modules or MODULES) if importlib.util.find_spec(m) is None]
    if missing:
        raise PacsDependencyError(f"{', '.join(missing)} not installed: the DICOM features need "
                                  f"pip install 'covidxr[{EXTRA}]' (or requirements.txt)")
