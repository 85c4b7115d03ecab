"""Icons render without an emoji font (#28): every icon the app names is one of Streamlit's Material symbols
(whose font Streamlit serves from the app's origin), and no emoji is left in the app's source."""
from __future__ import annotations

import re

from streamlit.material_icon_names import ALL_MATERIAL_ICONS

from tests.conftest import REPO
from webapp.views import icons

# Pictographs, dingbats and the variation selector that turns a character into an emoji (U+FE0F).
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


def app_sources() -> list:
    return [REPO / "app.py", *sorted((REPO / "pages").glob("*.py")), *sorted((REPO / "webapp").rglob("*.py"))]


def test_every_icon_is_a_material_symbol_streamlit_knows():
    assert icons.ALL, "no icons"
    for name, value in icons.ALL.items():
        m = re.fullmatch(r":material/([a-z0-9_]+):", value)
        assert m and m.group(1) in ALL_MATERIAL_ICONS, (name, value)


def test_no_emoji_is_left_in_the_app():
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in app_sources()
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if EMOJI.search(line)]
    assert found == []


def test_the_emoji_check_would_see_one():
    assert EMOJI.search('st.error("x", icon="🚫")') and EMOJI.search("⚠️ careful") and not EMOJI.search("Previous")


def test_the_tab_icon_is_an_inline_png():
    import base64

    url = icons.favicon()
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
