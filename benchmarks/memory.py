"""Does a long batch evaluation keep memory flat? Evaluate N real films from a labelled folder, printing
resident memory as it goes.

    .venv/bin/python benchmarks/memory.py [--films 10000] [--data ../shared/data/cxr] [--weights weights]

The folder is built in a temporary directory (deleted afterwards) from the films of MANIFEST.csv, in
covid/ and other/ subfolders, repeating the set with new names until there are N films. It is scored by
`evaluate.evaluate_folder`, the path that `python -m covidxr evaluate` takes. The progress callback
reads the current resident set size (VmRSS) at each checkpoint. Flat means that the last checkpoint
is within a few MB of the first one past warm-up; the per-image rows themselves (path, label,
probability) are all the report keeps.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import status_mb  # benchmarks/ is this script's own folder, first on its sys.path
from covidxr import load
from covidxr.evaluate import evaluate_folder

ROOT = Path(__file__).resolve().parents[1]


def build_folder(data: Path, n: int, out: Path) -> None:
    with open(data / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for label in ("covid", "other"):
        (out / label).mkdir(parents=True)
    for i in range(n):
        r = rows[i % len(rows)]
        label = "covid" if r["label"] == "covid" else "other"
        shutil.copyfile(data / r["path"], out / label / f"{i:06d}{Path(r['path']).suffix}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--films", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1_000, help="print memory every this many films")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--weights", default=str(ROOT / "weights"))
    args = ap.parse_args()
    clf = load(args.weights)
    print(f"model loaded: RSS {status_mb('VmRSS'):.0f} MB")
    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        last = marks[-1][0] if marks else 0
        if done and (done // args.every > last // args.every or done == total):  # crossed a checkpoint
            marks.append((done, status_mb("VmRSS")))
            print(f"{done:>6} / {total} films  RSS {marks[-1][1]:7.1f} MB  "
                  f"{done / (time.perf_counter() - t0):5.1f} films/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="covidxr-memory-") as tmp:
        build_folder(Path(args.data), args.films, Path(tmp))
        t0 = time.perf_counter()
        report = evaluate_folder(clf, tmp, progress=progress)
    first, last = marks[0][1], marks[-1][1]
    print(f"scored {report.n} films ({report.n_errors} errors) in {report.seconds:.0f} s; RSS after the first "
          f"{marks[0][0]} films {first:.0f} MB, at the end {last:.0f} MB ({last - first:+.1f} MB); "
          f"peak {status_mb('VmHWM'):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
