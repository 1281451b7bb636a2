#!/usr/bin/env bash
# The synthetic table's baseline (the linear probe of the untrained small_cnn, scripts/methods.sh)
# with bicubic resizes, as the methods evaluated bicubically (SimCLR, BYOL, DINO, MAE) are probed,
# beside the table's bilinear one: at 16 px the resize of the synthetic images alone moves it.
#
# The methods table (scripts/methods_table.py) shows it beside the rows probed bicubically, from
# the same folder as theirs.
#
#   bash scripts/interpolation_check.sh [OUT_DIR]   (default: results/methods)
#   SEEDS="123" ...                                 one seed only (default 123 124 125)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/methods}
read -r -a SEEDS <<< "${SEEDS:-123 124 125}"
for seed in "${SEEDS[@]}"; do
    name=linear_random_bicubic_s$seed
    [ -e "$OUT/$name/results.json" ] && continue
    rm -rf "${OUT:?}/$name" "$OUT/ckpts/$name"
    python main_linear.py --config recipes/short/synthetic_linear.args --device cpu \
        --num_workers 0 --logs_dir "$OUT" --ckpt_dir "$OUT/ckpts" --model_name simclr \
        --random_init --eval_interpolation bicubic --seed "$seed" --run_name "$name" | tail -n 1
done
python - "$OUT" "${SEEDS[@]}" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from methods_table import spread
out, seeds = sys.argv[1], sys.argv[2:]
acc = [json.load(open(f"{out}/linear_random_bicubic_s{s}/results.json"))["acc1"] for s in seeds]
print(f"untrained small_cnn, bicubic resizes: Acc@1 {spread(acc)}")
PY
