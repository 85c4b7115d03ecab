"""What the command line's two paths share, so that neither imports the other: the exit codes, and `predict`'s
output built from an in-process Prediction (covidxr/cli.py) or from an engine's Row (covidxr/engines/cli.py).

Exit codes: 0 every film scored; 2 some input could not be read (the rest are still scored);
1 the tool itself could not run (missing or tampered weights, bad arguments).
"""
from __future__ import annotations

import json

EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


def prediction_row(path: str, pred, include_non_chest: bool = False) -> dict:
    """One `predict --json` object of an in-process Prediction. A film the gate refuses (chest_xray false) has
    null probability, label and class_probabilities unless `include_non_chest`; its reasons say why."""
    verdict = pred.ood
    withheld = verdict is not None and not verdict.is_chest and not include_non_chest
    return predict_json(path, None if withheld else pred.probability, None if withheld else pred.label,
                        pred.threshold, None if withheld else pred.class_probabilities,
                        None if verdict is None else verdict.as_dict(), getattr(pred, "site", None))


def predict_json(path: str, probability: float | None, label: str | None, threshold: float,
                 class_probabilities: dict[str, float] | None, gate: dict | None, site: str | None) -> dict:
    """The fields of one `predict --json` object, whichever engine scored the film. `gate`: the gate's
    verdict as its exports carry it (chest_xray, reasons, details, warnings); `site`: the site profile's name."""
    row = {"path": path, "probability": None if probability is None else round(probability, 6),
           "label": label, "threshold": threshold,
           "class_probabilities": None if class_probabilities is None
           else {k: round(v, 6) for k, v in class_probabilities.items()}}
    if site:  # scored with a site profile (--site)
        row["site"] = site
    if gate is not None:
        row.update(gate)
        if not gate["chest_xray"]:
            row["warning"] = "does not look like a frontal chest radiograph: " + "; ".join(gate["reasons"])
    return row


def print_predictions(rows: list[dict], as_json: bool) -> None:
    """`predict`'s output, whatever engine scored the films: a JSON array, or a line per scored film."""
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        if "error" in r:
            continue
        extra = "".join(f"  [warning: {w}]" for w in r.get("warnings", []))
        if r["probability"] is None:
            print(f"{r['path']}: not scored, {r['warning']}")
        else:
            flag = f"  [{r['warning']}]" if "warning" in r else ""
            print(f"{r['path']}: {r['label']} (p = {r['probability']:.3f}, threshold {r['threshold']:.3f}){flag}{extra}")


def finish_predictions(clf, audit, rows: list[dict], as_json: bool) -> int:
    """What `predict` does with its rows on any engine: each scored row names the site profile's version, each
    film (scored or unreadable) is recorded in the audit store when one is set (by its sha256; exit 1 before
    anything is printed if a record cannot be written), then the rows are printed. Returns the exit code."""
    if getattr(clf, "site", None) is not None:  # every result names the profile and its version
        from .profiles import version_of

        for row in rows:
            if "error" not in row:
                row["site_version"] = version_of(clf.site)
    if audit is not None:
        from .audit_cli import predict_event, record_or_exit

        for row in rows:
            record_or_exit(audit, predict_event(clf, row["path"], row))
    print_predictions(rows, as_json)
    return EXIT_UNREADABLE if any("error" in r for r in rows) else EXIT_OK


def classifier_for(args) -> "Classifier":  # noqa: F821 - covidxr.classifier, imported when called
    """The model as every command loads it (covidxr.classifier.load): `--weights`, `--threads`, and the `--site`
    profile's operating point if one is named. Here, not in cli.py, so that subcommands in other modules
    (covidxr.pacs.cli) use it without importing cli.py back."""
    from .classifier import load

    return load(args.weights, threads=args.threads, site=getattr(args, "site", None))
