#!/usr/bin/env bash
# Table 1 on synthetic phantoms: the four stage-1 variants at width 16, same data, same budget, this CPU.
# Training/validation phantoms (seeds 100-111) and held-out test phantoms (seeds 200-203) live in separate
# folders, so no test volume is ever seen in training. lr is 1e-3 (the paper's 1e-4 barely moves in a CPU budget
# of a few thousand slices). Augmentation: the 'none' preset (the paper's flips and rotation), with which the
# README's numbers were made. Usage: bash experiments/table1.sh  (env: OUT, EPOCHS, SAMPLES, LR, SEED, AUGMENT)
set -euo pipefail
S2R=${S2R:-.venv/bin/seg2refine}
OUT=${OUT:-runs/table1}
EPOCHS=${EPOCHS:-6}
SAMPLES=${SAMPLES:-768}
LR=${LR:-1e-3}
SEED=${SEED:-0}
AUGMENT=${AUGMENT:-none}
mkdir -p "$OUT"
start=$(date +%s)
[ -f "$OUT/data/12.label.nii.gz" ] || $S2R phantom --out "$OUT/data" --count 12 --seed 100
[ -f "$OUT/test/4.label.nii.gz" ] || $S2R phantom --out "$OUT/test" --count 4 --seed 200
for variant in unet ag-unet ag-att-unet sfanet; do
  t0=$(date +%s)
  $S2R train stage1 --data "$OUT/data" --out "$OUT/$variant" --variant "$variant" --width 16 \
    --epochs "$EPOCHS" --batch-size 8 --samples-per-epoch "$SAMPLES" --lr "$LR" --val-fraction 0.17 --test-fraction 0 \
    --num-workers 1 --seed "$SEED" --augment "$AUGMENT"
  $S2R predict "$OUT/test" --stage1 "$OUT/$variant/best.safetensors" --out "$OUT/$variant/test" --overwrite
  $S2R evaluate --pred "$OUT/$variant/test" --gt "$OUT/test" --suffix s --json "$OUT/$variant/test.json"
  echo "$variant $(( $(date +%s) - t0 )) s" >> "$OUT/wall_times.txt"
done
echo "total $(( $(date +%s) - start )) s" >> "$OUT/wall_times.txt"
.venv/bin/python experiments/summarize.py table1 "$OUT" | tee "$OUT/table1.md"
