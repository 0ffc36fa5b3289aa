#!/usr/bin/env bash
# Issue 9's learned-variance run (docs/learned-variance.md): a digits teacher with learned_range variance
# trained by `dkdm train` (IDDPM hybrid loss), one DDIM-25 offsets cache from it, two students distilled from
# that cache at equal steps with the KL term (weight 1, bits) and without it (--kl-weight 0), then one
# `dkdm evaluate` of both: DDPM-50 (reads the variance) as the main setting, DDPM-25 and DDIM-25 (ignores
# the variance: the control) in the sweep.
#   Usage: scripts/learned-variance-digits.sh [OUT=runs/lv]   (env STEPS, SAMPLES to resize; an existing
#   OUT/teacher is reused)
set -euo pipefail
OUT=${1:-runs/lv}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
SAMPLES=${SAMPLES:-1024}
STEPS=${STEPS:-1500}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
D() { $PY -m dkdm.cli "$@"; }
if [ ! -f "$OUT/teacher/unet/config.json" ]; then
  echo "[$(date -u +%T)] train the learned-variance teacher"
  D train --recipe digits-lv --out "$OUT/teacher"
fi
echo "[$(date -u +%T)] generate (the training cache, and held-out trajectories of another seed)"
D generate --recipe digits-lv --teacher "$OUT/teacher" --out "$OUT/cache" --quiet
D generate --recipe digits-lv --teacher "$OUT/teacher" --out "$OUT/heldout" --trajectories 128 --seed 1 --quiet
for kl in 1 0; do
  echo "[$(date -u +%T)] distill kl-weight $kl"
  D distill --recipe digits-lv --teacher "$OUT/teacher" --cache "$OUT/cache" --out "$OUT/student-kl$kl" \
    --kl-weight $kl --steps "$STEPS" --quiet > "$OUT/distill-kl$kl.log" 2>&1
done
echo "[$(date -u +%T)] evaluate"
D evaluate --recipe digits-lv --teacher "$OUT/teacher" --student "$OUT/student-kl1" --student "$OUT/student-kl0" \
  --out "$OUT/eval" --num-samples "$SAMPLES" --sweep-schedulers ddpm,ddim --sweep-steps 25 \
  --sweep-samples "$SAMPLES" --quiet
$PY -m dkdm.bench.learned_variance "$OUT" docs
echo "[$(date -u +%T)] done"
