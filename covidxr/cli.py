"""`python -m covidxr predict|evaluate|train|site|dicom`: JSON out, meaningful exit codes, no tracebacks for bad input.

Exit codes: 0 every film scored; 2 some input could not be read (the rest are still scored);
1 the tool itself could not run (missing or tampered weights, bad arguments).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .cli_common import EXIT_FAILED, EXIT_OK, EXIT_UNREADABLE, classifier_for, finish_predictions, prediction_row


# --- site profiles (covidxr.site): `site fit`, and `--site` on predict/evaluate -------------------------------


def cmd_site_fit(args: argparse.Namespace) -> int:
    import io
    import zipfile

    from .classifier import load
    from .evaluate import scan_folder, scan_zip
    from .safety import MAX_TOTAL_BYTES, PathRefused, ZipRefused, check_zip, read_regular
    from .site import DEFAULT_TARGET, ROUGH_PER_CLASS, TooFewFilms, collect, fit_profile

    clf = load(args.weights, threads=args.threads)
    pos = clf.card.positive_class
    src = Path(args.folder)
    zf = None
    try:
        if src.suffix.lower() == ".zip" and not src.is_dir():  # read_regular refuses a FIFO or device by name
            data = read_regular(src, MAX_TOTAL_BYTES)
            infos = check_zip(data)
            zf = zipfile.ZipFile(io.BytesIO(data))
            items = scan_zip(zf, infos, prefix=f"{src}!", positive_class=pos)
        else:
            items = scan_folder(src, pos)
    except (PathRefused, ZipRefused, zipfile.BadZipFile, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED

    def progress(done: int, total: int) -> None:
        print(f"\rread {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        got = collect(clf, items, progress=progress)
    finally:
        if zf is not None:
            zf.close()
    try:
        profile = fit_profile(got.data, clf.card, args.name or Path(args.out).resolve().name,
                              target=DEFAULT_TARGET if args.target_sensitivity is None else args.target_sensitivity)
    except TooFewFilms as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.override and not profile.offered:
        profile = profile.with_override(args.override)
    profile.save(args.out)
    f = profile.figures
    def num(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for what in ("shipped", "adapted"):
        r = f[what]
        lo, hi = r["ci"].get("auc") or (None, None)
        print(f"{what:8s} AUC {num(r['auc'])} (95% CI {num(lo)}-{num(hi)})  sensitivity {num(r['sensitivity'])}  "
              f"specificity {num(r['specificity'])}", file=sys.stderr)
    print(f"method {profile.method}, threshold {profile.threshold:.3f} for sensitivity {profile.target:g} (rule "
          f"{profile.rule}), {f['folds']} folds by {f['folds_by']}; {len(got.skipped)} films left out (unreadable, "
          "unlabelled or not a chest film)", file=sys.stderr)
    a = f["adapted"]
    if a.get("flagged_per_100") is not None:
        lo, hi = a["flagged_per_100_ci"]
        print(f"of 100 films without COVID-19, about {a['flagged_per_100']} flagged (95% CI {lo}-{hi}); "
              f"shipped model: about {f['shipped']['flagged_per_100']}", file=sys.stderr)
    if not profile.offered:
        print(f"warning: not offered for adoption: {profile.offered_why}"
              + ("; overridden (recorded in the profile)" if profile.override else
                 "; --site refuses it unless fitted again with --override REASON"), file=sys.stderr)
    if profile.rough:
        print(f"warning: fewer than {ROUGH_PER_CLASS} films of a class: the estimate is rough", file=sys.stderr)
    print(json.dumps({"site": profile.name, "out": str(Path(args.out)), "method": profile.method,
                      "threshold": profile.threshold, "target_sensitivity": profile.target, "rule": profile.rule,
                      "offered": profile.offered, "override": profile.override,
                      "films": profile.films, "rough_estimate": profile.rough,
                      "cross_validated": {k: {m: f[k][m] for m in ("auc", "sensitivity", "specificity", "ci")}
                                          for k in ("shipped", "adapted")}}, indent=1))
    return EXIT_OK


def _read(path: str):
    """(film, None) or (None, reason): read_film turns every file-system failure into a FilmError too."""
    from .films import FilmError, read_film

    try:
        return read_film(path), None
    except FilmError as e:
        return None, str(e)


def _audit_store():
    """$COVIDXR_DB's audit store checked writable (None when unset); SystemExit(1) with one line when it cannot
    be written, before anything is scored (fail closed)."""
    from .audit import AuditUnavailable
    from .audit_cli import open_for_scoring

    try:
        return open_for_scoring()
    except AuditUnavailable as e:
        print(f"error: nothing was scored: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None


def cmd_predict(args: argparse.Namespace) -> int:
    audit = _audit_store()
    clf = classifier_for(args)
    if args.engine != "local":  # covidxr.engines: the films scored on a Ray cluster
        from .engines.cli import predict_with

        return predict_with(clf, args, audit)
    heat_dir = Path(args.heatmap_dir) if args.heatmap_dir else None
    if heat_dir:
        from .explain import explain, heatmap_image

        heat_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.files:
        film, error = _read(path)
        if film is None:
            rows.append({"path": path, "error": error})
            print(f"{path}: {error}", file=sys.stderr)
            continue
        if heat_dir:
            ex = explain(clf, film)
            pred = ex.prediction
            if pred.ood is None or pred.ood.is_chest or args.include_non_chest:  # none for a refused image
                heatmap_image(ex.heatmap, film.width, film.height).save(heat_dir / f"{Path(path).stem}.png")
        else:
            pred = clf.predict([film])[0]
        rows.append(prediction_row(path, pred, args.include_non_chest))
    return finish_predictions(clf, audit, rows, args.json)


def cmd_evaluate(args: argparse.Namespace) -> int:
    audit = _audit_store()
    clf = classifier_for(args)

    def progress(done: int, total: int) -> None:
        print(f"\rscored {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    from .engines.cli import evaluate_with

    report = evaluate_with(clf, args, progress)  # on the chosen engine (local: this process), streamed to --results
    result = report.as_dict()
    if getattr(clf, "site", None) is not None:  # scored with a site profile (--site)
        from .profiles import version_of

        result = {"site": clf.site.name, "site_version": version_of(clf.site), **result}
    if audit is not None:
        from .audit_cli import evaluate_event, record_or_exit

        record_or_exit(audit, evaluate_event(clf, result))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    if args.csv:
        Path(args.csv).write_text(report.to_csv())
    ci = result["ci"]
    for k in ("sensitivity", "specificity", "accuracy", "auc"):
        v = result.get(k)
        lo, hi = ci.get(k) or (None, None)
        if v is not None:
            interval = "too few films for an interval" if lo is None or hi is None else f"95% CI {lo:.3f}-{hi:.3f}"
            print(f"{k:12s} {v:.3f}  ({interval})", file=sys.stderr)
    left_out = "included in the metrics" if args.include_non_chest else "left out of the metrics"
    print(f"films scored {result['n']}, unreadable {result['n_errors']}, not a frontal chest radiograph "
          f"{result['n_not_chest']} ({left_out})", file=sys.stderr)
    return EXIT_UNREADABLE if result["n_errors"] else EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .training.stages import STAGES, main

    card = main(Path(args.data), Path(args.out), Path(args.lungs) if args.lungs else None, Path(args.work),
                tuple(args.stages.split(",")) if args.stages else STAGES, threads=args.threads or 2)
    if card is None:
        print("stages done; the final stage has not run yet, so no model card was written", file=sys.stderr)
    else:
        print(f"wrote {Path(args.out) / 'model_card.json'}: threshold {card.threshold:.3f}, temperature {card.temperature:.2f}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    from .classifier import DEFAULT_WEIGHTS
    from .engines.cli import add_arguments as engine_arguments

    p = argparse.ArgumentParser(prog="python -m covidxr", description="COVID-19 chest X-ray screening (research aid, "
                                "not a diagnosis).")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="model directory (model_card.json + weights)")
    common.add_argument("--threads", type=int, default=None, help="torch threads (default $COVIDXR_THREADS or 1)")
    sp = sub.add_parser("predict", parents=[common], help="score films")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    sp.add_argument("--heatmap-dir", metavar="DIR", help="write each film's Grad-CAM map as DIR/<stem>.png (8-bit gray)")
    sp.add_argument("--include-non-chest", action="store_true", help="also score films the gate judges not a frontal "
                    "chest radiograph (their rows still say chest_xray: false)")
    sp.add_argument("--site", metavar="SITE_DIR", help="decide at this site profile's operating point (site fit)")
    engine_arguments(sp)
    sp.set_defaults(run=cmd_predict)
    se = sub.add_parser("evaluate", parents=[common], help="evaluate a labelled folder (one subfolder per class)")
    se.add_argument("folder")
    se.add_argument("--json", metavar="OUT", help="write the report here (default: stdout)")
    se.add_argument("--csv", metavar="OUT", help="also write the per-image table as CSV")
    se.add_argument("--threshold", type=float, default=None, help="override the model card's threshold")
    se.add_argument("--include-non-chest", action="store_true", help="count films the gate judges not a frontal "
                    "chest radiograph in the metrics (default: left out, counted as n_not_chest and listed)")
    se.add_argument("--site", metavar="SITE_DIR", help="score with this site profile (site fit)")
    engine_arguments(se)
    se.set_defaults(run=cmd_evaluate)
    ss = sub.add_parser("site", help="site profiles: validate and recalibrate on a hospital's own labelled films")
    ssub = ss.add_subparsers(dest="site_command", required=True)
    sf = ssub.add_parser("fit", parents=[common], help="fit a site profile on a labelled folder or .zip "
                         "(covid/ positive, other folders negative), cross-validated")
    sf.add_argument("folder", metavar="DIR")
    sf.add_argument("--out", required=True, metavar="SITE_DIR", help="where to write site.json and site.npz")
    sf.add_argument("--name", default=None, help="the profile's name (default: SITE_DIR's name)")
    sf.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                    help="the sensitivity the profile's threshold is read at (default 0.85, chosen by measurement: "
                         "docs/site-profiles.md); the profile stores the specificity to expect there, with its 95%% CI")
    sf.add_argument("--override", metavar="REASON", default=None,
                    help="adopt a profile that is clearly worse than the shipped model anyway; REASON is recorded")
    sf.set_defaults(run=cmd_site_fit)
    from .pacs.cli import add_parser as dicom_parser  # `dicom score|serve`: covidxr/pacs, docs/pacs.md

    dicom_parser(sub, common)
    from .audit_cli import add_arguments as audit_arguments

    audit_arguments(sub)  # `audit verify|export` (covidxr/audit_cli.py)
    st = sub.add_parser("train", help="train the model and write weights + model card")
    st.add_argument("--data", required=True, help="folder with MANIFEST.csv (../shared/data/cxr)")
    st.add_argument("--out", default="weights", help="where to write model.pt and model_card.json")
    st.add_argument("--lungs", default=None, help="lung masks (default: <data>/../lungs)")
    st.add_argument("--work", default=".cache/train", help="cache and checkpoints; rerun to resume")
    st.add_argument("--stages", default=None, help="comma-separated (default: every stage of covidxr.training.stages.STAGES); "
                    "also 'card' (rewrite the card from stored results) and 'ood'")
    st.add_argument("--threads", type=int, default=None)
    st.set_defaults(run=cmd_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The reader refuses oversized images itself, with its own message; Pillow's warning would be a second line.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    from .card import CardError

    try:
        return args.run(args)
    except CardError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:  # a site profile refused (covidxr.site.SiteError); anything else goes on up
        from .site import SiteError

        if not isinstance(e, SiteError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
