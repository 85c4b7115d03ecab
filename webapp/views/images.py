"""Film pixels made ready for the browser: 8-bit, thumbnails, in-memory PNGs. No Streamlit."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from covidxr.overlay import blend_index, blend_table, jet


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] film pixels -> 8-bit for display."""
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale or RGB array as PNG bytes, built in memory (never a temporary file)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# What the result view sends to the browser: the film and its overlay beside each other at about a
# column's width in the wide layout, the "larger view" at full width; each encoded once per film and
# opacity (webapp.views.view) and handed to st.image as JPEG bytes, which Streamlit passes on without
# decoding or encoding them again. The downloaded overlay (png_bytes) keeps the film's full size.
DISPLAY_SIDE = 800
LARGE_SIDE = 1024
JPEG_QUALITY = 90  # what Streamlit itself uses when it resizes an image for the page


def jpeg_bytes(image: np.ndarray, side: int | None = None, quality: int = JPEG_QUALITY) -> bytes:
    """An 8-bit grayscale or RGB array as JPEG bytes, reduced (bilinear, aspect kept) so that its longest
    side is at most `side`; never enlarged."""
    im = Image.fromarray(np.ascontiguousarray(image))
    if side is not None and max(im.size) > side:
        scale = side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
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


# ---------------------------------------------------------------- heatmaps that mean what the decision says

DEFAULT_OPACITY = 0.45  # the heatmap's opacity as the result view opens, and in the DICOM secondary capture
MUTED_RGB = (0.36, 0.47, 0.62)  # slate blue-grey: a map below the operating point, never a "hot" colour


def muted_overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The film in gray with the map in one neutral slate tone (no red, no yellow), as uint8 RGB: where
    the model looked on a film it called negative, without colours that suggest a finding."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} outside [0, 1]")
    g = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    h = np.asarray(heatmap, np.float32)
    if h.shape != g.shape:
        h = np.asarray(Image.fromarray(h, mode="F").resize((g.shape[1], g.shape[0]), Image.BILINEAR))
    a = (alpha * np.clip(h, 0.0, 1.0))[..., None]
    rgb = (1.0 - a) * g[..., None] + a * np.asarray(MUTED_RGB, np.float32)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


class Drawing:
    """A film and its heatmap made ready to draw at one size (at most `side` px, else the film's own): both
    reduced and quantized to 8-bit levels once per film, so that each opacity costs one 256 x 256 colour
    table and one lookup per pixel (covidxr.overlay). The jet drawing is explain.overlay's, pixel for pixel (the same
    levels and table); the muted one is muted_overlay's from 8-bit levels, within 1 of 255 of it."""

    def __init__(self, pixels: np.ndarray, heatmap: np.ndarray, side: int | None = None):
        p, h = np.asarray(pixels, np.float32), np.asarray(heatmap, np.float32)
        if h.shape != p.shape:
            h = np.asarray(Image.fromarray(h, mode="F").resize((p.shape[1], p.shape[0]), Image.BILINEAR))
        if side is not None:
            p, h = shrink(p, side), shrink(h, side)
        self.shape = p.shape
        self.index = blend_index(p, h)

    def draw(self, alpha: float, muted: bool = False) -> np.ndarray:
        """uint8 RGB: the film in gray with the map over it, jet or (muted) the slate tone, at opacity alpha."""
        table = blend_table(alpha, MUTED_RGB if muted else None)
        return table.take(self.index, axis=0)  # take: 4x faster than [] indexing here


def colour_bar(width: int = 256, height: int = 14, muted: bool = False) -> np.ndarray:
    """The heatmap's colour scale, low attention on the left to high on the right, as uint8 RGB:
    jet (as covidxr.explain.overlay draws it) or, for a muted map, gray to slate."""
    levels = np.linspace(0.0, 1.0, width, dtype=np.float32)
    if muted:
        row = (1.0 - levels)[:, None] * 0.55 + levels[:, None] * np.asarray(MUTED_RGB, np.float32)
    else:
        row = jet(levels)  # the very colours of the overlay
    return np.repeat((row[None] * 255.0 + 0.5).astype(np.uint8), height, axis=0)


# ---------------------------------------------------------------- a report-ready image

def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def annotated(image: np.ndarray, lines: list[str], margin: int = 12) -> np.ndarray:
    """The image with a white panel below it carrying `lines` (decision, score, operating point, model,
    date, disclaimer), wrapped to the image's width; Pillow's default font. uint8 RGB out."""
    from PIL import ImageDraw, ImageFont

    rgb = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    w = max(rgb.width, 480)
    size = max(12, min(22, w // 45))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow without sizes
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [part for text in lines for part in (_wrap(probe, text, font, w - 2 * margin) or [""])]
    step = int(size * 1.35)
    panel = Image.new("RGB", (w, rgb.height + 2 * margin + step * len(wrapped)), "white")
    panel.paste(rgb, ((w - rgb.width) // 2, 0))
    draw = ImageDraw.Draw(panel)
    y = rgb.height + margin
    for text in wrapped:
        draw.text((margin, y), text, fill=(20, 28, 40), font=font)
        y += step
    return np.asarray(panel)


def heat_overlay(pixels: np.ndarray, heatmap: np.ndarray, positive: bool, alpha: float) -> np.ndarray:
    """The overlay at the film's full size: jet for a film called positive, muted slate below the operating point."""
    from covidxr.explain import overlay

    return (overlay if positive else muted_overlay)(pixels, heatmap, alpha)


def report_image(pixels: np.ndarray, heatmap: np.ndarray, positive: bool, alpha: float, lines: list[str]) -> np.ndarray:
    """The report-ready picture, uint8 RGB: the film with its map (jet when called positive, else muted slate,
    as the result view draws it), the colour scale under it, and `lines` (report_lines) printed below. The
    app's download and the DICOM secondary capture (covidxr.pacs) are both this picture."""
    drawing = heat_overlay(pixels, heatmap, positive, alpha)
    bar = Image.fromarray(colour_bar(muted=not positive)).resize((drawing.shape[1], max(8, drawing.shape[0] // 40)),
                                                                 Image.NEAREST)
    gap = np.full((4, drawing.shape[1], 3), 255, np.uint8)
    return annotated(np.vstack([drawing, gap, np.asarray(bar), gap]), lines)
