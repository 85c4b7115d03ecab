"""The hostile corpus: names and texts a penetration test put where the app shows or exports outside text
(issue #29), plus the special files it put in a server folder. Names only here; the files are made in a
tmp folder at test time (a FIFO, a character device and a 5 GB sparse file cannot live in git).

Each name must come out of every page as literal text (webapp.views.literal) and out of every CSV as a cell no
spreadsheet runs (covidxr.safety.spreadsheet_safe).
"""
from __future__ import annotations

import os
import re
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

from webapp.views.literal import JOINER

# Spreadsheet formulas (OWASP's CSV injection cases)
FORMULAS = [
    "=cmd|' -c calc'!A0",
    '=HYPERLINK("http:\\\\evil.example","src")',
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "'=already quoted",
]

# Markdown and Streamlit's own syntax, and characters that hide or reorder text
MARKUP = [
    "[Log in again](https:evil.example)",
    "**BOLD** :red[MR] $x^2$",
    "report\u202egnp.pdf",
    "`code` breaks`` out ```",
    "<script>alert(1)</script>",
    "<https://evil.example>",
    "https://evil.example/x www.evil.example",
    ":material/warning: :smile: :streamlit:",
    ":blue-background[x] :rainbow[y] :small[z]",
    "# heading",
    "> quoted",
    "1. listed",
    "- item",
    "| a | b |",
    "~~struck~~ _em_ __strong__",
    "![img](https://evil.example/i.png)",
    "[^1] footnote",
    "$$\\frac{1}{2}$$",
    "a\\*b\\\\c",
    "zero\u200bwidth\u2066isolate\u2069",
    "line\nbreak\u2028sep",
    "&amp; &#58; &lt;b&gt;",
    "    indented code",
]

NAMES = [f"{t}.png" for t in FORMULAS + MARKUP]
LONG_NAME = "x" * 300  # ENAMETOOLONG as a folder name
BACKSLASH_UPLOAD = "covid\\site-a\\p1.png"  # a loose upload's name, never a path

# A DICOM's ViewPosition / Modality as the penetration test set them
DICOM_VALUE = "**BOLD** :red[MR] $x^2$"


def special_files(folder: Path) -> dict[str, str]:
    """name -> words its refusal holds: a FIFO, a 5 GB sparse file, a character device (when this process may
    make one: root), a link to /dev/zero, and a socket; all named as films, made in `folder`."""
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    os.mkfifo(folder / "p.png")
    made["p.png"] = "named pipe"
    with open(folder / "huge.dcm", "wb") as f:
        f.truncate(5 << 30)  # sparse: no disk used
    made["huge.dcm"] = "too large"
    try:
        os.mknod(folder / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is
        made["zero.png"] = "character device"
    except PermissionError:
        pass
    (folder / "devzero.jpg").symlink_to("/dev/zero")
    made["devzero.jpg"] = "character device"
    if len(str(folder / "s.png")) < 100:  # AF_UNIX paths are short
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(folder / "s.png"))
        made["s.png"] = "socket"
    return made


def safe_file_name(text: str) -> str:
    """`text` as a name this file system takes (no slash, no NUL), for writing corpus films to disk."""
    return text.replace("/", "\u2215").replace("\0", "")


def plain(markdown: str) -> str:
    """Markdown made by webapp.views.literal back to the words a reader sees: escapes and word joiners dropped.
    For tests that read a page's texts (AppTest gives the Markdown source)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(markdown)).replace(JOINER, "")


class Blocked(BaseException):
    """A read blocked (a FIFO opened for reading waits for a writer): a BaseException, so that no reader's
    `except OSError` can swallow it and let the test pass."""


@contextmanager
def deadline(seconds: int):
    """Fail with Blocked, rather than hang the suite, when the body takes longer than `seconds`."""
    def hung(*_):
        raise Blocked(f"blocked for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
