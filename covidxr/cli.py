"""`python -m covidxr predict|evaluate|train`: JSON out, meaningful exit codes, no tracebacks for bad input.

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

    return Classifier.from_dir(args.weights, threads=args.threads)


def _read(path: str):
    """(film, None) or (None, reason): read_film turns every file-system failure into a FilmError too."""
    from .films import FilmError, read_film

    try:
        return read_film(path), None
    except FilmError as e:
        return None, str(e)


def prediction_row(path: str, pred) -> dict:
    row = {"path": path, "probability": round(pred.probability, 6), "label": pred.label,
           "threshold": pred.threshold, "class_probabilities": {k: round(v, 6) for k, v in pred.class_probabilities.items()}}
    if pred.ood is not None:
        row["chest_xray"] = bool(pred.ood.is_chest)
        if not pred.ood.is_chest:
            row["warning"] = "does not look like a frontal chest radiograph: " + "; ".join(pred.ood.reasons)
    return row


def cmd_predict(args: argparse.Namespace) -> int:
    clf = _classifier(args)
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
            heatmap_image(ex.heatmap, film.width, film.height).save(heat_dir / f"{Path(path).stem}.png")
        else:
            pred = clf.predict([film])[0]
        rows.append(prediction_row(path, pred))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            if "error" not in r:
                flag = f"  [{r['warning']}]" if "warning" in r else ""
                print(f"{r['path']}: {r['label']} (p = {r['probability']:.3f}, threshold {r['threshold']:.3f}){flag}")
    return EXIT_UNREADABLE if failed else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder

    clf = _classifier(args)

    def progress(done: int, total: int) -> None:
        print(f"\rscored {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    report = evaluate_folder(clf, args.folder, threshold=args.threshold, progress=progress)
    result = report.as_dict()
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
            print(f"{k:12s} {v:.3f}  (95% CI {lo:.3f}-{hi:.3f})", file=sys.stderr)
    print(f"films scored {result['n']}, unreadable {result['n_errors']}", file=sys.stderr)
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
    sp.set_defaults(run=cmd_predict)
    se = sub.add_parser("evaluate", parents=[common], help="evaluate a labelled folder (one subfolder per class)")
    se.add_argument("folder")
    se.add_argument("--json", metavar="OUT", help="write the report here (default: stdout)")
    se.add_argument("--csv", metavar="OUT", help="also write the per-image table as CSV")
    se.add_argument("--threshold", type=float, default=None, help="override the model card's threshold")
    se.set_defaults(run=cmd_evaluate)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
