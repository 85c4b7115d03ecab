"""webapp.views.literal: outside text shown literally. Properties of the Markdown it writes (Hypothesis), then the
proof that counts: Chromium renders it, through Streamlit's own Markdown, as exactly `visible(text)` in a
paragraph, a caption beside the app's bold words, an error box, a widget label and a subheader."""
from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.hostile import DICOM_VALUE, FORMULAS, MARKUP, NAMES
from webapp.views.literal import JOINER, literal, visible, without_paths

# Text as it comes from outside: any code point, with Markdown's and Streamlit's syntax characters made common.
SYNTAX = st.sampled_from(list(string.punctuation) + [" ", "\n", "\t", "\u202e", "\u200b", "http://", "www.",
                                                     ":red[", ":material/", ":smile:", "$", "**", "<b>", "&#58;"])
OUTSIDE = st.lists(st.one_of(st.characters(codec="utf-8"), SYNTAX, st.characters()), max_size=40).map("".join)


@given(OUTSIDE)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_literal_escapes_every_syntax_character(text):
    out = literal(text)
    assert JOINER not in visible(text)  # a joiner in the text itself is shown as \\u2060
    out = out.replace(JOINER, "")  # (checked in the browser: they keep Streamlit's rewrites away)
    body = re.sub(r"\\[!-/:-@\[-`{-~]", "", out)  # drop every backslash escape
    assert not set(body) & set(string.punctuation)  # ... and no syntax character is left unescaped
    assert not re.search(r":(?!material/|streamlit:)[\w+-][\w_+-]*:", out)  # Streamlit's emoji-plugin trigger
    assert ":material/" not in out
    assert not any(c in out for c in "\n\r\t\u202e\u200b\u2066")  # hidden characters are written out
    out.encode("utf-8")  # even a lone surrogate becomes text the browser can receive


@given(OUTSIDE)
@settings(max_examples=300)
def test_visible_keeps_printable_text_and_writes_out_the_rest(text):
    shown = visible(text)
    assert visible(shown) == shown
    if all(c.isprintable() and c != " " for c in text):
        assert shown == text
    if "\u202e" in text:
        assert "\u202e" not in shown and "\\u202e" in shown


def test_without_paths():
    assert without_paths("error: cannot read /srv/films/a.png (C:\\data\\x)") == "error: cannot read … …"
    assert without_paths("no such folder: site-a/covid") == "no such folder: …"
    assert without_paths("too few films") == "too few films"


# ---------------------------------------------------------------------------------------------
# in a real browser

@pytest.fixture(scope="module")
def literal_page(tmp_path_factory):
    """tests/literal_app.py served by Streamlit, in Chromium; yields show(texts) -> the rendered texts."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS, SCRIPT_IDLE, free_port, require_chromium, stop_group, wait_healthy

    require_chromium()
    tmp = tmp_path_factory.mktemp("literal")
    texts_file, log = tmp / "texts.json", tmp / "server.log"
    texts_file.write_text("[]")
    port = free_port()
    env = {**os.environ, "LITERAL_TEXTS": str(texts_file), "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "tests" / "literal_app.py"),
                                 "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless",
                                 "true", "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(120_000)
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))

            def show(texts: list[str]) -> dict[str, list[str]]:
                texts_file.write_text(json.dumps(texts), encoding="utf-8")
                page.goto(url)
                page.wait_for_selector(f".st-key-sub-{len(texts) - 1} h3")
                page.wait_for_selector(SCRIPT_IDLE)
                page.wait_for_function("""n => [...Array(n).keys()].every(i => ['md', 'cb', 'sub'].every(k => {
                    const el = document.querySelector(`.st-key-${k}-${i}`);
                    return el && el.innerText.trim() !== ''; }))""", arg=len(texts))
                got = page.evaluate("""n => {
                    const t = (k, sel) => [...Array(n).keys()].map(i => {
                        const el = document.querySelector(`.st-key-${k}-${i} ${sel}`);
                        return el ? el.innerText : null; });
                    return {md: t('md', '[data-testid=stMarkdownContainer]'),
                            mix: t('mix', '[data-testid=stCaptionContainer]'),
                            err: t('err', '[data-testid=stAlertContentError]'),
                            lab: t('cb', ''),
                            sub: t('sub', 'h3'),
                            links: [...document.querySelectorAll('.stMain a[href]')].map(e => e.outerHTML.slice(0, 200)),
                            strong: document.querySelectorAll('.stMain strong').length,
                            odd: [...document.querySelectorAll('.stMain em, .stMain code, .stMain .katex, '
                              + '.stMain [class*=Colored], .stMain [role=img], .stMain li, .stMain blockquote, '
                              + '.stMain table, .stMain img, .stMain del, .stMain h1, .stMain h2, .stMain h4, '
                              + '.stMain hr, .stMain pre, .stMain sup')].map(e => e.outerHTML.slice(0, 120))};
                }""", len(texts))
                return got
            yield show, requests, url
            browser.close()
    finally:
        stop_group(proc)


def norm(s: str | None) -> str | None:
    """The text as read back: whitespace as HTML collapses it, literal()'s word joiners left out."""
    return None if s is None else " ".join(s.replace(JOINER, "").split())


def check_rendered(show, texts: list[str]) -> None:
    got = show(texts)
    for kind in ("md", "err", "lab", "sub"):
        assert [norm(x) for x in got[kind]] == [norm(visible(t)) for t in texts], kind
    assert [norm(x) for x in got["mix"]] == [norm(f"In use: {visible(t)} · film") for t in texts]
    assert got["links"] == [] and got["odd"] == []
    assert got["strong"] == len(texts)  # the captions' own **In use:**, nothing more


@pytest.mark.slow
@pytest.mark.browser
def test_the_corpus_renders_literally_in_chromium(literal_page):
    show, requests, url = literal_page
    check_rendered(show, FORMULAS + MARKUP + NAMES[:3] + [DICOM_VALUE, "plain film.png"])
    assert all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in requests)  # nothing fetched outside


@pytest.mark.slow
@pytest.mark.browser
@given(st.lists(OUTSIDE.filter(lambda t: visible(t).strip() != ""), min_size=25, max_size=25))
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_any_text_renders_as_its_visible_form_in_chromium(literal_page, texts):
    show, _, _ = literal_page
    check_rendered(show, texts)
