#!/usr/bin/env bash
# The one test command (README and .ci/run): install into .venv when missing, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dkdm ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -c constraints.txt -e '.[test]'
  .venv/bin/pip install -q --no-deps clean-fid==0.1.35
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
