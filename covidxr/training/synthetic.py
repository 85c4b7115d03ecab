"""Images that are not radiographs, made here or found in installed packages: noise, gradients,
checkerboards, pages of text, photographs in colour and in gray, other grayscale images.

The gate's "not a radiograph" class (covidxr.gate.KindLook) is fitted on one set of them (`for_fitting`:
other seeds, sizes and crops) and scripts/ood_report.py measures the gate on another (the defaults).
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

SEED = 20240101
Item = tuple[str, bytes]  # (name, file bytes)


def encode(a: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    im = a if isinstance(a, Image.Image) else Image.fromarray(a)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def to8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    return (a * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------ non-chest inputs

def noise(seed: int = SEED) -> list[Item]:
    rng = np.random.default_rng(seed)
    out = [(f"uniform-{i}.png", encode(rng.integers(0, 256, (480 + 40 * i, 512), dtype=np.uint8))) for i in range(3)]
    for i, side in enumerate((4, 16, 64)):  # smooth "blobby" noise, closer to an anatomical texture
        small = rng.normal(size=(side, side)).astype(np.float32)
        out.append((f"smooth-{side}.png", encode(Image.fromarray(to8(small)).resize((512, 512), Image.BICUBIC))))
    return out


def gradients() -> list[Item]:
    y, x = np.mgrid[0:480, 0:512] / np.array([479.0, 511.0])[:, None, None]
    r = np.hypot(y - 0.5, x - 0.5)
    fields = {"horizontal": x, "vertical": y, "diagonal": x + y, "radial": r, "radial-inverse": -r,
              "vignette": np.cos(np.clip(r * 3.0, 0, np.pi / 2))}
    return [(f"{k}.png", encode(to8(v))) for k, v in fields.items()]


def checkerboards(sizes: tuple[int, ...] = (4, 16, 32, 128)) -> list[Item]:
    y, x = np.mgrid[0:512, 0:512]
    return [(f"checker-{n}.png", encode(to8(((y // n + x // n) % 2).astype(float)))) for n in sizes]


def text_pages(sizes: tuple[int, ...] = (14, 20, 28, 40)) -> list[Item]:
    words = ("Chest radiograph report. Findings: no focal consolidation. Impression: normal study. "
             "Patient positioned PA, adequate inspiration. Heart size within normal limits.").split()
    out = []
    for i, size in enumerate(sizes):
        im = Image.new("L", (600, 500), 255 if i % 2 == 0 else 0)
        draw, font = ImageDraw.Draw(im), ImageFont.load_default(size=size)
        line, y = "", 10
        for w in words * 4:
            if draw.textlength(line + " " + w, font=font) > 580:
                draw.text((10, y), line, fill=0 if i % 2 == 0 else 255, font=font)
                line, y = w, y + size + 6
            else:
                line = (line + " " + w).strip()
        out.append((f"text-{size}px.png", encode(im)))
    return out


def photo_files() -> list[Path]:
    """Photographs shipped inside installed packages (scikit-learn, matplotlib)."""
    import matplotlib
    import sklearn.datasets

    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    skl = Path(sklearn.datasets.__file__).parent / "images"
    return [p for p in (skl / "china.jpg", skl / "flower.jpg", mpl / "grace_hopper.jpg",
                        mpl / "Minduka_Present_Blue_Pack.png", mpl / "logo2.png") if p.exists()]


def colour_photos() -> list[Item]:
    return [(p.name, p.read_bytes()) for p in photo_files()]


def gray_photos() -> list[Item]:
    """The same photos in grayscale: no colour to give them away, only their content."""
    return [(p.stem + "-gray.png", encode(ImageOps.grayscale(Image.open(p).convert("RGB")))) for p in photo_files()]


def other_grayscale() -> list[Item]:
    """A brain MR slice and two elevation maps from matplotlib's sample data."""
    import matplotlib

    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    out = []
    mr = mpl / "s1045.ima.gz"
    if mr.exists():
        out.append(("brain-mr.png", encode(to8(np.frombuffer(gzip.open(mr).read(), ">u2").reshape(256, 256)))))
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        if (mpl / name).exists():
            with np.load(mpl / name, allow_pickle=False) as z:
                out.append((name.replace(".npz", ".png"), encode(to8(z[key]))))
    return out


def for_fitting() -> list[Item]:
    """Non-radiographs to fit the gate's "other" class on: other seeds, sizes and crops than the report's."""
    y, x = np.mgrid[0:400, 0:560] / np.array([399.0, 559.0])[:, None, None]
    more_gradients = [(f"fit-gradient-{i}.png", encode(to8(f))) for i, f in
                      enumerate((x ** 2, np.sin(6 * x), np.sin(4 * y) * x, np.hypot(y - 0.3, x - 0.7)))]
    crops = []
    for p in photo_files():
        im = ImageOps.grayscale(Image.open(p).convert("RGB"))
        w, h = im.size
        crops += [(f"fit-{p.stem}-{side}.png", encode(im.crop(box))) for side, box in
                  (("left", (0, 0, w // 2, h)), ("bottom", (0, h // 2, w, h)))]
    return (noise(seed=7) + more_gradients + checkerboards((8, 24, 64)) + text_pages((12, 17, 24, 34, 48, 60))
            + crops)
