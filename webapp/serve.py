"""`python -m webapp.serve [streamlit options]`: serve the app (`streamlit run app.py`) for clinicians.

Why not plain `streamlit run app.py`: Streamlit takes a folder named `pages/` beside the main script as
an old-style multipage app and runs the first script run of a server in that mode, where pages are
named after their files. The first deep link after a server start (`/batch-evaluation`) then shows
"Page not found" over the right page, until app.py's `st.navigation` switches the server to its pages.
Our `pages/` holds st.navigation's pages, so this launcher tells Streamlit so before the server starts.
`streamlit run app.py` still works; only that first deep link differs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"
SECRETS = APP.parent / ".streamlit" / "secrets.toml"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NEEDS_SIGN_IN = ("covidxr: local mode (no [auth] in .streamlit/secrets.toml) listens on loopback only; to serve {addr}, "
                 "configure sign-in: see docs/operations.md, \"Sign-in\"")


def asked_address(args: list[str]) -> str | None:
    """The --server.address the arguments ask for (None: Streamlit's default, every interface)."""
    for i, a in enumerate(args):
        if a.startswith("--server.address="):
            return a.split("=", 1)[1]
        if a == "--server.address" and i + 1 < len(args):
            return args[i + 1]
    return None


def sign_in_configured(secrets_file: Path = SECRETS) -> bool:
    """True when the secrets file has an [auth] section (Streamlit's st.login), which is what allows serving beyond
    this machine."""
    import tomllib

    try:
        return "auth" in tomllib.loads(secrets_file.read_text())
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    args = list(sys.argv[1:] if argv is None else argv)
    if not sign_in_configured():  # local mode: a one-workstation tool
        addr = asked_address(args) or os.environ.get("STREAMLIT_SERVER_ADDRESS") or None
        if addr is None:
            args += ["--server.address", "127.0.0.1"]
        elif addr not in LOOPBACK:
            print(NEEDS_SIGN_IN.format(addr=addr), file=sys.stderr)
            return 2
    PagesManager.uses_pages_directory = False  # pages/ is st.navigation's, not a v1 multipage folder
    return cli.main(["run", str(APP), *args], standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
