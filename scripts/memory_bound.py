"""Memory bound of a server-folder batch with hostile files in it (issue #29): prints peak RSS.

Two runs, each in a fresh process, of what the Batch evaluation page does for a server folder
(webapp.session.batch.folder_batch inside $COVIDXR_DATA_ROOTS, then covidxr.evaluate.iter_scores with the shipped
model): first a folder of real films only (the normal peak), then the same films plus a character device
named zero.png (`mknod c 1 5`, what /dev/zero is; needs root, else left out and said so), a FIFO named
p.png and a 5 GB sparse huge.dcm. Before the bounded reader (covidxr.safety.read_regular) the device grew
the server by about 400 MB/s until it was killed, the sparse file took it to 6.9 GB and the FIFO stalled
the batch. The bound: peak with the hostile files <= normal peak + 300 MB, and the batch finishes.

    python scripts/memory_bound.py [--films N]     # exit status 0 when the bound holds
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CXR = REPO.parent / "shared" / "data" / "cxr"
BOUND_MB = 300
TIMEOUT_S = 600


def peak_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(folder: str) -> None:
    """One batch as the page runs it; prints a JSON line with the peak RSS and the rows' outcome."""
    from covidxr.classifier import load  # the project's packages, installed in .venv (scripts/setup.sh)
    from covidxr.evaluate import iter_scores
    from webapp.session.batch import folder_batch

    clf = load(os.environ.get("COVIDXR_WEIGHTS") or REPO / "weights", threads=1)
    t0 = time.perf_counter()
    _, items, _ = folder_batch("films", [Path(folder)], clf.card.positive_class)
    rows = list(iter_scores(clf, items, batch_size=8))
    print(json.dumps({"peak_mb": round(peak_mb(), 1), "films": len(rows), "seconds": round(time.perf_counter() - t0, 1),
                      "scored": sum(r.probability is not None for r in rows),
                      "errors": {Path(r.path).name: r.error for r in rows if r.error}}))


def real_films(n: int) -> list[Path]:
    """n real films: the shipped samples, then films from ../shared/data/cxr."""
    films = sorted(p for p in (REPO / "samples").glob("*/*") if p.suffix.lower() in (".jpg", ".png"))
    if len(films) < n and SHARED_CXR.is_dir():
        films += sorted(p for p in SHARED_CXR.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n - len(films)]
    return films[:n]


def make_folder(root: Path, films: list[Path], hostile: bool) -> list[str]:
    """root/films/{covid,normal}/ with the films (classes alternate), and the hostile files when asked;
    returns what was put there besides the films."""
    for c in ("covid", "normal"):
        (root / "films" / c).mkdir(parents=True)
    for i, f in enumerate(films):
        shutil.copyfile(f, root / "films" / ("covid" if i % 2 else "normal") / f"{i:03d}{f.suffix}")
    if not hostile:
        return []
    made = []
    bad = root / "films" / "covid"
    try:
        os.mknod(bad / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        made.append("zero.png: character device 1,5 (/dev/zero)")
    except PermissionError:
        print("note: not root, so no character device (mknod needs CAP_MKNOD)", file=sys.stderr)
    os.mkfifo(bad / "p.png")
    made.append("p.png: FIFO")
    with open(bad / "huge.dcm", "wb") as f:
        f.truncate(5 << 30)
    made.append("huge.dcm: 5 GB sparse file")
    return made


def run(root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True,
                         timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        raise SystemExit(f"the batch failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--films", type=int, default=40, help="real films in the folder (default 40)")
    p.add_argument("--child", metavar="ROOT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return 0
    films = real_films(args.films)
    with tempfile.TemporaryDirectory(prefix="covidxr-membound-") as tmp:
        normal_root, hostile_root = Path(tmp) / "normal", Path(tmp) / "hostile"
        make_folder(normal_root, films, hostile=False)
        made = make_folder(hostile_root, films, hostile=True)
        normal = run(normal_root)
        try:
            hostile = run(hostile_root)
        except subprocess.TimeoutExpired:
            print(f"FAIL: the batch with hostile files did not finish in {TIMEOUT_S} s", file=sys.stderr)
            return 1
    print(f"films: {len(films)} real; hostile files: {'; '.join(made)}")
    print(f"normal folder:        peak RSS {normal['peak_mb']:8.1f} MB  ({normal['scored']} scored, {normal['seconds']} s)")
    print(f"with hostile files:   peak RSS {hostile['peak_mb']:8.1f} MB  ({hostile['scored']} scored, {hostile['seconds']} s)")
    for name, error in sorted(hostile["errors"].items()):
        print(f"  refused {name}: {error}")
    delta = hostile["peak_mb"] - normal["peak_mb"]
    ok = delta <= BOUND_MB and hostile["scored"] == normal["scored"]
    print(f"difference {delta:+.1f} MB (bound +{BOUND_MB} MB): {'holds' if ok else 'EXCEEDED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
