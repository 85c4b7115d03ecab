"""Speed of covidxr against the field's reference architecture, in one run on one machine.

    python benchmarks/bench.py [--weights weights/] [--threads 1] [--repeats 7] [--json OUT] [--quick]

The baseline is a DenseNet-121 at 224 px (CheXNet / torchxrayvision's architecture, random weights,
2-logit head) fed by the same pipeline: the same `read_film` decoding, a plain resize to 224 and
normalisation (it has no lung segmenter), the same batching and the same pytorch-grad-cam. Both
models are timed in alternating rounds after a warm-up, so that a busy machine slows both alike,
and every figure is a median. Films are real ones from ../shared/data; the 2048 px 16-bit PNG is
made in memory from a real film, and every per-film time starts from the file's bytes.

Cold start and peak memory are measured in fresh subprocesses (`--child`), which is why this
module imports only the standard library at the top: a child must pay for nothing but the app.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

PNG_SIDE = 2048
BASELINE_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BATCH = 16                       # the evaluation's batch size
SOURCE_FILM = "hannover-mhh"     # CC BY 3.0: the films the 2048 PNG and the single JPEG come from
FOLDER_SOURCES = ("hannover-mhh", "ieee8023-jul2020")  # 512 px films for the throughput folder
DICOMS = {"dicom": "cxr/nih-cxr_DX_1024_8bit.dcm", "dicom_j2k": "cxr/nema-wg04_RG1_J2KI.dcm"}
FILM_LABELS = {"png16": "2048 px 16-bit PNG", "jpeg": "512 px JPEG", "dicom": "1024 px DICOM (NIH DX, 8-bit)",
               "dicom_j2k": "1955 x 1841 DICOM, JPEG 2000 (NEMA RG1, 15-bit)"}
TARGETS = {"predict_ms": 0.5, "predict_gradcam_ms": 0.5, "throughput_fps": 3.5}  # issue 15: JPEG and PNG alike
LIMITS = {"peak_rss_mb": 1500.0, "weights_mb": 25.0}


# ---------------------------------------------------------------- inputs: real films, as bytes

def film_paths(data: Path, sources: tuple[str, ...], n: int) -> list[Path]:
    """The first n films (sorted, so every run uses the same ones) of the given sources."""
    paths = sorted(p for s in sources for p in (data / "cxr" / s).glob("*/*.jpg"))
    if len(paths) < n:
        raise SystemExit(f"need {n} films under {data / 'cxr'} {sources}, found {len(paths)}")
    return paths[:n]


def png16_bytes(film: Path, side: int = PNG_SIDE) -> bytes:
    """A real film upsampled to side x side and stored as a 16-bit grayscale PNG, deterministically."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(film).convert("F").resize((side, side), Image.BILINEAR)) / 255.0
    out = io.BytesIO()
    Image.fromarray(np.clip(np.round(a * 65535), 0, 65535).astype(np.uint16)).save(out, format="PNG")
    return out.getvalue()


def bench_films(data: Path) -> dict[str, bytes]:
    """name -> file bytes: the 2048 px PNG, a 512 px JPEG, the DICOMs that exist."""
    jpeg = film_paths(data, (SOURCE_FILM,), 1)[0]
    films = {"png16": png16_bytes(jpeg), "jpeg": jpeg.read_bytes()}
    films.update({k: (data / "dicom" / v).read_bytes() for k, v in DICOMS.items() if (data / "dicom" / v).exists()})
    return films


# ---------------------------------------------------------------- the two pipelines

class Ours:
    """covidxr as the app runs it: Classifier.predict, explain.explain + explain.overlay."""

    label = "covidxr"

    def __init__(self, weights: Path):
        from covidxr.classifier import load

        self.clf = load(weights)

    def predict(self, films: list) -> list[float]:
        return [p.probability for p in self.clf.predict(films, batch_size=BATCH)]

    def explain(self, film) -> tuple[float, object]:
        """The app's single-film path: one Grad-CAM pass gives the prediction and the map."""
        from covidxr.explain import explain, overlay

        e = explain(self.clf, film)
        return e.prediction.probability, overlay(film.pixels, e.heatmap)

    def nets(self) -> dict[str, tuple]:
        """name -> (module, single-film input shape), for FLOP counting and forward timing."""
        c = self.clf.card
        shape = (1, 3, c.input_size, c.input_size)
        return {"lung segmenter": (self.clf.lungs, (1, 1, c.lung_input_size, c.lung_input_size)),
                **{f"classifier {i + 1}" if len(self.clf.nets) > 1 else "classifier": (net, shape)
                   for i, net in enumerate(self.clf.nets)}}

    def runners(self) -> dict[str, Callable]:
        """name -> how predict() runs that network on an input: the classifiers on ONNX Runtime."""
        return {name: (lambda x, i=i: self.clf.onnx(i).run(x))
                for i, name in enumerate(n for n in self.nets() if n.startswith("classifier"))}


