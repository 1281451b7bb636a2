#!/usr/bin/env bash
# I-JEPA's two encoders on the CIFAR-10 table's checkpoints: its paper evaluates the target (EMA)
# encoder (Appendix A.1, main_linear's default for I-JEPA); the table's row probes
# the context encoder (recipes/short/cifar10_linear.args: --momentum_backbone false). For each
# seed whose pretraining scripts/cifar10_cpu.sh finished, the table's linear probe of the target
# encoder, and kNN (k=200 on the 10,000 test images, a class-balanced 10,000-image subset of the
# training set as memory bank, as the table's kNN column) of both encoders; then side by side.
#
#   bash scripts/ijepa_target_check.sh [OUT_DIR]   (default: results/ijepa_target_check)
#   TABLE=results/cifar10_cpu ...                  the table's runs (checkpoints and probes)
#   SEEDS="123" ...                                one seed only (default 123 124 125)
#   DATA=path/to/cifar10 ...                       required, as scripts/cifar10_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/ijepa_target_check}
TABLE=${TABLE:-results/cifar10_cpu}
DATA=${DATA:-}
[ -n "$DATA" ] && [ -d "$DATA/train" ] ||
    { echo "error: set DATA=path/to/cifar10, a CIFAR-10 ImageFolder with train/ and test/ (DATA='$DATA')" >&2; exit 2; }
read -r -a SEEDS <<< "${SEEDS:-123 124 125}"
COMMON=(--data_dir "$DATA" --device cpu --num_workers 0 --logs_dir "$OUT" --ckpt_dir "$OUT/ckpts")
read -r -a BACKBONE <<< "$(python scripts/recipe_backbone.py recipes/short/cifar10.args recipes/short/ijepa.args)"
KNN=(--dataset_name imagefolder --image_size 32 --in_memory --eval knn --knn_k 200 --limit 10000)
mkdir -p "$OUT"
for seed in "${SEEDS[@]}"; do
    ckpt=$TABLE/ckpts/pretrain_ijepa_s$seed/last.pt
    [ -e "$TABLE/pretrain_ijepa_s$seed/summary.json" ] || { echo "seed $seed: no finished pretraining in $TABLE"; continue; }
    # --momentum_backbone true after the recipe's false: the command line wins
    name=linear_target_s$seed
    [ -e "$OUT/$name/results.json" ] || python main_linear.py --config recipes/short/cifar10_linear.args \
        "${COMMON[@]}" "${BACKBONE[@]}" --model_name ijepa --seed "$seed" --ckpt "$ckpt" \
        --momentum_backbone true --run_name "$name" > "$OUT/log_$name.txt" 2>&1
    for encoder in context target; do
        name=knn_${encoder}_s$seed
        momentum=$([ "$encoder" = target ] && echo true || echo false)
        [ -e "$OUT/$name/results.json" ] || python main_linear.py "${COMMON[@]}" "${BACKBONE[@]}" \
            "${KNN[@]}" --model_name ijepa --seed "$seed" --ckpt "$ckpt" \
            --momentum_backbone "$momentum" --run_name "$name" > "$OUT/log_$name.txt" 2>&1
    done
done
python - "$OUT" "$TABLE" "${SEEDS[@]}" <<'PY'
import json, os, sys
out, table, seeds = sys.argv[1], sys.argv[2], sys.argv[3:]
def acc(path):
    path = os.path.join(path, "results.json")
    return f"{json.load(open(path))['acc1']:.2f}" if os.path.exists(path) else "-"
print("seed | probe context (table) | probe target | kNN context | kNN target")
for s in seeds:
    cells = [acc(f"{table}/linear_ijepa_s{s}"), acc(f"{out}/linear_target_s{s}"),
             acc(f"{out}/knn_context_s{s}"), acc(f"{out}/knn_target_s{s}")]
    print(f"{s} | " + " | ".join(cells))
PY
