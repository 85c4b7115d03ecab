"""The Worklist page's glue: the node's studies as a table, and a study's films fetched from the PACS.
No Streamlit here (pages/worklist.py draws); DICOM values go into dataframes, shown literally."""
from __future__ import annotations

from typing import Sequence

from webapp.views.wording import fmt_pct

STATE_WORDS = {"scored": "scored", "refused": "not assessed (not a frontal chest film)", "error": "unreadable"}
DELIVERY_WORDS = {"pending": "results being sent", "delivered": "results in the PACS",
                  "undelivered": "results NOT in the PACS yet (the node retries)", "": ""}


def study_rows(studies: Sequence, threshold: float | None = None) -> list[dict]:
    """One table row per study, in the worklist's order (highest COVID-19 score first)."""
    rows = []
    for rank, s in enumerate(studies, 1):
        rows.append({"rank": rank, "COVID-19 score": "—" if s.probability is None else fmt_pct(s.probability),
                     "decision": s.decision or "—", "state": STATE_WORDS.get(s.state, s.state),
                     "delivery": DELIVERY_WORDS.get(s.delivery, s.delivery), "reason": s.reason,
                     "accession": s.accession, "films": len(s.films), "received (UTC)": s.received.isoformat(" ", "seconds"),
                     "study UID": s.study_uid})
    return rows


def study_label(rank: int, study) -> str:
    """A study in the chooser: rank, score and accession number (plain text in a selectbox)."""
    score = "no score" if study.probability is None else fmt_pct(study.probability)
    return f"{rank}. {score} · accession {study.accession or '(none)'} · {len(study.films)} film(s)"
