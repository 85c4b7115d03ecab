"""What `dicom score` and the node tell the audit trail: AuditEvent-shaped dicts (covidxr.audit, #23).

A hook is any callable taking one such dict; the default does nothing, and the lead's wiring passes the
audit store's. The dicts never hold a file name, a patient name or id, or pixels: the object is the study and
SOP instance UIDs, plus the sha256 of the bytes received.
"""
from __future__ import annotations

from typing import Any, Callable

Hook = Callable[[dict], Any]


class AuditFailed(RuntimeError):
    """The hook could not record an event: the caller fails closed (nothing written or sent for that film)."""


def emit(hook: Hook, ev: dict) -> None:
    """Give one event to the hook; AuditFailed (with the hook's reason) when it cannot record it."""
    try:
        hook(ev)
    except Exception as e:  # noqa: BLE001 - whatever the store raises (AuditUnavailable, a database error)
        raise AuditFailed(f"the audit trail cannot be written ({type(e).__name__}: {str(e)[:200]})") from e


def no_op(event: dict) -> None:
    """The default hook: record nothing."""


def default_hook(url: str | None = None, always: bool = False) -> Hook:
    """The hook `dicom score` and `dicom serve` use: the audit trail's store (covidxr.audit) of `url`, else of
    $COVIDXR_DB. `dicom score`, like `predict`, records only when $COVIDXR_DB is set; the node (`always`) records
    always, to the default store when neither is given. The store is checked writable first: AuditUnavailable
    then, and nothing is scored (fail closed); a record that fails later raises AuditFailed through emit()."""
    from ..audit import AuditEvent, open_store, store_from_env

    store = open_store(url) if (url or always) else store_from_env()
    if store is None:
        return no_op
    store.check_writable()
    return lambda e: store.record(AuditEvent(**e))


def event(action: str, user: str, outcome: str, classifier=None, scored=None, study_uid: str = "", sop_uid: str = "",
          sha256: str = "", detail: dict | None = None) -> dict:
    """One AuditEvent-shaped dict (action, user, user_name, role, object, model_version, weights_sha256, profile,
    profile_version, decision, probability, outcome, detail)."""
    if scored is not None:
        study_uid, sop_uid, sha256 = scored.study_uid, scored.sop_uid, scored.sha256
    obj = ";".join(p for p in (f"study={study_uid}" if study_uid else "", f"sop={sop_uid}" if sop_uid else "",
                               f"sha256={sha256}" if sha256 else "") if p)
    pred = getattr(scored, "prediction", None)
    assessed = scored is not None and scored.assessed
    from ..audit import model_fields  # the model and profile fields as every other record names them

    fields = model_fields(getattr(classifier, "card", None), getattr(classifier, "site", None))
    return {"action": action, "user": user, "user_name": user, "role": "dicom-node" if action.startswith("dicom.node")
            else "cli", "object": obj, **fields,
            "decision": (pred.label if assessed else "not assessed") if pred is not None else "",
            "probability": float(pred.probability) if assessed else None, "outcome": outcome,
            "detail": dict(detail or {})}