class OursOnPyTorch(Ours):
    """Ours with the networks on PyTorch eager instead of ONNX Runtime (Classifier.forward_pytorch): what the
    runtime is worth, measured in the same rounds."""

    def __init__(self, ours: Ours):
        import copy

        self.clf = copy.copy(ours.clf)
        self.clf.forward = self.clf.forward_pytorch


def densenet121():
    import torch
    import torchvision

    return torchvision.models.densenet121(weights=None, num_classes=2).eval().to(memory_format=torch.channels_last)


class Baseline:
    """DenseNet-121 at 224 px through the same reader, resize, batching, Grad-CAM and overlay."""

    label = "DenseNet-121 @224"

    def __init__(self, state: dict | None = None):
        self.net = densenet121()
        if state is not None:
            self.net.load_state_dict(state)
        self._cam = None

    def cam(self):
        """Grad-CAM on a private copy whose backward pass stops at the CAM layer, as covidxr's does."""
        if self._cam is None:
            import copy

            from pytorch_grad_cam import GradCAM

            net = copy.deepcopy(self.net)
            for p in net.parameters():
                p.requires_grad_(False)
            for p in net.features.norm5.parameters():
                p.requires_grad_(True)
            self._cam = GradCAM(model=net, target_layers=[net.features.norm5])
        return self._cam

    def tensor(self, films: list):
        import torch
        from covidxr.preprocess import resize, to_tensor

        x = to_tensor([resize(f.pixels, BASELINE_SIZE, BASELINE_SIZE) for f in films], IMAGENET_MEAN, IMAGENET_STD)
        return x.to(memory_format=torch.channels_last)

    def predict(self, films: list) -> list[float]:
        import torch

        out: list[float] = []
        for i in range(0, len(films), BATCH):
            with torch.inference_mode():
                out += torch.softmax(self.net(self.tensor(films[i:i + BATCH])), -1)[:, 0].tolist()
        return out

    def explain(self, film) -> tuple[float, object]:
        """One Grad-CAM pass: probability and map; the map is laid on the whole film, then overlaid."""
        import torch
        from covidxr.explain import overlay, place
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = self.cam()
        with torch.inference_mode(False), torch.enable_grad():
            heat = cam(input_tensor=self.tensor([film]), targets=[ClassifierOutputTarget(0)])[0]
            probability = torch.softmax(cam.outputs.detach()[0], -1)[0].item()
        heat = place(heat, (0.0, 1.0, 0.0, 1.0), film.pixels.shape)
        return probability, overlay(film.pixels, heat)

    def nets(self) -> dict[str, tuple]:
        return {"classifier": (self.net, (1, 3, BASELINE_SIZE, BASELINE_SIZE))}


# ---------------------------------------------------------------- timing

