#!/usr/bin/env bash
# DKDM ablation on digits at equal student steps (pipelines/digits-ablation.toml):
#   baseline (--real-ratio 1), cache (data-free, from the cache), live iterative / shuffled / dynamic.
# All five at once, one thread each; then one `dkdm evaluate` over all five students and
# the table + plot in docs/ablation.{md,png}.   Usage: scripts/ablation-digits.sh [OUT=runs/ablation]
set -euo pipefail
OUT=${1:-runs/ablation}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
R=${RECIPE:-pipelines/digits-ablation.toml}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
d() { $PY -m dkdm.cli distill --recipe $R --quiet "$@"; }
echo "[$(date -u +%T)] generate cache (resumable: complete shards are skipped)"
$PY -m dkdm.cli generate --recipe $R --out "$OUT/cache" --quiet
echo "[$(date -u +%T)] distill (all five at once, one thread each)"
d --out "$OUT/baseline" --real digits --real-ratio 1 > "$OUT/baseline.log" 2>&1 &
d --out "$OUT/cache-only" --source cache --cache "$OUT/cache" > "$OUT/cache-only.log" 2>&1 &
d --out "$OUT/iterative" --source live --pool iterative > "$OUT/iterative.log" 2>&1 &
d --out "$OUT/shuffled" --source live --pool shuffled > "$OUT/shuffled.log" 2>&1 &
d --out "$OUT/dynamic" --source live --pool dynamic > "$OUT/dynamic.log" 2>&1 &
wait
echo "[$(date -u +%T)] evaluate"
$PY -m dkdm.cli evaluate --recipe $R --out "$OUT/eval" --quiet \
  --student "$OUT/baseline" --student "$OUT/cache-only" --student "$OUT/iterative" \
  --student "$OUT/shuffled" --student "$OUT/dynamic"
$PY -m dkdm.bench.ablation "$OUT" --md docs/ablation.md --png docs/ablation.png
echo "[$(date -u +%T)] done"
