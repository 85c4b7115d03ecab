"""Audit trail (site admins): the records filtered by user, action and date, the chain's check, CSV download."""
import datetime as dt

import streamlit as st

from covidxr.audit import AuditUnavailable, open_store, records_csv, safe_url
from webapp.views import access
from webapp.services import audit_log
from webapp.views import icons

access.require_admin("open the Audit page")
st.title("Audit trail")
store = open_store()
st.caption(f"Store: {safe_url(store.url)}. One record per event; each carries the hash of the one before it.")
left, mid, right = st.columns(3)
user = left.text_input("User (subject, or local)", key="audit_user").strip() or None
action = mid.selectbox("Action", ["", "sign-in", "sign-out", "screen", "batch", "review-open", "export", "site-fit",
                                  "site-adopt", "site-retire", "site-select", "denied", "audit-export"],
                       key="audit_action", format_func=lambda a: a or "any") or None
since = right.date_input("Since (UTC)", value=None, key="audit_since")
try:
    rows = store.records(since=since.isoformat() if isinstance(since, dt.date) else None, user=user, action=action)
    verified = store.verify()
except AuditUnavailable as e:
    st.error("The audit trail cannot be read:", icon=icons.ERROR)
    st.text(str(e))
    st.stop()
if verified.ok:
    st.success(f"The chain holds: {verified.records} records.", icon=icons.CHAIN_HOLDS)
else:
    st.error(f"The chain is broken at record {verified.broken}: {verified.reason}", icon=icons.CHAIN_BROKEN)
st.dataframe([{k: v for k, v in r.as_dict().items() if k not in ("prev_hash",)} for r in rows[-1000:]],
             hide_index=True)
st.caption(f"{len(rows)} records match" + (" (the last 1000 shown)" if len(rows) > 1000 else ""))


record_export = audit_log.deferred("audit-export", model=False, detail={"records": len(rows), "user": user or "",
                                                                       "action": action or ""})


def csv_text() -> str:
    record_export()
    return records_csv(rows)


st.download_button("Download these records (CSV)", csv_text, file_name="covidxr_audit.csv", mime="text/csv",
                   key="audit_csv", on_click="ignore")
