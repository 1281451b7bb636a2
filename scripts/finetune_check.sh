#!/usr/bin/env bash
# Does pretraining help fine-tuning? A ViT pretrained with METHOD (default mae) on the synthetic
# set, then fine-tuned, against the same fine-tuning of the same ViT from its random
# initialisation, at the same budget and seed. CPU-sized: vit_tiny at 32 px on 4,000 images
# (--limit), PRETRAIN_EPOCHS (default 20) of pretraining with the short recipe
# (recipes/short/<method>.args), FINETUNE_EPOCHS (default 10) of fine-tuning.
#
# The fine-tuning is MAE's protocol (recipes/cifar10/finetune_vit.args: AdamW, layer-wise lr
# decay 0.75, drop path 0.1, label smoothing 0.1, the mean of the patch tokens with a fresh
# fc_norm) without its augmentation and batch mixing (mixup 0.8 / cutmix 1.0, RandAugment m9,
# random erasing 0.25), which are made for 100 epochs: with them, 5 epochs of this budget left
# the MAE-pretrained ViT at chance (val Acc@1 9.8 %, train loss 2.303 = ln 10;
# results/finetune_check/mae_s123/finetune_full_pretrained_stopped/metrics.csv).
# FULL=1 adds them (runs finetune_full_<start>).
#
#   bash scripts/finetune_check.sh [OUT_DIR [METHOD]]   (default runs/finetune_check/<timestamp>)
#   SEED=124 ...                    another seed (default 123)
#   STARTS=random ...               one of the two fine-tunings (default "pretrained random"):
#                                   two invocations can run side by side once pretraining is done
# Prints both Acc@1 lines and writes OUT_DIR/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/finetune_check/$(date +%Y%m%d-%H%M%S)}
METHOD=${2:-mae}
SEED=${SEED:-123}
mkdir -p "$OUT"
COMMON=(--dataset_name synthetic --device cpu --num_workers 0 --seed "$SEED"
        --logs_dir "$OUT" --ckpt_dir "$OUT/ckpts" --limit 4000)
read -r -a BACKBONE <<< "$(python scripts/recipe_backbone.py recipes/short/synthetic.args \
    "recipes/short/$METHOD.args")"
FINETUNE=(--finetune --batch_size 128 --num_epochs "${FINETUNE_EPOCHS:-10}" --warmup_epochs 1
          --optimizer adamw --betas 0.9 0.999 --base_lr 1e-3 --backbone_lr 1e-3
          --weight_decay 0.05 --layer_decay 0.75 --drop_path 0.1 --label_smoothing 0.1
          --pool mean --fc_norm --final_lr 1e-6
          --head_std 0.01 --decay_tokens)  # as the kept rows were measured: MAE's own fine-tuning
          # draws its head at 2e-5 and leaves the class token and positions undecayed (drop both)
NAME=finetune
if [ "${FULL:-0}" = 1 ]; then
    FINETUNE+=(--mixup 0.8 --cutmix 1.0 --randaugment 9 --random_erasing 0.25)
    NAME=finetune_full
fi

if [ ! -e "$OUT/ckpts/pretrain/last.pt" ]; then
    python main.py --config recipes/short/synthetic.args --config "recipes/short/$METHOD.args" \
        "${COMMON[@]}" --model_name "$METHOD" --num_epochs "${PRETRAIN_EPOCHS:-20}" \
        --knn_freq 0 --run_name pretrain > "$OUT/log_pretrain.txt" 2>&1
fi
for start in ${STARTS:-pretrained random}; do
    run=${NAME}_$start
    [ -e "$OUT/$run/results.json" ] && continue
    rm -rf "${OUT:?}/$run" "$OUT/ckpts/$run"
    if [ "$start" = pretrained ]; then init=(--ckpt "$OUT/ckpts/pretrain/last.pt"); else init=(--random_init); fi
    python main_linear.py "${COMMON[@]}" "${BACKBONE[@]}" "${FINETUNE[@]}" --model_name "$METHOD" \
        "${init[@]}" --run_name "$run" > "$OUT/log_$run.txt" 2>&1
done
{
    echo "$METHOD on ${BACKBONE[*]}, seed $SEED, $NAME: fine-tuned Acc@1 / Acc@5"
    for start in pretrained random; do
        log=$OUT/log_${NAME}_$start.txt
        if [ -e "$OUT/${NAME}_$start/results.json" ]; then echo "  from $start: $(tail -n 1 "$log")"; fi
    done
} | tee "$OUT/summary.txt"
