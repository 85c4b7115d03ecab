"""Film pixels made ready for the browser: 8-bit, thumbnails, in-memory PNGs. No Streamlit."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from covidxr.overlay import blend_index, blend_table, jet, score_colours


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


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    """Encoded image bytes as an inline data: URL for st.image. The result view's opacity slider redraws its
    images in a fragment; handed over as bytes, each became a media file that the next move replaced, and a
    quick drag made the browser ask for files already gone (404s in the console). Inline, nothing is fetched."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


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

    def draw(self, alpha: float, muted: bool = False, score: float = 1.0) -> np.ndarray:
        """uint8 RGB: the film in gray with the map over it, jet(map x score) or (muted) the slate tone, at
        opacity alpha."""
        table = blend_table(alpha, MUTED_RGB if muted else None if score == 1.0 else score_colours(score))
        return table.take(self.index, axis=0)  # take: 4x faster than [] indexing here


def colour_bar(width: int = 256, height: int = 14, muted: bool = False, score: float | None = None) -> np.ndarray:
    """The heatmap's colour scale as uint8 RGB: jet from 0 (left: no score, no attention) to 1 (right: a 100%
    score at the spot the model attended most), the colours covidxr.explain.overlay draws with; or, for a muted
    map, gray (no attention) to slate (most). `score`: the part of the jet scale beyond this film's score, which
    its drawing cannot reach, is washed out, with a dark tick at the score."""
    levels = np.linspace(0.0, 1.0, width, dtype=np.float32)
    if muted:
        row = (1.0 - levels)[:, None] * 0.55 + levels[:, None] * np.asarray(MUTED_RGB, np.float32)
    else:
        row = jet(levels)  # the very colours of the overlay
        if score is not None:
            beyond = levels > score
            row[beyond] = 0.3 * row[beyond] + 0.7
    bar = np.repeat((row[None] * 255.0 + 0.5).astype(np.uint8), height, axis=0)
    if score is not None and not muted:
        x = min(width - 1, int(round(score * (width - 1))))
        bar[:, max(0, x - 1):x + 1] = 20
    return bar


def scale_labels(positive_class: str, score: float | None, muted: bool) -> tuple[str, str, str]:
    """(left end, right end, what the colour is) of the colour scale, as the result view and the report print them."""
    from webapp.views.wording import class_title, fmt_pct

    name = class_title(positive_class)
    if muted:
        return ("grey: none", "slate: most attention",
                f"muted, grey (no attention) to slate (most): the film is below the operating point; the map shows "
                f"where the model looked, not a {name} finding.")
    reach = "" if score is None else f"; this film's score, {fmt_pct(score)} (the tick), is the hottest colour it can show"
    return ("0%", "100%", f"colour = {name} score x the model's attention, from 0% (blue, left) to 100% (red, right: "
                          f"a 100% score where the model looked most){reach}.")


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


def heat_overlay(pixels: np.ndarray, heatmap: np.ndarray, positive: bool, alpha: float,
                 score: float = 1.0) -> np.ndarray:
    """The overlay at the film's full size: jet(map x score) for a film called positive, muted slate below the
    operating point."""
    from covidxr.explain import overlay

    return overlay(pixels, heatmap, alpha, score) if positive else muted_overlay(pixels, heatmap, alpha)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow without sizes
        return ImageFont.load_default()


def labelled_bar(width: int, positive_class: str, score: float | None, muted: bool) -> np.ndarray:
    """The colour scale with its ends labelled under it (scale_labels), uint8 RGB `width` wide: the legend of the
    report picture."""
    from PIL import ImageDraw

    size = max(12, min(22, max(width, 480) // 45))
    bar = Image.fromarray(colour_bar(muted=muted, score=None if muted else score)).resize(
        (width, max(10, size)), Image.NEAREST)
    left, right, _ = scale_labels(positive_class, score, muted)
    font = _font(size)
    panel = Image.new("RGB", (width, bar.height + int(size * 1.6)), "white")
    panel.paste(bar, (0, 0))
    draw = ImageDraw.Draw(panel)
    draw.text((2, bar.height + 2), left, fill=(20, 28, 40), font=font)
    draw.text((max(2, width - 2 - draw.textlength(right, font=font)), bar.height + 2), right, fill=(20, 28, 40),
              font=font)
    if score is not None and not muted:
        from webapp.views.wording import fmt_pct

        here = f"this film: {fmt_pct(score)}"
        x = score * (width - 1) - draw.textlength(here, font=font) / 2
        x = min(max(x, draw.textlength(left, font=font) + 12),
                width - draw.textlength(right, font=font) - draw.textlength(here, font=font) - 12)
        draw.text((max(2, x), bar.height + 2), here, fill=(20, 28, 40), font=font)
    return np.asarray(panel)


def report_image(pixels: np.ndarray, heatmap: np.ndarray, positive: bool, alpha: float, lines: list[str],
                 score: float = 1.0, positive_class: str = "covid") -> np.ndarray:
    """The report-ready picture, uint8 RGB: the film with its map (jet(map x score) when called positive, else
    muted slate, as the result view draws it), the colour scale under it with its ends labelled, what the colour
    means, and `lines` (report_lines) printed below. The app's download and the DICOM secondary capture
    (covidxr.pacs) are both this picture."""
    drawing = heat_overlay(pixels, heatmap, positive, alpha, score)
    w = max(drawing.shape[1], 480)  # room for the scale's labels on a small film
    if w > drawing.shape[1]:
        pad = np.full((drawing.shape[0], w, 3), 255, np.uint8)
        pad[:, (w - drawing.shape[1]) // 2:][:, :drawing.shape[1]] = drawing
        drawing = pad
    legend = labelled_bar(w, positive_class, score, not positive)
    gap = np.full((4, w, 3), 255, np.uint8)
    meaning = scale_labels(positive_class, score, not positive)[2]
    return annotated(np.vstack([drawing, gap, legend, gap]), [f"Colour scale: {meaning}", *lines])
