#!/usr/bin/env bash
# The one test command (README and .ci/run): make sure .venv has dkdm with its test extras, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first, pinned: an unpinned torch would pull GBs of CUDA packages; clean-fid without torchvision.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
.venv/bin/pip install -q --disable-pip-version-check --no-deps clean-fid==0.1.35
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
