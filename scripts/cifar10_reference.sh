#!/usr/bin/env bash
# Full CIFAR-10 reference recipes, one per method, for a GPU box: ResNet-18 with the CIFAR stem
# (3x3 stride-1 conv, no max-pool: --image_size 32), pretrained for 800-1000 epochs with the
# recipe of the reference implementation, then a linear probe of the frozen backbone; plus the
# same probe of the untrained backbone (the baseline), once. At the end, a Markdown table of every
# probe is built from the results.json files by scripts/make_tables.py.
#
# Every number comes from a reference implementation (see docs/reference_results.md for the
# table, the sources and the published accuracies to compare with):
#   - vturrisi/solo-learn, scripts/pretrain/cifar/{simclr,supcon,byol,swav,barlow,vicreg,
#     mocov2plus,mocov3,nnclr,dino}.yaml and
#     augmentations/{symmetric,symmetric_weak,asymmetric}.yaml (ResNet-18, batch 256 on one GPU,
#     1000 epochs);
#   - SimSiam: the paper's CIFAR appendix (arXiv 2011.10566, App. D) and facebookresearch/simsiam
#     main_simsiam.py.
# Learning rates: --base_lr is the lr for a batch of 256, scaled linearly by --batch_size
# (lr = base_lr x B/256). solo-learn scales its yaml lr the same way (solo/args/pretrain.py:
# lr x batch_size x devices x nodes / 256), and its CIFAR configs use batch 256 on one device, so
# its lr is copied unchanged; SimSiam's "base lr 0.03 x B/256" is our convention already.
# Not run yet: the development machine has no GPU, and each method is 800-1000 epochs.
#
#   bash scripts/cifar10_reference.sh [OUT_DIR [METHOD...]]   default OUT_DIR runs/cifar10_reference
#   METHODS="simclr byol" bash scripts/cifar10_reference.sh   a subset (positional METHODs win)
#   DATA_DIR=/data/cifar DOWNLOAD=1 bash scripts/cifar10_reference.sh   torchvision CIFAR-10,
#                                         downloaded into DATA_DIR (default ./data) the first time
#   DATASET=imagefolder DATA_DIR=../shared/data/cifar10 bash scripts/cifar10_reference.sh
#                                         an ImageFolder tree (train/ and test/ class folders);
#                                         chosen by itself when DATA_DIR/train exists
#   NUM_WORKERS=16 ...                    data loading processes (default 8)
#   BASELINE=0 ...                        skip the random-initialisation probe
#   DRY_RUN=1 ...                         print the commands, run nothing
# The script runs from the repository root: relative OUT_DIR and DATA_DIR are taken from there.
#
# Runs write to OUT_DIR/logs/<run> and OUT_DIR/ckpts/<run> (pretrain_<method>, linear_<method>,
# linear_random) and the table to OUT_DIR/results.md. Running the script again continues: a
# pretraining resumes from its last.pt (--resume auto; a finished one returns at once) and a probe
# whose results.json exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_METHODS=(simclr supcon simsiam byol swav barlowtwins vicreg mocov2 mocov3 nnclr dino)
OUT=${1:-runs/cifar10_reference}
shift || true
if [ $# -gt 0 ]; then
    SELECTED=("$@")
elif [ -n "${METHODS:-}" ]; then
    read -r -a SELECTED <<< "${METHODS//,/ }"
else
    SELECTED=("${ALL_METHODS[@]}")
fi
if [ ${#SELECTED[@]} -eq 0 ]; then
    echo "error: no method selected; choose from: ${ALL_METHODS[*]}" >&2
    exit 2
fi
for method in "${SELECTED[@]}"; do
    case " ${ALL_METHODS[*]} " in
        *" $method "*) ;;
        *) echo "error: unknown method '$method'; choose from: ${ALL_METHODS[*]}" >&2; exit 2 ;;
    esac
done

DATA_DIR=${DATA_DIR:-./data}
if [ -z "${DATASET:-}" ]; then
    if [ -d "$DATA_DIR/train" ]; then DATASET=imagefolder; else DATASET=cifar10; fi
fi
DATA=(--dataset_name "$DATASET" --data_dir "$DATA_DIR")
if [ "${DOWNLOAD:-0}" = 1 ]; then
    if [ "$DATASET" = imagefolder ]; then
        echo "error: DOWNLOAD=1 downloads torchvision's CIFAR-10; an ImageFolder tree is read as is" >&2
        exit 2
    fi
    DATA+=(--download)
fi
COMMON=(--backbone resnet18 --image_size 32 "${DATA[@]}" --num_workers "${NUM_WORKERS:-8}"
        --logs_dir "$OUT/logs" --ckpt_dir "$OUT/ckpts")

run() {  # print a command (shell-quoted, so it can be pasted), then run it unless DRY_RUN=1
    printf '%q ' "$@"
    echo
    if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

# ---------------------------------------------------------------------------------------------
# Pretraining recipes. Shared by the solo-learn recipes: batch 256 (one GPU), 1000 epochs,
# per-step linear warmup over 10 epochs from 3e-5 then cosine to 0 (solo/methods/base.py:
# scheduler warmup_cosine, warmup_epochs 10, warmup_start_lr 3e-5, min_lr 0), momentum 0.9.
SOLO=(--batch_size 256 --num_epochs 1000 --warmup_epochs 10 --warmup_lr 3e-5 --final_lr 0
      --momentum 0.9)
# solo-learn's "lars" with eta 0.02, clip_lr True, exclude_bias_n_norm True (solo/utils/lars.py):
# a = eta ||p|| / (||g|| + wd ||p||), clipped at min(a / lr, 1), g <- (g + wd p) a, then momentum
# SGD. That is this toolkit's `larc` (apex LARC) with trust coefficient 0.02 and clipping, not
# `lars`/`lars_simclr` (no clipping: their trust ratio multiplies the lr). Not expressible:
# solo-learn leaves 1-D parameters (biases, BatchNorm) out of both the adaptation and the weight
# decay; `larc` adapts and decays every parameter.
SOLO_LARS=(--optimizer larc --larc_trust_coefficient 0.02 --larc_clip true)
# Not expressible for every recipe: solo-learn trains an online linear classifier together with
# the backbone (classifier_lr 0.1, 0.3 for MoCo v2+ and v3, on the augmented views) and reports
# its accuracy; here the probe is a separate main_linear.py run after pretraining. solo-learn trains
# in fp16 mixed precision (precision: 16), this toolkit in fp32. solo-learn's CIFAR stem pads its
# 3x3 conv by 2 (padding 1 here). With DATASET=imagefolder the images are normalised with ImageNet
# statistics.

recipe() {  # sets FLAGS to the method's pretraining flags
    case "$1" in
        simclr)
            # solo-learn scripts/pretrain/cifar/simclr.yaml: lars lr 0.4 (batch 256), wd 1e-4,
            # temperature 0.2, projector 2048 -> 256; augmentations/symmetric.yaml: crop 0.08-1,
            # jitter (0.8, 0.8, 0.8, 0.2) p=0.8 = strength 1.0, grayscale 0.2.
            # Not expressible: Gaussian blur p=0.5 (this toolkit drops blur at <= 64 px); solo's
            # projector has no BatchNorm (Linear-ReLU-Linear), this one (the official SimCLR
            # head) has BN after both layers.
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.4 --weight_decay 1e-4
                   --temperature 0.2 --proj_hidden_dim 2048 --proj_dim 256
                   --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        supcon)
            # solo-learn scripts/pretrain/cifar/supcon.yaml: sgd lr 0.4 (batch 256), wd 1e-5,
            # temperature 0.2, projector 2048 -> 256; symmetric.yaml views as for SimCLR.
            # Not expressible: blur p=0.5, as SimCLR. (The official HobbitLong/SupContrast CIFAR
            # command is ResNet-50, batch 1024, SGD lr 0.5 not scaled by batch = base_lr 0.125 in
            # our convention, temperature 0.1, wd 1e-4, 1000 epochs; not used here.)
            FLAGS=("${SOLO[@]}" --optimizer sgd --base_lr 0.4 --weight_decay 1e-5
                   --temperature 0.2 --proj_hidden_dim 2048 --proj_dim 256
                   --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        simsiam)
            # SimSiam paper, App. D (CIFAR): SGD base lr 0.03 x B/256, cosine, 800 epochs,
            # wd 5e-4, momentum 0.9, batch 512, no blur, predictor 2048 -> 512 -> 2048; no warmup
            # (main_simsiam.py has none). Views as facebookresearch/simsiam main_simsiam.py (MoCo v2):
            # crop 0.2-1, jitter (0.4, 0.4, 0.4, 0.1) p=0.8 = strength 0.5, grayscale 0.2.
            # --fix_pred_lr as the official README command (and solo-learn's static_lr predictor).
            # Not expressible: the paper's CIFAR projector has 2 layers; this toolkit's has 3
            # (2048-2048-2048, BN on the output). solo-learn's simsiam.yaml (sgd lr 0.5, wd 1e-5,
            # 1000 epochs, batch 256) is the other recipe; its published 90.51 comes from that one.
            FLAGS=(--batch_size 512 --num_epochs 800 --optimizer sgd --base_lr 0.03
                   --weight_decay 5e-4 --momentum 0.9 --warmup_epochs 0 --final_lr 0
                   --fix_pred_lr --proj_hidden_dim 2048 --proj_dim 2048 --pred_hidden_dim 512
                   --crop_min_scale 0.2 --jitter_strength 0.5) ;;
        byol)
            # solo-learn scripts/pretrain/cifar/byol.yaml: lars lr 1.0 (batch 256), wd 1e-5,
            # EMA tau 0.99 -> 1.0 (cosine), projector 4096 -> 256, predictor 4096;
            # augmentations/asymmetric.yaml: crop 0.08-1, jitter (0.4, 0.4, 0.2, 0.1) p=0.8 =
            # strength 1.0, grayscale 0.2, no blur, solarisation 0 / 0.2: the BYOL views here
            # exactly (their blur is dropped at 32 px).
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 1.0 --weight_decay 1e-5
                   --ema_momentum 0.99 --proj_hidden_dim 4096 --proj_dim 256 --pred_hidden_dim 4096
                   --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        swav)
            # solo-learn scripts/pretrain/cifar/swav.yaml: lars lr 0.6 (batch 256), wd 1e-6,
            # temperature 0.1, 3000 prototypes, projector 2048 -> 128, queue 3840 from epoch 50,
            # prototypes frozen for 2 epochs, Sinkhorn eps 0.05 x 3 iterations (solo defaults);
            # symmetric.yaml: two 32 px crops and no low-resolution ones (--num_crops 0),
            # crop 0.08-1, jitter strength 1.0.
            # Not expressible: blur p=0.5; solo fills the queue from epoch 0 (used from epoch 50),
            # this toolkit from epoch 50 (used once full, 15 steps later); solo's prototypes are a
            # weight-normalised layer, these are re-normalised after each step.
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.6 --weight_decay 1e-6
                   --temperature 0.1 --num_prototypes 3000 --proj_hidden_dim 2048 --proj_dim 128
                   --queue_size 3840 --epoch_queue_starts 50 --freeze_prototypes_epochs 2
                   --num_crops 0 --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        barlowtwins)
            # solo-learn scripts/pretrain/cifar/barlow.yaml: lars lr 0.3 (batch 256), wd 1e-4,
            # projector 2048-2048-2048, lambda 0.0051 (solo default); asymmetric.yaml views (BYOL).
            # Not expressible: solo multiplies the loss by scale_loss 0.1 (no such flag here, and
            # with clipped LARC the scale is not neutral); the paper's separate lrs for weights
            # (0.2) and biases/BN (0.0048) are not in solo-learn's CIFAR recipe and have no flag here.
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.3 --weight_decay 1e-4
                   --lambd 0.0051 --proj_hidden_dim 2048 --proj_dim 2048
                   --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        vicreg)
            # solo-learn scripts/pretrain/cifar/vicreg.yaml: lars lr 0.3 (batch 256), wd 1e-4,
            # projector 2048-2048-2048, sim/var/cov weights 25/25/1; its own views: crop 0.2-1,
            # jitter (0.4, 0.4, 0.2, 0.1) p=0.8 = strength 1.0, grayscale 0.2, no blur.
            # Not expressible: solarisation p=0.1 on both views (the BYOL views here: 0 / 0.2).
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.3 --weight_decay 1e-4
                   --sim_coeff 25 --std_coeff 25 --cov_coeff 1 --proj_hidden_dim 2048
                   --proj_dim 2048 --crop_min_scale 0.2 --jitter_strength 1.0) ;;
        mocov2)
            # solo-learn scripts/pretrain/cifar/mocov2plus.yaml (MoCo v2+: the symmetrised loss
            # with one queue per direction, this toolkit's default): sgd lr 0.3 (batch 256),
            # momentum 0.9 (solo/args/pretrain.py default for sgd), wd 1e-4, temperature 0.2,
            # queue 32768, projector 2048 -> 256 without BatchNorm, EMA tau 0.99 -> 0.999 (cosine);
            # augmentations/symmetric_weak.yaml: crop 0.08-1, jitter (0.4, 0.4, 0.4, 0.1) p=0.8 =
            # strength 0.5 of the SimCLR views, grayscale 0.2.
            # Not expressible: blur p=0.5 (dropped at <= 64 px); the EMA momentum here rises on the
            # cosine to 1, not to solo's final 0.999 (0.995 vs 0.9945 at mid-run, 1 vs 0.999 at the
            # end).
            FLAGS=("${SOLO[@]}" --optimizer sgd --base_lr 0.3 --weight_decay 1e-4
                   --temperature 0.2 --queue_size 32768 --ema_momentum 0.99
                   --proj_hidden_dim 2048 --proj_dim 256
                   --crop_min_scale 0.08 --jitter_strength 0.5) ;;
        mocov3)
            # solo-learn scripts/pretrain/cifar/mocov3.yaml: lars lr 0.3 (batch 256), wd 1e-6,
            # temperature 0.2, projector 4096 -> 256, predictor 4096, EMA tau 0.99 -> 1.0 (cosine);
            # asymmetric.yaml views (BYOL's, as for byol above).
            # Not expressible: for ResNets solo builds a 2-layer projector
            # (Linear-BN-ReLU-Linear-BN) and a predictor without the final BatchNorm; this
            # toolkit's mocov3 has the paper's 3-layer projector and a final (affine-free) BN on
            # the predictor, neither set by a flag.
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.3 --weight_decay 1e-6
                   --temperature 0.2 --ema_momentum 0.99 --proj_hidden_dim 4096 --proj_dim 256
                   --pred_hidden_dim 4096 --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        nnclr)
            # solo-learn scripts/pretrain/cifar/nnclr.yaml: lars lr 0.4 (batch 256), wd 1e-5,
            # temperature 0.2, projector 2048-2048-256, predictor 4096, support set 65536 (more
            # than CIFAR's 50,000 images; copied as solo has it); asymmetric.yaml views (BYOL's).
            # Not expressible: solo's loss is the row-wise cross-entropy only
            # (solo/losses/nnclr.py), this toolkit's adds the column-wise term of the paper; solo
            # starts from a support set of random unit vectors, this one from the filled rows (the
            # same once full, after 256 steps); solo's last projector BatchNorm is affine, this
            # one's is not.
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.4 --weight_decay 1e-5
                   --temperature 0.2 --proj_hidden_dim 2048 --proj_dim 256 --pred_hidden_dim 4096
                   --queue_size 65536 --crop_min_scale 0.08 --jitter_strength 1.0) ;;
        dino)
            # solo-learn scripts/pretrain/cifar/dino.yaml: lars lr 0.3 (batch 256), wd 1e-6,
            # head 2048 -> 256 (no BatchNorm: use_bn_in_head False) and 4096 prototypes, EMA tau
            # 0.9995 -> 1.0 (cosine); solo/methods/dino.py defaults: student temperature 0.1,
            # teacher 0.07 with warmup_teacher_temperature_epochs 0 (so 0.07 throughout), centre
            # momentum 0.9, last layer frozen for 1 epoch, no gradient clipping, norm_last_layer;
            # asymmetric.yaml: two 32 px crops of 8-100 % and no local crops (--num_crops 0),
            # BYOL's colour and solarisation 0 / 0.2, no blur: the dino views here with those
            # settings (their blur is dropped at 32 px).
            # Not expressible: nothing beyond the shared LARS and online-classifier notes. (Copies
            # of the older argparse solo/methods/dino.py in forks default to 50 epochs of teacher
            # warmup from 0.04; the current code's default, used here, is none.)
            FLAGS=("${SOLO[@]}" "${SOLO_LARS[@]}" --base_lr 0.3 --weight_decay 1e-6
                   --proj_hidden_dim 2048 --proj_dim 256 --out_dim 4096
                   --ema_momentum 0.9995 --temperature 0.1 --teacher_temp 0.07
                   --teacher_temp_warmup_epochs 0 --center_momentum 0.9
                   --freeze_prototypes_epochs 1 --num_crops 0 --crop_min_scale 0.08
                   --jitter_strength 1.0) ;;
    esac
}