def timings(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each run of each case. Each round runs every case once, in a rotating order, so
    that load from other processes falls on all cases alike; the first `warmup` rounds are not kept."""
    names, times = list(cases), {k: [] for k in cases}
    for r in range(warmup + repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            cases[k]()
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


def rounds(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per case (see timings)."""
    return {k: statistics.median(v) for k, v in timings(cases, repeats, warmup).items()}


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """The machine's float32 matrix-multiply rate at the current thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    s = rounds({"mm": lambda: torch.mm(a, b)}, repeats, warmup=2)["mm"]
    return 2 * n ** 3 / s / 1e9


def forward_flops(net, shape: tuple) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(shape).to(memory_format=torch.channels_last) if shape[1] == 3 else torch.zeros(shape))
    return int(counter.get_total_flops())


def forward_ms(nets: dict[str, tuple], repeats: int, runners: dict[str, Callable] | None = None) -> dict[str, float]:
    """Median batch-1 forward time of each network alone (no pre-processing), run as the pipeline runs it
    (`runners`: name -> callable on the input; the others by PyTorch)."""
    import torch

    cases = {}
    for name, (net, shape) in nets.items():
        x = torch.rand(shape)
        x = x.to(memory_format=torch.channels_last) if shape[1] == 3 else x

        def run(net=net, x=x, fn=(runners or {}).get(name)):
            with torch.inference_mode():
                fn(x) if fn else net(x)
        cases[name] = run
    return {k: v * 1e3 for k, v in rounds(cases, repeats).items()}


def stages_ms(clf, data: bytes, repeats: int) -> dict[str, float]:
    """Where our single-film time goes: each step of Classifier.predict timed on its own."""
    import torch
    from covidxr.films import read_film
    from covidxr.preprocess import lung_input, prepare_film

    c = clf.card
    film = read_film(data)
    x_lung = torch.from_numpy(lung_input(film.pixels, c.lung_input_size))[None, None]
    with torch.inference_mode():
        prob = torch.sigmoid(clf.lungs(x_lung))[0, 0].numpy()
    (prep,) = clf.prepare([film])  # as predict() builds it (with the segmenter's input kept for the gate)
    inputs = [clf.tensor([p]) for p in prep.networks]

    def nets(net, x):
        with torch.inference_mode():
            return net(x)

    with torch.inference_mode():
        logits, feats = clf.forward([prep])
    cases = {
        "decode (read_film)": lambda: read_film(data),
        "segmenter input (resize + equalize)": lambda: lung_input(film.pixels, c.lung_input_size),
        "lung segmenter forward": lambda: nets(clf.lungs, x_lung),
        f"crop + mask + equalize (prepare, {len(c.views)} views)": lambda: prepare_film(
            film.pixels, prep.overview, prob, c.views, c.input_size, c.crop_margin, c.mask_dilation),
        "to tensor": lambda: [clf.tensor([p]) for p in prep.networks],
        f"classifier forward ({len(clf.nets)} networks, ONNX Runtime)": lambda: [clf.onnx(i).run(x)
                                                                              for i, x in enumerate(inputs)],
        f"(not used: the same on PyTorch eager, for comparison)": lambda: [nets(n, x) for n, x in zip(clf.nets, inputs)],
        "decide (softmax, OOD check)": lambda: clf.decide(film, prep, logits[0], feats[0]),
    }
    return {k: v * 1e3 for k, v in rounds(cases, repeats).items()}


# ---------------------------------------------------------------- subprocesses: cold start, memory

def child(kind: str, model: str, weights: Path, threads: int) -> dict:
    """Run inside a fresh interpreter. 'cold': import + load. 'rss': + predict + Grad-CAM of stdin's film."""
    t0 = time.perf_counter()
    if model == "ours":
        from covidxr.classifier import load, set_threads

        set_threads(threads)
        t1 = time.perf_counter()
        pipe = Ours.__new__(Ours)
        pipe.clf = load(weights, threads=threads)
    else:
        import torch
        import torchvision  # noqa: F401 - the baseline's import cost

        torch.set_num_threads(threads)
        t1 = time.perf_counter()
        pipe = Baseline(torch.load(weights, map_location="cpu", weights_only=True))
    out = {"import_s": t1 - t0, "load_s": time.perf_counter() - t1}
    if kind == "rss":
        from covidxr.films import read_film

        film = read_film(sys.stdin.buffer.read())
        pipe.predict([film])
        pipe.explain(film)  # the app shows both
        out["peak_rss_mb"] = peak_rss_mb()
    return out


def status_mb(key: str) -> float:
    """A memory figure of this process from Linux's /proc/self/status (VmRSS now, VmHWM peak), in MB."""
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own address
    space; ru_maxrss would inherit the parent's peak across fork + exec and report the benchmark."""
    try:
        return status_mb("VmHWM")
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def run_child(kind: str, model: str, weights: Path, threads: int, stdin: bytes = b"") -> tuple[float, dict]:
    """(wall seconds of the whole subprocess, what it reported)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--model", model,
           "--weights", str(weights), "--threads", str(threads)]
    env = dict(os.environ, COVIDXR_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    t = time.perf_counter()
    r = subprocess.run(cmd, input=stdin, capture_output=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{kind} subprocess for {model} failed:\n{r.stderr.decode()[-2000:]}")
    return wall, json.loads(r.stdout.decode().strip().splitlines()[-1])


def weights_mb(directory: Path) -> float:
    """Everything shipped beside the card that the model needs (weights, OOD statistics)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.suffix != ".json") / 1e6


# ---------------------------------------------------------------- the run

@dataclass
class Settings:
    weights: Path
    data: Path
    threads: int
    repeats: int
    folder: int
    cold_repeats: int
    quick: bool = False


