# shellcheck shell=bash
# Per-method flags of the short CPU runs (scripts/methods.sh, scripts/cifar10_cpu.sh), sourced by
# both, and the loop they share (run_rows). They shorten the papers' recipes so that a CPU shows
# learning in minutes; each is listed in the generated table. SimSiam uses its paper's optimizer
# (SGD with weight decay) and its fixed predictor lr (--fix_pred_lr), with which it does not fall
# below its initialisation in short runs, unlike with Adam. DINO uses the official head option
# for BatchNorm backbones (--use_bn_in_head: small_cnn's ReLU features share a large common
# component, which a head without BatchNorm carries into the bottleneck, so the teacher's output
# is uniform and stays so) and keeps the teacher temperature at its paper's starting value, 0.04
# (with 2 warmup epochs to 0.07 its loss sat at ln K).
declare -A FLAGS=(
    [simclr]="--temperature 0.2"
    [supcon]=""
    [simsiam]="--optimizer sgd --base_lr 0.1 --weight_decay 5e-4 --fix_pred_lr"
    [byol]="--ema_momentum 0.99 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [swav]="--num_prototypes 100 --num_crops 2"
    [barlowtwins]="--proj_hidden_dim 512 --proj_dim 512"
    [vicreg]="--proj_hidden_dim 512 --proj_dim 512"
    [mocov2]="--queue_size 4096 --ema_momentum 0.99 --proj_hidden_dim 512"
    [mocov3]="--proj_hidden_dim 512 --pred_hidden_dim 512"
    [nnclr]="--queue_size 4096 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [dino]="--num_prototypes 1024 --num_crops 2 --proj_hidden_dim 512 --ema_momentum 0.99 --use_bn_in_head --teacher_temp 0.04 --warmup_teacher_temp 0.04"
)
ALL_METHODS=(simclr supcon simsiam byol swav barlowtwins vicreg mocov2 mocov3 nnclr dino)
# Methods without negatives or an explicit variance term start slowly: on the synthetic set their
# kNN accuracy first falls below the random initialisation's and, in a 40-epoch schedule, passes
# it at step 434 (BYOL), 186 (SwAV) and 682 (DINO), ending at 17.70, 30.35 and 14.40 against 13.35
# (measured 2026-12-02, README). Their pretraining runs this many times the script's EPOCHS.
declare -A EPOCH_FACTOR=([byol]=5 [swav]=5 [dino]=5)

# For each of METHODS: pretrain (COMMON, PRETRAIN, EPOCHS x its EPOCH_FACTOR, then its FLAGS),
# then a linear probe (COMMON, LINEAR) of its last checkpoint; then, once per OUT, the same probe
# of the untrained backbone; then append this script's seconds to OUT/wall_seconds.txt (the
# tables sum them).
run_rows() {
    local method
    for method in "${METHODS[@]}"; do
        echo "== $method: pretraining (${FLAGS[$method]:-paper defaults}) =="
        # shellcheck disable=SC2086  # FLAGS holds several words on purpose
        python main.py "${COMMON[@]}" "${PRETRAIN[@]}" --model_name "$method" \
            --num_epochs $((EPOCHS * ${EPOCH_FACTOR[$method]:-1})) --run_name "pretrain_$method" \
            ${FLAGS[$method]} | grep -E "^(epoch [0-9]+|done)"
        echo "== $method: linear probe =="
        python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --model_name "$method" \
            --run_name "linear_$method" --ckpt "$OUT/ckpts/pretrain_$method/last.pt" | tail -n 1
    done
    if [ ! -e "$OUT/linear_random/results.json" ]; then
        echo "== baseline: linear probe of the untrained backbone =="
        python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --model_name simclr --random_init \
            --run_name linear_random | tail -n 1
    fi
    echo "$SECONDS ${METHODS[*]}" >> "$OUT/wall_seconds.txt"
}
