"""The command line's engine options (--engine, --address, --workers, --results, --resume, --spill-dir) and
`evaluate`'s one path (the in-process `local` engine is an engine like Ray) and `predict --engine ray` (covidxr.cli
calls these; `predict` without an engine scores in-process, where it can also draw Grad-CAM maps)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_common import EXIT_FAILED, finish_predictions, predict_json
from . import ENGINES, EngineError, score_all


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (docs/cluster.md)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: in this process (default); ray: on a Ray cluster (Ray Data, one model per actor)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join: 'auto', host:port or ray://host:port (default: start a private "
                        "local Ray instance sized to this machine, stopped at the end)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray actors, each with its own copy of the model (default: the cluster's CPUs)")
    g.add_argument("--batch-size", type=int, default=16, metavar="N", help="films per batch (default 16)")
    g.add_argument("--results", metavar="FILE", default=None,
                   help="append one CSV line per film to FILE as each batch finishes (a killed run keeps them)")
    g.add_argument("--resume", action="store_true",
                   help="with --results: skip films FILE already holds with the same path and sha256")
    g.add_argument("--spill-dir", metavar="DIR", default=None,
                   help="local Ray instance only: let Ray spill objects to DIR (default: spilling off)")


def _options(args: argparse.Namespace) -> dict:
    return {"weights": args.weights, "threads": args.threads, "batch_size": args.batch_size,
            "workers": args.workers, "address": args.address, "spill_dir": args.spill_dir,
            "site": getattr(args, "site", None)}


def _fail(e: BaseException) -> SystemExit:
    """One line on stderr, exit status 1 (no traceback), for an engine that could not run."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    kind = "" if isinstance(e, (EngineError, ValueError)) else f"{type(e).__name__}: "
    print(f"error: {kind}{msg}", file=sys.stderr)
    return SystemExit(EXIT_FAILED)


def evaluate_with(clf, args: argparse.Namespace, progress):
    """`evaluate` on the chosen engine, streamed to --results and resumable; the report by build_report."""
    from . import evaluate_folder
    from ..safety import PathRefused

    threshold = clf.threshold if args.threshold is None else float(args.threshold)
    options = _options(args)
    if args.engine == "local":
        options["classifier"] = clf
    try:
        return evaluate_folder(args.folder, args.engine, threshold=threshold, positive_class=clf.card.positive_class,
                               include_non_chest=args.include_non_chest, results=args.results, resume=args.resume,
                               progress=progress, **options)
    except PathRefused:
        raise
    except Exception as e:  # noqa: BLE001 - a cluster that cannot be reached is one line, not a traceback
        raise _fail(e) from None


def _items(paths: list[str]):
    from ..evaluate import LabelledItem, scan_folder

    items = []
    for p in paths:
        if Path(p).is_dir():
            items += [LabelledItem(i.path, None, i.source, i.error) for i in scan_folder(p)]
        else:
            items.append(LabelledItem(p, None))
    return items


def predict_with(clf, args: argparse.Namespace, audit=None) -> int:
    """`predict FILE|DIR ... --engine ray`: the in-process predict's objects (covidxr.cli.predict_json), built
    from the engine's rows, recorded in `audit` like the in-process ones (cli_common.finish_predictions)."""
    if getattr(args, "heatmap_dir", None):
        print("error: --heatmap-dir runs in-process only (leave out --engine)", file=sys.stderr)
        return EXIT_FAILED
    try:
        rows = score_all(_items(args.files), args.engine, results=args.results, resume=args.resume,
                         threshold=clf.threshold, include_non_chest=args.include_non_chest, **_options(args))
    except Exception as e:  # noqa: BLE001
        raise _fail(e) from None
    site = clf.site.name if getattr(clf, "site", None) is not None else None
    out = []
    for r in rows:
        if r.error is not None:
            out.append({"path": r.path, "error": r.error})
            print(f"{r.path}: {r.error}", file=sys.stderr)
            continue
        out.append(predict_json(r.path, r.probability, r.prediction, clf.threshold, r.class_probabilities, r.gate(),
                                site))
    return finish_predictions(clf, audit, out, args.json)
