"""`python -m covidxr dicom score|serve` (registered by covidxr/cli.py). Exit codes as `predict`: 0 every film
scored, 2 some input could not be read (the rest still scored, nothing written for it), 1 the tool could not run."""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from ..audit import AuditUnavailable
from .events import AuditFailed, Hook, default_hook, emit, event, no_op

EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


def score_files(classifier, paths: list[str], out: str | Path, events: Hook = no_op, user: str | None = None) -> list[dict]:
    """Score DICOM films and write each one's SR (and SC) under `out`; one row per input, `error` for a file
    that is not a DICOM film. Each input gives one event to `events`."""
    from ..films import FilmError
    from ..films._common import _read_path
    from . import results

    user = user or getpass.getuser()
    rows = []
    for path in paths:
        try:
            data = _read_path(Path(path))  # the film reader's own bounded read
            scored = results.score(classifier, data, Path(path).name)
        except FilmError as e:
            rows.append({"path": path, "error": str(e)})
            emit(events, event("dicom.score", user, "error", classifier, detail={"error": str(e)}))
            continue
        try:
            made = results.results(scored, classifier)
        except Exception as e:  # noqa: BLE001 - a header highdicom cannot carry: this film's row, not the run
            msg = f"its DICOM results could not be made ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            rows.append({"path": path, "study_uid": scored.study_uid, "error": msg})
            emit(events, event("dicom.score", user, "error", classifier, scored, detail={"error": msg}))
            continue
        # recorded before anything is written: an audit that cannot be written stops the run (fail closed)
        emit(events, event("dicom.score", user, "scored" if scored.assessed else "refused", classifier, scored,
                           detail={"sr_uid": str(made[0].SOPInstanceUID), "reasons": scored.reasons,
                                   "sc_uid": str(made[1].SOPInstanceUID) if len(made) > 1 else None}))
        written = results.write(made, out)
        sr, sc = written[0], (written[1] if len(written) > 1 else None)
        pred = scored.prediction
        row = {"path": path, "study_uid": scored.study_uid, "sr": str(sr), "sc": None if sc is None else str(sc),
               "probability": round(float(pred.probability), 6) if scored.assessed else None,
               "label": pred.label if scored.assessed else None, "threshold": pred.threshold,
               "chest_xray": scored.assessed}
        if not scored.assessed:
            row["reasons"] = scored.reasons
        if pred.site:
            row["site"] = pred.site
        rows.append(row)
    return rows


def cmd_score(args: argparse.Namespace) -> int:
    from . import PacsDependencyError, require

    try:
        require("highdicom")
    except PacsDependencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    from ..cli import _classifier

    clf = _classifier(args)
    try:
        hook = default_hook()
    except AuditUnavailable as e:
        print(f"error: {e}; nothing was scored", file=sys.stderr)
        return EXIT_FAILED
    try:
        rows = score_files(clf, args.files, args.out, events=hook)
    except AuditFailed as e:
        print(f"error: {e}; stopped, nothing more is scored or written", file=sys.stderr)
        return EXIT_FAILED
    for r in rows:
        if "error" in r:
            print(f"{r['path']}: {r['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            if "error" in r:
                continue
            what = (f"{r['label']} ({r['probability']:.3f}, operating point {r['threshold']:.3f})" if r["chest_xray"]
                    else "not assessed: " + "; ".join(r["reasons"]))
            print(f"{r['path']}: {what}; SR {r['sr']}" + (f", SC {r['sc']}" if r["sc"] else ""))
    return EXIT_UNREADABLE if any("error" in r for r in rows) else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from . import PacsDependencyError, require

    try:
        require()
    except PacsDependencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    from ..cli import _classifier
    from .node import Destination, Node, NodeConfig
    from .worklist import Worklist

    try:
        dest = Destination.parse(args.send_to, args.stow_url)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if not args.allow and not dest.ae_title:
        print("error: say which calling AE titles may send films: --allow AET ... (without it only the --send-to "
              "PACS may)", file=sys.stderr)
        return EXIT_FAILED
    clf = _classifier(args)
    config = NodeConfig(ae_title=args.ae_title, port=args.port, host=args.host, allow=tuple(args.allow or ()),
                        destination=dest, retries=args.retries, retry_base_s=args.retry_after)
    try:
        hook = default_hook(args.db, always=True)  # the node's events go to the trail of its own database
    except AuditUnavailable as e:
        print(f"error: {e}; the node does not start without its audit trail", file=sys.stderr)
        return EXIT_FAILED
    node = Node(clf, config, Worklist.open(args.db), events=hook)
    node.serve_forever()
    return EXIT_OK


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """`dicom score` and `dicom serve` under `sub` (covidxr/cli.py's subparsers)."""
    sd = sub.add_parser("dicom", help="DICOM results for the PACS: score files, or run a DICOM node")
    dsub = sd.add_subparsers(dest="dicom_command", required=True)
    ds = dsub.add_parser("score", parents=[common], help="score DICOM films and write each one's SR and secondary "
                         "capture (research use, not for diagnosis)")
    ds.add_argument("files", nargs="+", metavar="FILE")
    ds.add_argument("--out", required=True, metavar="DIR", help="write results as DIR/<study uid>/<sop uid>.dcm")
    ds.add_argument("--site", metavar="SITE_DIR", help="decide at this site profile's operating point (site fit)")
    ds.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    ds.set_defaults(run=cmd_score)
    dv = dsub.add_parser("serve", parents=[common], help="a DICOM node: receives films, sends back SR + SC")
    dv.add_argument("--ae-title", required=True, metavar="AET", help="this node's AE title")
    dv.add_argument("--port", type=int, required=True, help="DICOM port to listen on")
    dv.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    dv.add_argument("--send-to", metavar="AET@HOST:PORT", help="send results by C-STORE to this PACS")
    dv.add_argument("--stow-url", metavar="URL", help="send results by STOW-RS to this DICOMweb root instead")
    dv.add_argument("--allow", nargs="+", metavar="AET", help="calling AE titles accepted (others are refused)")
    dv.add_argument("--site", metavar="SITE_DIR", help="decide at this site profile's operating point (site fit)")
    dv.add_argument("--db", default=None, help="worklist database URL (default $COVIDXR_DB, else an SQLite file)")
    dv.add_argument("--retries", type=int, default=8, help="delivery attempts before a result is left undelivered")
    dv.add_argument("--retry-after", type=float, default=1.0, metavar="S", help="first retry's wait (doubles)")
    dv.set_defaults(run=cmd_serve)
