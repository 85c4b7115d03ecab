"""Throughput of the engines on the same films: in-process, and Ray Data with 1 and 2 workers.

    python benchmarks/scale.py [--films 2000] [--batch-size 16] [--workers 1,2] [--json OUT] [--address ADDR]
                               [--side-by-side N] [--skip-local]

The films are the first N (sorted) of ../shared/data/cxr, every source and class, scored as `evaluate`
scores them. In-process: one process, one torch thread (iter_scores). Ray: a private local Ray instance
sized to this machine (or --address), one model per actor, one torch thread per actor; each worker count
is its own Ray Data run, timed from the dataset's start (actors loading the model included) to its last
row, and also from its first finished batch on (the steady rate, start-up left out). Reported per run:
films/s, films/s per CPU, and that per-CPU rate against in-process (efficiency); and the driver's own CPU
time per film (what bounds a cluster's throughput when workers are many). The machine's other load is
not controlled: on a shared machine, say so next to the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT.parent / "shared" / "data" / "cxr"


def films(n: int) -> list:
    """The first n films, sorted, taken round-robin over <source>/<class> folders (every source is in)."""
    from covidxr.evaluate import scan_folder

    items = scan_folder(CXR)
    by_folder: dict[tuple, list] = {}
    for it in items:
        by_folder.setdefault((it.source, it.label), []).append(it)
    out, lists = [], [v for _, v in sorted(by_folder.items())]
    i = 0
    while len(out) < n and any(i < len(v) for v in lists):
        out += [v[i] for v in lists if i < len(v)]
        i += 1
    return sorted(out[:n], key=lambda it: it.path)


def timed(run) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    first = []

    def progress(done: int, total: int) -> None:
        if done and not first:
            first.append((time.perf_counter(), done))

    rows = run(progress)
    t1 = time.perf_counter()
    wall, cpu = t1 - t0, time.process_time() - c0
    n = len(rows)
    steady = (n - first[0][1]) / (t1 - first[0][0]) if first and n > first[0][1] else None
    return {"films": n, "seconds": round(wall, 2), "films_per_s": round(n / wall, 2),
            "steady_films_per_s": None if steady is None else round(steady, 2),
            "driver_cpu_ms_per_film": round(1000 * cpu / n, 3), "errors": sum(r.error is not None for r in rows)}


def _in_process_rate(args: tuple[int, int, int]) -> float:
    """Films/s of one in-process run (one torch thread) over every other film of the first 2n, from `part`."""
    import torch

    from covidxr.classifier import load
    from covidxr.evaluate import iter_scores

    n, part, batch_size = args
    torch.set_num_threads(1)
    items = films(2 * n)[part::2][:n]
    clf = load(threads=1)
    list(iter_scores(clf, items[:batch_size], batch_size))  # warm: the first batch pays for lazy set-up
    t0 = time.perf_counter()
    rows = list(iter_scores(clf, items, batch_size))
    return len(rows) / (time.perf_counter() - t0)


def side_by_side(n: int, batch_size: int) -> dict:
    """The machine's own ceiling for two workers, with no engine: one in-process run alone, then two at
    once on disjoint films (separate processes). Their summed rate over the lone one is what two workers
    can reach here at best."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        alone = pool.map(_in_process_rate, [(n, 0, batch_size)])[0]
    with ctx.Pool(2) as pool:
        pair = pool.map(_in_process_rate, [(n, 0, batch_size), (n, 1, batch_size)])
    out = {"films_each": n, "alone_films_per_s": round(alone, 2), "pair_films_per_s": [round(x, 2) for x in pair],
           "pair_vs_alone": round(sum(pair) / alone, 3)}
    print(f"side by side, no engine: one run {alone:.2f} films/s; two at once {pair[0]:.2f} + {pair[1]:.2f} "
          f"= {out['pair_vs_alone']:.2f}x one run (the machine's ceiling for 2 workers)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--films", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    ap.add_argument("--address", default=None, help="join this Ray cluster (default: a private local instance)")
    ap.add_argument("--skip-local", action="store_true", help="leave out the in-process run")
    ap.add_argument("--side-by-side", type=int, default=0, metavar="N",
                    help="also measure the machine's ceiling for two workers: two in-process runs of N films at once")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)

    from covidxr.classifier import load
    from covidxr.engines import score_all
    from covidxr.engines.ray import session
    from covidxr.evaluate import iter_scores

    items = films(args.films)
    clf = load(threads=1)
    out = {"films": len(items), "cpus": os.cpu_count(), "batch_size": args.batch_size, "load_1min": os.getloadavg()[0]}
    print(f"{len(items)} films of {CXR}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    if not args.skip_local:
        def local(progress):
            rows = []
            for r in iter_scores(clf, items, args.batch_size, progress=progress):
                rows.append(r)
            return rows
        out["in_process"] = r = timed(local)
        r["cpus"] = 1
        print(f"in-process (1 thread):     {r['films_per_s']:7.2f} films/s  ({r['seconds']} s)")
    with session(args.address) as info:
        cpus = info["cpus"]
        for w in (int(x) for x in args.workers.split(",")):
            r = timed(lambda progress: score_all(items, "ray", threshold=clf.threshold, workers=w,
                                                 batch_size=args.batch_size, progress=progress))
            r["cpus"] = min(w, cpus)
            out[f"ray_{w}"] = r
            print(f"ray, {w} worker(s):          {r['films_per_s']:7.2f} films/s  ({r['seconds']} s; steady "
                  f"{r['steady_films_per_s']} films/s; driver {r['driver_cpu_ms_per_film']} ms CPU/film)")
    base = out.get("in_process", {}).get("films_per_s")
    for k in [k for k in out if k.startswith("ray_")]:
        r = out[k]
        r["films_per_s_per_cpu"] = round(r["films_per_s"] / r["cpus"], 2)
        if base:
            r["efficiency_vs_in_process"] = round(r["films_per_s_per_cpu"] / base, 3)
    if "ray_1" in out and "ray_2" in out:
        out["speedup_2_vs_1"] = round(out["ray_2"]["films_per_s"] / out["ray_1"]["films_per_s"], 3)
        s1, s2 = out["ray_1"]["steady_films_per_s"], out["ray_2"]["steady_films_per_s"]
        out["steady_speedup_2_vs_1"] = round(s2 / s1, 3) if s1 and s2 else None
        print(f"2 workers / 1 worker: {out['speedup_2_vs_1']:.2f}x end to end, "
              f"{out['steady_speedup_2_vs_1']}x steady (target >= 1.7x)")
    for k in [k for k in out if k.startswith("ray_")]:
        r = out[k]
        eff = r.get("efficiency_vs_in_process")
        print(f"{k}: {r['films_per_s_per_cpu']} films/s per CPU" + (f", {eff:.0%} of in-process per core" if eff else ""))
    if args.side_by_side:
        out["side_by_side"] = side_by_side(args.side_by_side, args.batch_size)
    out["load_1min_end"] = os.getloadavg()[0]
    print(f"load average {out['load_1min_end']:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
