#!/usr/bin/env bash
# Set up a fresh machine, idempotently: a Python virtual environment in .venv with requirements.txt;
# with --browser also Debian's Chromium, which the browser test drives (Playwright downloads nothing).
# Shared by ./run.sh app, ./run.sh test and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# strace lets the privacy test see every write the server makes, anywhere on disk.
if [[ "${1:-}" == "--browser" ]] && { [[ ! -x /usr/bin/chromium ]] || ! command -v strace >/dev/null; }; then
    echo "setup: installing Debian's chromium and strace" >&2
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium strace
fi

# nginx: the reverse proxy of deploy/nginx.conf, which tests/test_proxy.py runs as its own instance (--browser), or
# to deploy (--proxy). Where systemd runs, Debian starts its default site on port 80: see docs/operations.md.
if [[ "${1:-}" == "--browser" || "${1:-}" == "--proxy" ]] && [[ ! -x /usr/sbin/nginx ]]; then
    echo "setup: installing Debian's nginx" >&2
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx
fi

# The services the tests start as their own instances, on free ports: Orthanc + its DICOMweb plugin (the PACS of the
# DICOM node's tests, docs/pacs.md), PostgreSQL 15 (the audit store for several replicas, tests/test_audit.py);
# dciodvfy (dicom3tools) validates every DICOM result the tests write.
if [[ "${1:-}" == "--browser" ]]; then
    missing=()
    [[ -x /usr/sbin/Orthanc ]] || missing+=(orthanc)
    [[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] || missing+=(orthanc-dicomweb)
    command -v dciodvfy >/dev/null || missing+=(dicom3tools)
    [[ -x /usr/lib/postgresql/15/bin/postgres ]] || missing+=(postgresql)
    if (( ${#missing[@]} )); then
        echo "setup: installing Debian's ${missing[*]}" >&2
        SUDO=""
        [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv .venv
fi

# pip runs only when requirements.txt or pyproject.toml changed since the last successful install. The
# project itself is installed editable (packages covidxr and webapp, the `covidxr` command), so that
# nothing needs sys.path; its dependencies come pinned from requirements.txt.
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "setup: installing requirements.txt and the project" >&2
    .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
    .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
fi
