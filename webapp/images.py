"""Film pixels made ready for the browser: 8-bit, thumbnails, in-memory PNGs. No Streamlit."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] film pixels -> 8-bit for display."""
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale or RGB array as PNG bytes, built in memory (never a temporary file)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_name(name: str) -> str:
    """Download name for a film's overlay: `chest.dcm` -> `chest_gradcam.png`."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "film"
    return f"{stem}_gradcam.png"


def shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    """Float film pixels reduced so that the longest side is at most `side` (a gallery thumbnail)."""
    h, w = pixels.shape
    scale = side / max(h, w)
    if scale >= 1:
        return pixels
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    return np.asarray(im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
