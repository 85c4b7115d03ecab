"""Every icon the app shows, by what it means: Streamlit's Material Symbols, whose font Streamlit serves from
the app's own origin, so that they render on a machine without an emoji font (emoji showed as empty boxes there).
One name per meaning; tests/test_icons.py checks each against Streamlit's list and that no emoji is left in the app.
"""
from __future__ import annotations

import functools

# navigation
SCREEN = ":material/radiology:"
BATCH = ":material/bar_chart:"
REVIEW = ":material/grid_view:"
WORKLIST = ":material/view_list:"
CARD = ":material/description:"
SITE = ":material/local_hospital:"
AUDIT = ":material/history:"

# messages
DISCLAIMER = ":material/medical_information:"
REFUSED = ":material/block:"
ERROR = ":material/report:"
WARNING = ":material/warning:"
POSITIVE = ":material/error:"
NEGATIVE = ":material/check_circle:"
INFO = ":material/info:"
SWITCHED = ":material/sync:"
LOCAL = ":material/computer:"
PAUSED = ":material/pause_circle:"
SAVED = ":material/save:"
LOOK = ":material/visibility:"
COMPARE = ":material/balance:"
CHAIN_HOLDS = ":material/link:"
CHAIN_BROKEN = ":material/link_off:"
PREVIOUS = ":material/chevron_left:"
NEXT = ":material/chevron_right:"

ALL = {k: v for k, v in dict(globals()).items() if k.isupper()}


@functools.cache
def favicon() -> str:
    """The browser tab's icon as an inline PNG data: URL. A Material page icon would make the browser fetch the
    Material font from fonts.gstatic.com (an outbound call from a clinical tool) and an emoji needs an emoji
    font; an inline image needs neither (tests/test_browser.py checks every request stays on the app's origin).
    Drawn once per process: app.py asks for it on every script run."""
    import base64
    import io

    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((2, 2, 61, 61), radius=12, fill=(30, 58, 95, 255))       # slate blue
    d.rectangle((26, 12, 37, 51), fill=(255, 255, 255, 255))                      # a plain cross
    d.rectangle((12, 26, 51, 37), fill=(255, 255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
