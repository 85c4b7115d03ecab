"""Outside text shown literally: the one function between a file's, a folder's, a DICOM's, a profile's or a
subprocess's words and any Streamlit element that renders Markdown.

Streamlit renders Markdown (CommonMark + GFM) in st.markdown, headers, captions, alerts, widget labels,
dialog titles and help text, with its own extras: `:red[...]` colour directives, `:material/icon:` icons,
emoji shortcodes (`:smile:`) and KaTeX (`$x^2$`). A film named `[Log in again](https:evil.example).png` or
a DICOM whose ViewPosition is `**BOLD** :red[MR]` would otherwise speak in the app's voice.

How: every ASCII punctuation character gets a backslash (CommonMark lets any of them be escaped, and an
escaped one is always literal text), so no link, emphasis, code span, heading, list, table, autolink,
directive or math can start; because every colon is escaped, the text never holds `:word:`, the pattern
that makes Streamlit load its emoji plugin for an element, nor `:material/`, which it rewrites before
parsing; word joiners stop the rewrites Streamlit makes after parsing (JOINER). Characters a reader cannot see or that reorder what they see (bidi overrides such as U+202E,
zero-width and other format characters, controls, line breaks, lone surrogates) are shown as escapes
(`\\u202e`), so `report\\u202egnp.pdf.png` cannot pass for a PDF. `visible()` is that text as the page
shows it; tests/test_literal.py checks in Chromium that the rendered text is exactly `visible(text)`.
"""
from __future__ import annotations

import re
import string
import unicodedata

_PUNCTUATION = frozenset(string.punctuation)  # CommonMark's escapable set: every ASCII punctuation character
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})  # controls, format (bidi, zero-width), ...
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Streamlit rewrites some text after parsing, where escapes no longer count: `:streamlit:` becomes its logo,
# `:material_icon:` an icon, ` -> `, ` <- `, ` <-> `, ` -- `, ` >= `, ` <= `, ` ~= ` typographic symbols, and
# GFM turns `www.x`, `http://x` and `a@b.c` into links. A word joiner (zero width, no glyph) after every colon
# and @, before every full stop and inside each of those pairs keeps them apart; one before a text that starts
# with a non-ASCII character stops st.error & co. taking a leading emoji for their icon. A
# word joiner in the text itself is a format character, so it is shown as \u2060: every raw one on the page
# is one of these.
JOINER = "\u2060"


def _shown(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    if unicodedata.category(c) in _HIDDEN:
        n = ord(c)
        return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"
    return c


def visible(text: str) -> str:
    """`text` with every invisible or reordering character written as its escape (`\\u202e`, `\\n`), runs of
    spaces kept to one (HTML shows no more) and no space at either end: what a page shows for it."""
    shown = "".join(map(_shown, str(text)))
    return " ".join(part for part in shown.split(" ") if part)


def literal(text: str) -> str:
    """Markdown that Streamlit renders as exactly `visible(text)` (plus invisible word joiners, see JOINER): for
    any text from outside the app, in any element that renders Markdown. `str()` of a non-string (a DICOM
    value, an exception) is taken."""
    shown = visible(str(text))
    out = [JOINER] if shown[:1] > "\x7f" else []  # an alert takes a leading emoji for its icon
    for i, c in enumerate(shown):
        if c == ".":
            out.append(JOINER)
        out.append("\\" + c if c in _PUNCTUATION else c)
        if c in ":@" or (c in "-<>~" and shown[i + 1:i + 2] in ("-", "<", ">", "=")):
            out.append(JOINER)
    return "".join(out)


_PATHLIKE = re.compile(r"[^\s\"'`]*[/\\][^\s\"'`]*")  # any word holding a slash or a backslash


def without_paths(text: str) -> str:
    """`text` with every word that holds a slash or a backslash (a path, absolute or not) replaced by "…":
    for a subprocess's error line, which may name the server's folders and films."""
    return _PATHLIKE.sub("…", str(text))