# Linear probe: the frozen backbone's 512-d features, SGD lr 30 (batch 256), no weight decay,
# momentum 0.9, no warmup, cosine over 100 epochs, padded random crop + flip: the project's
# original linear command (PatrickHua/SimSiam configs/simsiam_cifar.yaml, eval section).
# solo-learn has no offline CIFAR linear config (its CIFAR numbers are from the online classifier).
# The baseline uses the very same probe; docs/evaluation.md shows a --probe_bn variant that lets a
# plain probe move on the tiny features of an untrained backbone.
LINEAR=(--batch_size 256 --optimizer sgd --base_lr 30 --weight_decay 0 --momentum 0.9
        --warmup_epochs 0 --warmup_lr 0 --final_lr 0 --num_epochs 100)

linear_done() { [ -f "$OUT/logs/$1/results.json" ]; }

set_aside_partial() {  # a run folder that cannot be continued: move it aside, keep it
    local name=$1 dir
    for dir in "$OUT/logs/$name" "$OUT/ckpts/$name"; do
        if [ -e "$dir" ] && [ "${DRY_RUN:-0}" != 1 ]; then
            mv "$dir" "$dir.partial-$(date +%Y%m%d-%H%M%S)"
            echo "note: $dir was left by an interrupted run; moved aside"
        fi
    done
}

