#!/usr/bin/env bash
# Timestep coverage on digits (docs/coverage.md): two DDIM-25 caches of the same trajectories (same teacher
# forwards), `--coverage grid` (25 timesteps) and `--coverage offsets` (all 1000); a student from each at
# equal steps; `dkdm evaluate` sweeps over DDIM 10/25/50, DPM-Solver++ 10/25 and DDPM 100.
#   Usage: scripts/coverage-digits.sh [OUT=runs/cov]   (env TRAJ, STEPS, SAMPLES to resize)
set -euo pipefail
OUT=${1:-runs/cov}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
TRAJ=${TRAJ:-1024} STEPS=${STEPS:-1000} SAMPLES=${SAMPLES:-1024}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
for c in grid offsets; do
  echo "[$(date -u +%T)] generate $c"
  $PY -m dkdm.cli generate --recipe digits --steps 25 --trajectories "$TRAJ" --coverage $c --out "$OUT/cache-$c" --quiet
done
for c in grid offsets; do
  echo "[$(date -u +%T)] distill $c"
  $PY -m dkdm.cli distill --recipe digits --cache "$OUT/cache-$c" --out "$OUT/student-$c" --steps "$STEPS" \
    --tracker none --checkpoint-every 0 --quiet > "$OUT/distill-$c.log" 2>&1 &
done
wait
echo "[$(date -u +%T)] evaluate (three reports side by side)"
E() { $PY -m dkdm.cli evaluate --recipe digits --student "$OUT/student-grid" --student "$OUT/student-offsets" --quiet "$@"; }
E --out "$OUT/eval-ddim" --num-samples "$SAMPLES" --sweep-schedulers ddim --sweep-steps 10,50 --sweep-samples "$SAMPLES" &
E --out "$OUT/eval-dpm" --num-samples 128 --sweep-schedulers dpm++ --sweep-steps 10,25 --sweep-samples "$SAMPLES" &
E --out "$OUT/eval-ddpm" --num-samples 128 --sweep-schedulers ddpm --sweep-steps 100 --sweep-samples "$SAMPLES" &
wait
$PY -m dkdm.bench.coverage "$OUT" docs
echo "[$(date -u +%T)] done"
