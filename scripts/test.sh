#!/usr/bin/env bash
# The one test command (README and .ci/run): make sure .venv has dkdm with its test extras, pinned by requirements.lock, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# every version from requirements.lock (torch 2.13.0 CPU among them); clean-fid without torchvision (pyproject [fid]).
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
.venv/bin/pip install -q --disable-pip-version-check --no-deps -c requirements.lock clean-fid
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
