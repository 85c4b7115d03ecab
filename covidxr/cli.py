"""`python -m covidxr predict|evaluate|train|site`: JSON out, meaningful exit codes, no tracebacks for bad input.

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

EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


def _classifier(args: argparse.Namespace):
    from .classifier import Classifier

    return _with_site(Classifier.from_dir(args.weights, threads=args.threads), args)


# --- site profiles (covidxr.site): `site fit`, and `--site` on predict/evaluate -------------------------------


def _with_site(clf, args: argparse.Namespace):
    """The classifier at the site profile's operating point when `--site` names one (else unchanged)."""
    if not getattr(args, "site", None):
        return clf
    from .site import SiteProfile

    profile = SiteProfile.load(args.site, clf.card)
    profile.check_adoptable()  # one clearly worse than the shipped model is used only with a recorded override
    return clf.with_site(profile)


def cmd_site_fit(args: argparse.Namespace) -> int:
    import io
    import zipfile

    from .classifier import Classifier
    from .evaluate import scan_folder, scan_zip
    from .safety import PathRefused, ZipRefused, check_zip
    from .site import DEFAULT_TARGET, ROUGH_PER_CLASS, TooFewFilms, collect, fit_profile

    clf = Classifier.from_dir(args.weights, threads=args.threads)
    pos = clf.card.positive_class
    src = Path(args.folder)
    zf = None
    try:
        if src.is_file() and src.suffix.lower() == ".zip":
            data = src.read_bytes()
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


def cmd_predict(args: argparse.Namespace) -> int:
    clf = _classifier(args)
    if args.engine != "local":  # covidxr.engines: the films scored on a Ray cluster
        from .engines.cli import predict_with

        return predict_with(clf, args)
    heat_dir = Path(args.heatmap_dir) if args.heatmap_dir else None
    if heat_dir:
        from .explain import explain, heatmap_image

        heat_dir.mkdir(parents=True, exist_ok=True)
    rows, failed = [], False
    for path in args.files:
        film, error = _read(path)
        if film is None:
            failed = True
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
    print_predictions(rows, args.json)
    return EXIT_UNREADABLE if failed else EXIT_OK


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder

    clf = _classifier(args)

    def progress(done: int, total: int) -> None:
        print(f"\rscored {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    if args.engine != "local" or args.results:  # covidxr.engines: streamed to --results, resumable, Ray
        from .engines.cli import evaluate_with

        report = evaluate_with(clf, args, progress)
    else:
        report = evaluate_folder(clf, args.folder, threshold=args.threshold, progress=progress,
                                 include_non_chest=args.include_non_chest)
    result = report.as_dict()
    if getattr(clf, "site", None) is not None:  # scored with a site profile (--site)
        result = {"site": clf.site.name, **result}
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
                    help="the sensitivity the profile's threshold is read at (default 0.90); the profile stores the "
                         "specificity to expect there, with its 95%% CI")
    sf.add_argument("--override", metavar="REASON", default=None,
                    help="adopt a profile that is clearly worse than the shipped model anyway; REASON is recorded")
    sf.set_defaults(run=cmd_site_fit)
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
