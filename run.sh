#!/usr/bin/env bash
# The README's two Quick start commands.
#   ./run.sh app  [streamlit options]   set up, then serve the app on http://localhost:8501
#   ./run.sh test [pytest options]      set up (Chromium included), then run every test
set -euo pipefail
cd "$(dirname "$0")"

case "${1:-}" in
    app)
        shift
        scripts/setup.sh
        exec .venv/bin/python -m webapp.serve "$@"   # streamlit run app.py (webapp/serve.py says why)
        ;;
    test)
        shift
        scripts/setup.sh --browser
        rc=0
        .venv/bin/python -m pytest -q -ra tests "$@" || rc=$?
        if [[ $rc -eq 5 ]]; then
            echo "run.sh: pytest collected no tests; that is a failure" >&2
        fi
        echo "run.sh: pytest exit status $rc" >&2
        exit $rc
        ;;
    *)
        sed -n '2,4p' "$0" >&2
        exit 2
        ;;
esac
