#!/usr/bin/env bash
# Regenerate requirements.txt, the pinned and tested set that scripts/setup.sh installs, from pyproject.toml
# with every extra (core, app, ray, train, test) and the build requirement (setuptools, for the editable
# install). Run it after changing a dependency in pyproject.toml, then run the tests and commit both files.
# pip-tools runs from a throw-away virtual environment: it is not one of the project's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m venv "$tools"
"$tools/bin/pip" install -q 'pip-tools==7.6.2'
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/bin/pip-compile" -q --all-extras --all-build-deps --allow-unsafe \
    --strip-extras --no-emit-index-url --no-emit-find-links --output-file requirements.txt pyproject.toml