echo "CIFAR-10 reference runs: ${SELECTED[*]} on $DATASET ($DATA_DIR), output under $OUT"
for method in "${SELECTED[@]}"; do
    if linear_done "linear_$method"; then
        echo "== $method: done ($OUT/logs/linear_$method/results.json), skipped =="
        continue
    fi
    recipe "$method"
    echo "== $method: pretraining =="
    # a folder without last.pt (stopped during its first epoch) cannot be resumed
    [ -f "$OUT/ckpts/pretrain_$method/last.pt" ] || set_aside_partial "pretrain_$method"
    run python main.py "${COMMON[@]}" --model_name "$method" --run_name "pretrain_$method" \
        --resume auto --knn_freq 50 --save_freq 100 "${FLAGS[@]}"
    # the trained (student, online) backbone, as solo-learn's online classifier; add
    # --momentum_backbone to LINEAR to evaluate the EMA copy (DINO's paper reports the teacher)
    echo "== $method: linear probe of the frozen backbone =="
    set_aside_partial "linear_$method"
    run python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --model_name "$method" \
        --run_name "linear_$method" --ckpt "$OUT/ckpts/pretrain_$method/last.pt"
done

if [ "${BASELINE:-1}" = 1 ]; then
    if linear_done linear_random; then
        echo "== baseline: done ($OUT/logs/linear_random/results.json), skipped =="
    else
        echo "== baseline: the same linear probe of the untrained backbone =="
        set_aside_partial linear_random
        run python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --model_name "${SELECTED[0]}" \
            --random_init --run_name linear_random
    fi
fi

echo
echo "== results (every probe under $OUT/logs, also in $OUT/results.md) =="
if [ "${DRY_RUN:-0}" = 1 ]; then
    run python scripts/make_tables.py "$OUT/logs"
else
    python scripts/make_tables.py "$OUT/logs" | tee "$OUT/results.md"
fi