def measure(s: Settings) -> dict:
    import torch
    from covidxr.classifier import set_threads
    from covidxr.films import FilmError, read_film

    set_threads(s.threads)
    load_start = os.getloadavg()
    ours, base = Ours(s.weights), Baseline()
    pipes = {"": ours, "baseline_": base}
    films = bench_films(s.data)
    if s.quick:
        films.pop("dicom_j2k", None)
    readable = {}
    for name, data in films.items():
        try:
            readable[name] = read_film(data, name)
        except FilmError as e:
            print(f"note: {name} not benchmarked, read_film refused it: {e}", file=sys.stderr)
    report: dict = {"films": {}, "best": {}}

    for name in readable:
        cases = {}
        for prefix, pipe in pipes.items():
            data = films[name]
            cases[f"{prefix}predict_ms"] = lambda p=pipe, d=data: p.predict([read_film(d)])
            cases[f"{prefix}predict_gradcam_ms"] = lambda p=pipe, d=data: p.explain(read_film(d))
        t = timings(cases, s.repeats)
        report["films"][name] = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        report["best"][name] = {k: min(v) * 1e3 for k, v in t.items()}  # the fastest run: less noise, less truth
    report.update(report["films"]["png16"])

    folder = film_paths(s.data, FOLDER_SOURCES, s.folder)
    t = timings({f"{prefix}throughput_fps": (lambda p=pipe: p.predict([read_film(f) for f in folder]))
                 for prefix, pipe in {**pipes, "pytorch_": OursOnPyTorch(ours)}.items()}, max(1, s.repeats // 2), warmup=0)
    report.update({k: len(folder) / statistics.median(v) for k, v in t.items()})
    report["best"]["throughput"] = {k: len(folder) / min(v) for k, v in t.items()}

    with tempfile.TemporaryDirectory() as tmp:  # the baseline ships its weights too
        base_weights = Path(tmp) / "densenet121.pt"
        torch.save(base.net.state_dict(), base_weights)
        report["baseline_weights_mb"] = base_weights.stat().st_size / 1e6
        for prefix, model, w in (("", "ours", s.weights), ("baseline_", "baseline", base_weights))[:1 if s.quick else 2]:
            cold = [run_child("cold", model, w, s.threads) for _ in range(s.cold_repeats)]
            report[f"{prefix}cold_start_s"] = statistics.median(c[0] for c in cold)
            report[f"{prefix}cold_start_parts_s"] = {k: statistics.median(c[1][k] for c in cold)
                                                     for k in ("import_s", "load_s")}
            report[f"{prefix}peak_rss_mb"] = run_child("rss", model, w, s.threads, films["png16"])[1]["peak_rss_mb"]
    report["weights_mb"] = weights_mb(s.weights)

    report["matmul_gflops"] = matmul_gflops()
    for prefix, pipe in pipes.items():
        nets = pipe.nets()
        flops = {k: forward_flops(net, shape) for k, (net, shape) in nets.items()}
        ms = forward_ms(nets, s.repeats, getattr(pipe, "runners", dict)())
        report[f"{prefix}gflop_per_film"] = sum(flops.values()) / 1e9
        report[f"{prefix}forward"] = {k: {"gflop": flops[k] / 1e9, "ms": ms[k], "gflops": flops[k] / ms[k] / 1e6}
                                      for k in nets}
        report[f"{prefix}forward_gflops"] = sum(flops.values()) / sum(ms.values()) / 1e6
    report["stages_ms"] = {name: stages_ms(ours.clf, films[name], s.repeats) for name in ("png16", "jpeg")[:1 if s.quick else 2]}
    report["settings"] = {"threads": s.threads, "repeats": s.repeats, "folder_films": len(folder),
                          "weights": str(s.weights), "model": ours.clf.card.name, "torch": torch.__version__,
                          "cpu": _cpu(), "cores": os.cpu_count(), "load_average_start": load_start,
                          "load_average": os.getloadavg()}
    return report


def _cpu() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# ---------------------------------------------------------------- the report

ROWS = [  # key, what, unit, target kind
    ("predict_ms", "2048 px 16-bit PNG, bytes to probability", "ms", "ratio"),
    ("predict_gradcam_ms", "2048 px 16-bit PNG, + Grad-CAM + overlay", "ms", "ratio"),
    ("throughput_fps", "batch of 512 px JPEGs, reading included", "films/s", "ratio"),
    ("cold_start_s", "cold start: import + model load (fresh process)", "s", None),
    ("peak_rss_mb", "peak memory: load + predict + Grad-CAM of the 2048 PNG", "MB", "limit"),
    ("weights_mb", "shipped weights", "MB", "limit"),
]


def markdown(r: dict) -> str:
    def f(x) -> str:
        return "n/a" if x is None else f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"

    s = r["settings"]
    lines = ["| measure | covidxr | DenseNet-121 @224 | ratio | target | met |", "|---|---|---|---|---|---|"]
    for key, what, unit, kind in ROWS:
        ours, base = r.get(key), r.get("baseline_" + key)
        ratio = ours / base if ours is not None and base else None
        target, met = "", ""
        if kind == "ratio":
            t = TARGETS[key]
            target = f"{'>=' if key == 'throughput_fps' else '<='} {t:g}x"
            met = "yes" if (ratio >= t if key == "throughput_fps" else ratio <= t) else "**no**"
        elif kind == "limit":
            target, met = f"< {LIMITS[key]:g} {unit}", "yes" if ours < LIMITS[key] else "**no**"
        lines.append(f"| {what} ({unit}) | {f(ours)} | {f(base)} | {f(ratio)} | {target} | {met} |")
    if r.get("pytorch_throughput_fps"):
        ratio = r["pytorch_throughput_fps"] / r["baseline_throughput_fps"]
        lines.append(f"| the same batch, covidxr's networks on PyTorch eager instead of ONNX Runtime (films/s) "
                     f"| {f(r['pytorch_throughput_fps'])} | {f(r['baseline_throughput_fps'])} | {f(ratio)} | | |")
    for name, t in r["films"].items():
        if name == "png16":
            continue
        for k, what in (("predict_ms", "bytes to probability"), ("predict_gradcam_ms", "+ Grad-CAM + overlay")):
            ratio = t[k] / t["baseline_" + k]
            target, met = (f"<= {TARGETS[k]:g}x", "yes" if ratio <= TARGETS[k] else "**no**") if name == "jpeg" else ("", "")
            lines.append(f"| {FILM_LABELS.get(name, name)}, {what} (ms) | {f(t[k])} | {f(t['baseline_' + k])} "
                         f"| {f(ratio)} | {target} | {met} |")
    lines.append(f"| forward FLOPs per film (GFLOP) | {f(r['gflop_per_film'])} | {f(r['baseline_gflop_per_film'])} "
                 f"| {f(r['gflop_per_film'] / r['baseline_gflop_per_film'])} | | |")
    lines.append(f"| forward pass, achieved (GFLOP/s; machine matmul {f(r['matmul_gflops'])}) "
                 f"| {f(r['forward_gflops'])} | {f(r['baseline_forward_gflops'])} | | | |")
    head = (f"{s['cpu']}, {s['cores']} cores, {s['threads']} torch thread(s), torch {s['torch']}, "
            f"model `{s['model']}`; medians of {s['repeats']} runs after warm-up, "
            f"throughput over {s['folder_films']} films in batches of {BATCH}; "
            f"load average (1, 5, 15 min) at the start {', '.join(f'{x:.1f}' for x in s['load_average_start'])}, "
            f"at the end {', '.join(f'{x:.1f}' for x in s['load_average'])}.")
    stages = ["", "Where covidxr's single-film time goes (ms, medians):", "",
              "| stage | " + " | ".join(r["stages_ms"]) + " |", "|---|" + "---|" * len(r["stages_ms"])]
    for stage in next(iter(r["stages_ms"].values())):
        stages.append(f"| {stage} | " + " | ".join(f(v[stage]) for v in r["stages_ms"].values()) + " |")
    return "\n".join([head, ""] + lines + stages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights", help="model directory (default weights/)")
    ap.add_argument("--data", type=Path, default=DATA, help="../shared/data: cxr/ and dicom/")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both models (default 1)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per figure; medians are reported")
    ap.add_argument("--folder", type=int, default=64, help="films in the throughput folder")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: one timed run, a 16-film folder, no J2K film, no baseline subprocesses")
    ap.add_argument("--child", choices=("cold", "rss"), help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.model, a.weights, a.threads)))
        return 0
    s = Settings(a.weights, a.data, a.threads, 1 if a.quick else a.repeats, BATCH if a.quick else a.folder,
                 1 if a.quick else 3, a.quick)
    report = measure(s)
    print(markdown(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
