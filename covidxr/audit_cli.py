"""`python -m covidxr audit verify|export`, and the records the command line's own scoring leaves.

`audit verify [--db URL]`: exit 0 when the chain holds, 1 naming the first broken record.
`audit export [--db URL] [--since DATE] [--user U] [--action A] --json|--csv`: the records, oldest first.
`predict` and `evaluate` record an event per film / per run when $COVIDXR_DB is set, and fail closed: when
the store cannot be written nothing is scored (one line on stderr, exit 1).
"""
from __future__ import annotations

import argparse
import sys
from datetime import date, datetime
from pathlib import Path

from .audit import DB_ENV, AuditEvent, AuditStore, AuditUnavailable, model_fields, open_store, store_from_env

EXIT_OK, EXIT_FAILED = 0, 1


def add_arguments(sub) -> None:
    """Register `audit` under the main parser's subcommands."""
    sa = sub.add_parser("audit", help="the audit trail: verify its hash chain, export its records")
    asub = sa.add_subparsers(dest="audit_command", required=True)
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=None, metavar="URL", help=f"the store (default ${DB_ENV}, else data/audit.db): "
                    "sqlite:///FILE or postgresql://USER@HOST/DB")
    v = asub.add_parser("verify", parents=[db], help="check the hash chain; exit 1 naming the first broken record")
    v.set_defaults(run=cmd_verify)
    e = asub.add_parser("export", parents=[db], help="print the records, oldest first")
    e.add_argument("--since", type=_since, default=None, metavar="DATE", help="from this UTC date or ISO time on")
    e.add_argument("--user", default=None, help="only this user (OpenID Connect subject, or 'local')")
    e.add_argument("--action", default=None, help="only this action (screen, batch, site-adopt, denied, ...)")
    fmt = e.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--json", action="store_true", help="a JSON array")
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per record")
    e.set_defaults(run=cmd_export)


def _since(text: str) -> str:
    try:
        return (date.fromisoformat(text).isoformat() if len(text) == 10 else datetime.fromisoformat(text).isoformat())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from None


def _store(url: str | None) -> AuditStore:
    return open_store(url)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        got = _store(args.db).verify()
    except AuditUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if got.ok:
        print(f"audit trail intact: {got.records} records")
        return EXIT_OK
    print(f"audit trail broken at record {got.broken}: {got.reason} ({got.records} records before it hold)",
          file=sys.stderr)
    return EXIT_FAILED


def cmd_export(args: argparse.Namespace) -> int:
    filters = {"since": args.since, "user": args.user, "action": args.action}
    try:
        store = _store(args.db)
        text = store.export_json(**filters) if args.json else store.export_csv(**filters)
    except AuditUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


# --- the command line's own scoring ------------------------------------------------------------------------

def open_for_scoring() -> AuditStore | None:
    """$COVIDXR_DB's store, checked writable before anything is scored; None when it is not set.
    AuditUnavailable when it is set and cannot be written (the caller scores nothing)."""
    store = store_from_env()
    if store is not None:
        store.check_writable()
    return store


def file_sha256(path: str) -> str:
    """The film's sha256 through the bounded reader (card.sha256_file: a FIFO or a device is never opened, a file
    over the film size limit not read); "" when it cannot be read, as the film itself then is not."""
    from .card import sha256_file
    from .safety import MAX_FILE_BYTES

    try:
        return sha256_file(path, MAX_FILE_BYTES)
    except OSError:
        return ""


def predict_event(clf, path: str, row: dict) -> AuditEvent:
    """The `screen` event of one film `predict` scored (or failed to read): its sha256, never its name."""
    return AuditEvent(action="screen", role="cli", object=file_sha256(path), **model_fields(clf.card, clf.site),
                      decision=row.get("label") or ("" if "error" not in row else "unreadable"),
                      probability=row.get("probability"), outcome="failure" if "error" in row else "success",
                      detail={"via": "predict", "threshold": row.get("threshold"),
                              **({"chest_xray": row["chest_xray"]} if "chest_xray" in row else {})})


def evaluate_event(clf, result: dict) -> AuditEvent:
    """The `batch` event of one `evaluate` run: counts and metrics, no film names."""
    keys = ("n", "n_errors", "n_unlabelled", "n_not_chest", "threshold", "sensitivity", "specificity", "accuracy",
            "auc")
    return AuditEvent(action="batch", role="cli", **model_fields(clf.card, clf.site),
                      detail={"via": "evaluate", **{k: result.get(k) for k in keys}})


def record_or_exit(store: AuditStore, event: AuditEvent) -> None:
    """Record, or stop with one line and exit 1 before any result is printed (fail closed)."""
    try:
        store.record(event)
    except AuditUnavailable as e:
        print(f"error: the results were not given out: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
