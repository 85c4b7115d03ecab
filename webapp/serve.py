"""`python -m webapp.serve [streamlit options]`: serve the app (`streamlit run app.py`) for clinicians.

Why not plain `streamlit run app.py`: Streamlit takes a folder named `pages/` beside the main script as
an old-style multipage app and runs the first script run of a server in that mode, where pages are
named after their files. The first deep link after a server start (`/batch-evaluation`) then shows
"Page not found" over the right page, until app.py's `st.navigation` switches the server to its pages.
Our `pages/` holds st.navigation's pages, so this launcher tells Streamlit so before the server starts.
`streamlit run app.py` still works; only that first deep link differs.
"""
from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"


def main(argv: list[str] | None = None) -> int:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    PagesManager.uses_pages_directory = False  # pages/ is st.navigation's, not a v1 multipage folder
    return cli.main(["run", str(APP), *(sys.argv[1:] if argv is None else argv)], standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
