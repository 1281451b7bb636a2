#!/usr/bin/env bash
# MoCo v2 with its Shuffle-BN (the default: on one process BatchNorm over 8
# splits of the batch in both encoders and the keys shuffled between them, as MoCo's CIFAR demo)
# beside the methods table's row without it (recipes/short/mocov2.args: --shuffle_bn false,
# results/methods): the same short synthetic run and probe, seeds and everything else equal.
#
#   bash scripts/shuffle_bn_check.sh [OUT_DIR]   (default: results/shuffle_bn_check)
#   JOBS=2 ...                                   two rows at a time, one thread each
#   SEEDS="123" ...                              one seed only (default 123 124 125)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/shuffle_bn_check}
source scripts/short_recipes.sh
SHARED=recipes/short/synthetic.args
LINEAR_SHARED=recipes/short/synthetic_linear.args
COMMON=(--device cpu --num_workers 0 --logs_dir "$OUT" --ckpt_dir "$OUT/ckpts")
PRETRAIN=(--shuffle_bn true)  # after the recipe's --shuffle_bn false: the command line wins
EPOCHS=${EPOCHS:-8}
mkdir -p "$OUT"
[ "$JOBS" -gt 1 ] && export OMP_NUM_THREADS=1
for seed in "${SEEDS[@]}"; do
    run_row mocov2 "$seed" &
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || echo "a row failed"; done
done
wait
python - "$OUT" results/methods <<'PY'
import sys
sys.path.insert(0, "scripts")
from methods_table import method_rows, spread
for label, root in (("with Shuffle-BN", sys.argv[1]), ("without (the table's row)", sys.argv[2])):
    rows = method_rows(root).get("mocov2", [])
    if not rows:
        print(f"mocov2 {label}: no finished rows under {root}")
        continue
    gain = spread([r["after"] - r["before"] for r in rows])
    probe = spread([r["linear"]["acc1"] for r in rows])
    seeds = ", ".join(str(r["seed"]) for r in rows)
    print(f"mocov2 {label} (seeds {seeds}): kNN gain {gain}, linear Acc@1 {probe}")
PY
