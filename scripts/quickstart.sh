#!/usr/bin/env bash
# Quick start: SimCLR pretraining on the built-in synthetic data set, then linear evaluation of the
# frozen backbone, beside the same backbone at random initialisation. About 4 minutes on 2 CPU cores.
#
#   bash scripts/quickstart.sh [OUT_DIR]      (default OUT_DIR: runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}
STAMP=$(date +%Y%m%d-%H%M%S)
COMMON=(--dataset_name synthetic --backbone resnet18 --image_size 16 --device cpu --num_workers 0
        --logs_dir "$OUT/logs" --ckpt_dir "$OUT/ckpts" --model_name simclr)

echo "== 1/3 SimCLR pretraining (resnet18, 16x16 crops of the synthetic shapes) =="
python main.py "${COMMON[@]}" --run_name "simclr_$STAMP" --limit 2000 --batch_size 128 \
    --optimizer sgd --base_lr 0.5 --weight_decay 5e-4 --warmup_epochs 1 --num_epochs 4 --save_freq 4

LINEAR=(--limit 2000 --batch_size 256 --optimizer sgd --base_lr 10 --weight_decay 0
        --warmup_epochs 0 --num_epochs 5)
echo "== 2/3 linear evaluation of the pretrained backbone =="
python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --run_name "linear_simclr_$STAMP" \
    --ckpt "$OUT/ckpts/simclr_$STAMP/last.pt" | tee "$OUT/linear_trained.txt"
echo "== 3/3 the same linear evaluation at random initialisation (the baseline) =="
python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --run_name "linear_random_$STAMP" --random_init \
    | tee "$OUT/linear_random.txt"

echo
echo "pretrained : $(tail -n 1 "$OUT/linear_trained.txt")"
echo "random init: $(tail -n 1 "$OUT/linear_random.txt")"
echo "plots      : $OUT/logs/simclr_$STAMP/{loss,lr}.png and $OUT/logs/linear_simclr_$STAMP/{loss,lr,accuracy}.png"
