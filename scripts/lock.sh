#!/usr/bin/env bash
# Regenerate requirements.lock (docs/development.md): every transitive version for dkdm and all its extras but
# [fid], resolved by pip-tools under constraints.txt (torch 2.13.0 CPU). The README's set-up, scripts/test.sh and
# .ci/run install with `-c requirements.lock`, so the lock pins what they install and nothing else.
#   Usage: COMPILE=/path/to/pip-compile bash scripts/lock.sh     (pip-tools >= 7.4)
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "${COMPILE:-pip-compile}" -q --allow-unsafe --strip-extras \
  --no-emit-find-links --no-emit-index-url -c constraints.txt \
  --extra serve --extra s3 --extra gpu --extra tensorboard --extra tune --extra test -o requirements.lock pyproject.toml
# [test] names dkdm[...] itself: drop that self line. torch: `==2.13.0` matches the CPU wheel 2.13.0+cpu and the
# registry's 2.13.0, so the lock works where only one of them exists.
sed -i -e '/^dkdm @ /,+1d' -e 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' requirements.lock
# clean-fid is installed --no-deps (its torchvision has no CPU build for torch 2.13): pinned here, resolved by hand.
printf '%s\n' "clean-fid==0.1.35" "    # installed with --no-deps (pyproject [fid]); its other deps are pinned above" >> requirements.lock
rm -rf build dkdm.egg-info
