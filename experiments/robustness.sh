#!/usr/bin/env bash
# Robustness study (issue #14): the bundled weights ("new", canonical space, cohort + legacy phantoms, 'default'
# augmentation) against the weights bundled before the rebuild ("old": legacy phantoms, 'none' augmentation, run on
# the file's raw voxel grid as the product did before canonical space) on held-out cohort phantoms (seeds 2000-2002)
# at 0.4 / 0.7 / 1.2 mm x two contrast/noise levels, and on real-size scans (seeds 2000-2001).
# See experiments/robustness.py for the cells and metrics. Results: $OUT/results.jsonl and $OUT/summary.md;
# a rerun skips the cases already in results.jsonl. Usage: bash experiments/robustness.sh (env: OUT, OLD_COMMIT)
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/robustness}
OLD_COMMIT=${OLD_COMMIT:-843a73b}  # the last commit with the weights bundled before the rebuild
OLD="$OUT/old_weights"
mkdir -p "$OLD"
start=$(date +%s)
for f in stage1.safetensors stage2.safetensors stage1.json stage2.json; do
  [ -f "$OLD/$f" ] || git show "$OLD_COMMIT:src/seg2refine_core/weights/$f" > "$OLD/$f"
done
# The old weights as they ran before canonical space: no recorded space, so the raw voxel grid.
$PY - "$OLD" <<'PYEOF'
import json, sys
for name in ("stage1", "stage2"):
    path = f"{sys.argv[1]}/{name}.json"
    config = json.load(open(path))
    config.pop("canonical_space", None)
    json.dump(config, open(path, "w"), indent=1)
PYEOF
$PY experiments/robustness.py --out "$OUT" \
  --weights new=bundled,bundled "old=$OLD/stage1.safetensors,$OLD/stage2.safetensors"
echo "robustness study: $(( ($(date +%s) - start) / 60 )) min"
