#!/usr/bin/env bash
# A short CIFAR-10 convergence check on one GPU: SimCLR with its CIFAR-10 reference recipe
# (recipes/cifar10/simclr.args: ResNet-18 with the CIFAR stem, batch 256, LARC at lr 0.4 x B/256,
# temperature 0.2, projector 2048 -> 256, crops 0.08-1, colour strength 1.0), shortened from 1000
# epochs to EPOCHS (default 30; warm-up 10 -> WARMUP, default 2; the cosine ends at 0 after
# EPOCHS), in bf16 with channels_last and the views drawn on the GPU by kornia. It records the
# weighted kNN accuracy (k 200, T 0.1) on the 10,000 test images before training and every
# KNN_FREQ epochs (default 5), and the online linear probe's test accuracy every epoch, then
# prints one table (epoch, loss, kNN, online Acc@1, images/s).
# The reference run is 1000 epochs (docs/reference_results.md has the accuracies published by
# others); this one says whether the recipe learns at GPU speed, not where it ends.
#
#   DATA=path/to/cifar10 bash scripts/gpu_convergence.sh [OUT_DIR]
#       DATA (required) holds train/ and test/ class folders;
#       OUT_DIR defaults to runs/gpu_convergence. EPOCHS, WARMUP, KNN_FREQ, SEED (123),
#       DEVICE (cuda), AMP (bf16), NUM_WORKERS (8: the kNN passes decode JPEGs), EXTRA
#       (more main.py flags) as environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_convergence}
DATA=${DATA:-}
if [ -z "$DATA" ] || [ ! -d "$DATA/train" ] || [ ! -d "$DATA/test" ]; then
    echo "error: set DATA=path/to/cifar10, a CIFAR-10 ImageFolder with train/ and test/ (DATA='$DATA')" >&2
    exit 2
fi
EPOCHS=${EPOCHS:-30}
run_name=simclr_resnet18_e${EPOCHS}_s${SEED:-123}
# shellcheck disable=SC2206  # EXTRA holds flags
extra=(${EXTRA:-})
python main.py --config recipes/cifar10/simclr.args --backbone resnet18 --image_size 32 \
    --dataset_name imagefolder --data_dir "$DATA" --gpu_augment \
    --num_workers "${NUM_WORKERS:-8}" \
    --device "${DEVICE:-cuda}" --amp "${AMP:-bf16}" --channels_last \
    --num_epochs "$EPOCHS" --warmup_epochs "${WARMUP:-2}" --seed "${SEED:-123}" \
    --knn_freq "${KNN_FREQ:-5}" --knn_k 200 --save_freq 1000 \
    --logs_dir "$OUT/logs" --ckpt_dir "$OUT/ckpts" --run_name "$run_name" --resume auto \
    "${extra[@]}"
# one row per epoch with a kNN figure, and the last: from the run's own metrics.csv
python - "$OUT/logs/$run_name" <<'PY'
import sys
from utils.logging import read_metrics
rows = [r for r in read_metrics(sys.argv[1]) if r["kind"] == "epoch"]
print("| epoch | loss | kNN Acc@1 | online Acc@1 | images/s |\n|---:|---:|---:|---:|---:|")
for r in rows:
    if r["knn_acc1"] or r is rows[-1]:
        cells = [r[k] and f"{float(r[k]):.2f}" for k in ("loss", "knn_acc1", "online_acc1")]
        cells.append(r["images_per_s"] and f"{float(r['images_per_s']):.0f}")
        print(f"| {r['epoch']} | " + " | ".join(cells) + " |")
PY
