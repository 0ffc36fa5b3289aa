#!/usr/bin/env bash
# Issue 19's demo re-measure with disjoint evaluation seeds (docs/demo.md): `dkdm demo` (distillation seed 0),
# then distillation seeds 1..3 on the same cache with the digits recipe, each evaluated with the recipe's
# evaluate section (2,048 samples, evaluation seed space), and one table: teacher FID, student FID, ratio,
# speed-up per seed, mean and range.
#   Usage: scripts/demo-spread.sh [OUT=runs/spread]   (env SEEDS="1 2 3"; an existing OUT/demo0 is reused)
set -euo pipefail
OUT=${1:-runs/spread}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
SEEDS=${SEEDS:-"1 2 3"}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
D() { $PY -m dkdm.cli "$@"; }
if [ ! -f "$OUT/demo0/report.json" ]; then
  echo "[$(date -u +%T)] demo (seed 0)"
  D demo --out "$OUT/demo0" --quiet > "$OUT/demo0.log" 2>&1
fi
for s in $SEEDS; do
  if [ ! -f "$OUT/seed$s/eval/report.json" ]; then
    echo "[$(date -u +%T)] distill + evaluate seed $s"
    D distill --recipe digits --cache "$OUT/demo0/cache" --seed "$s" --out "$OUT/seed$s" --quiet > "$OUT/seed$s.distill.log" 2>&1
    D evaluate --recipe digits --student "$OUT/seed$s/student" --out "$OUT/seed$s/eval" --quiet > "$OUT/seed$s.eval.log" 2>&1
  fi
done
$PY - "$OUT" $SEEDS <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], ["0"] + sys.argv[2:]
rows = []
for s in seeds:
    r = json.load(open(f"{out}/demo0/report.json" if s == "0" else f"{out}/seed{s}/eval/report.json"))
    rows.append((s, r["teacher"]["fid"], r["student"]["fid"], r["fid_ratio"], r["speedup"], r["seed_space"], r["seed_overlap"]))
print("| distill seed | teacher FID | student FID | ratio | speed-up | seed space | overlap |")
print("|---|---:|---:|---:|---:|---|---|")
for s, t, f, q, v, sp, ov in rows:
    print(f"| {s} | {t:.2f} | {f:.2f} | {q:.2f}x | {v:.2f}x | {sp} | {sum(ov.values())} |")
q = [r[3] for r in rows]
f = [r[2] for r in rows]
print(f"mean student FID {statistics.mean(f):.2f}, mean ratio {statistics.mean(q):.2f}x (range {min(q):.2f}x-{max(q):.2f}x)")
if "0" in seeds:
    d = json.load(open(f"{out}/demo0/report.json"))["demo"]["timings"]
    print("demo timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in d.items()))
PY
