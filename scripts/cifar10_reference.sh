#!/usr/bin/env bash
# Full CIFAR-10 reference recipes, one per method, for a GPU box: ResNet-18 with the CIFAR stem
# (3x3 stride-1 conv, no max-pool: --image_size 32), pretrained for 800-1000 epochs with the
# recipe of the reference implementation, then a linear probe of the frozen backbone; plus the
# same probe of the untrained backbone (the baseline), once. At the end, a Markdown table of every
# probe is built from the results.json files by scripts/make_tables.py.
#
# Every number comes from a reference implementation, in the recipe files recipes/cifar10/*.args
# (see docs/reference_results.md for the table, the sources and the published accuracies):
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
#   DATASET=imagefolder DATA_DIR=path/to/cifar10 bash scripts/cifar10_reference.sh
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

# every registered method (methods/__init__.py): a new one needs no line here
read -r -a ALL_METHODS <<< "$(python -c 'from methods import METHODS; print(*METHODS)')"
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
# the backbone: the recipe's (MAE and I-JEPA: a ViT), else ResNet-18 with the CIFAR stem
COMMON=("${DATA[@]}" --num_workers "${NUM_WORKERS:-8}" --logs_dir "$OUT/logs" --ckpt_dir "$OUT/ckpts")

run() {  # print a command (shell-quoted, so it can be pasted), then run it unless DRY_RUN=1
    printf '%q ' "$@"
    echo
    if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

# The recipes are files: recipes/cifar10/<method>.args (pretraining, with the source of every
# value and what cannot be expressed), recipes/cifar10/linear.args (the probe); the notes they
# share are in recipes/cifar10/README.md.
RECIPES=recipes/cifar10
# each selected method's backbone flags, read from its recipe once (one python start for all)
declare -A BACKBONE_OF
recipe_files=()
for method in "${SELECTED[@]}"; do recipe_files+=("$RECIPES/$method.args"); done
listing=$(python scripts/recipe_backbone.py --each "${recipe_files[@]}")
while read -r method flags; do BACKBONE_OF[$method]=$flags; done <<< "$listing"

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
    echo "== $method: pretraining ($RECIPES/$method.args) =="
    read -r -a BACKBONE <<< "${BACKBONE_OF[$method]}"
    # --resume auto continues the run from its last checkpoint, or starts afresh a folder left
    # without one (a run stopped during its first epoch)
    run python main.py --config "$RECIPES/$method.args" "${BACKBONE[@]}" "${COMMON[@]}" --model_name "$method" \
        --run_name "pretrain_$method" --resume auto --knn_freq 50 --save_freq 100
    # the trained (student, online) backbone, as solo-learn's online classifier
    # (recipes/cifar10/linear.args: --momentum_backbone false; DINO's own evaluation reads the
    # teacher, main_linear's default for DINO); the ViTs' probe (linear_vit.args) reads what
    # their evaluations read: MAE's encoder, I-JEPA's target encoder
    echo "== $method: linear probe of the frozen backbone =="
    set_aside_partial "linear_$method"
    probe=$RECIPES/linear.args
    [ "${BACKBONE[1]}" = resnet18 ] || probe=$RECIPES/linear_vit.args  # MAE's probe for ViTs
    run python main_linear.py --config "$probe" "${BACKBONE[@]}" "${COMMON[@]}" \
        --model_name "$method" --run_name "linear_$method" \
        --ckpt "$OUT/ckpts/pretrain_$method/last.pt"
    if [ "${BACKBONE[1]}" != resnet18 ]; then  # MAE, I-JEPA: a ViT, judged by fine-tuning too
        for run_name in finetune_$method linear_random_$method finetune_random_$method; do
            linear_done "$run_name" && continue
            set_aside_partial "$run_name"
            case $run_name in
                finetune_random_*) start=(--random_init) ;;
                linear_random_*) start=(--random_init) ;;
                *) start=(--ckpt "$OUT/ckpts/pretrain_$method/last.pt") ;;
            esac
            recipe=$RECIPES/linear_vit.args
            [[ $run_name == finetune_* ]] && recipe=$RECIPES/finetune_vit.args
            echo "== $method: $run_name ($recipe) =="
            run python main_linear.py --config "$recipe" "${BACKBONE[@]}" "${COMMON[@]}" \
                --model_name "$method" --run_name "$run_name" "${start[@]}"
        done
    fi
done

# the ResNet-18 baseline, with the first selected method that trains it (ViTs have their own)
first_cnn=""
for method in "${SELECTED[@]}"; do
    read -r -a BACKBONE <<< "${BACKBONE_OF[$method]}"
    if [ "${BACKBONE[1]}" = resnet18 ]; then first_cnn=$method; break; fi
done
if [ "${BASELINE:-1}" = 1 ] && [ -n "$first_cnn" ]; then
    if linear_done linear_random; then
        echo "== baseline: done ($OUT/logs/linear_random/results.json), skipped =="
    else
        echo "== baseline: the same linear probe of the untrained backbone =="
        set_aside_partial linear_random
        run python main_linear.py --config "$RECIPES/linear.args" "${BACKBONE[@]}" "${COMMON[@]}" \
            --model_name "$first_cnn" --random_init --run_name linear_random
    fi
fi

echo
echo "== results (every probe under $OUT/logs, also in $OUT/results.md) =="
if [ "${DRY_RUN:-0}" = 1 ]; then
    run python scripts/make_tables.py "$OUT/logs"
else
    python scripts/make_tables.py "$OUT/logs" | tee "$OUT/results.md"
fi
