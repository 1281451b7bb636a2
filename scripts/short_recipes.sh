# shellcheck shell=bash
# Per-method flags of the short CPU runs (scripts/methods.sh, scripts/cifar10_cpu.sh), sourced by
# both, and the loop they share (run_rows). They shorten the papers' recipes so that a CPU shows
# learning in minutes; each is listed in the generated table. SimSiam uses its paper's optimizer
# (SGD with weight decay; its fixed predictor lr is the method's default), with which it does not
# fall below its initialisation in short runs, unlike with Adam. DINO uses the official head
# option for BatchNorm backbones (--use_bn_in_head: small_cnn's ReLU features share a large common
# component, which a head without BatchNorm carries into the bottleneck, so the teacher's output
# is uniform and stays so) and the official constant teacher temperature, 0.04 (with 2 warmup
# epochs to 0.07 its loss sat at ln K). SwAV uses SimCLR's CIFAR colour strength 0.5: with the
# official 1.0 its loss stays at ln K (uniform codes) on the 16 px synthetic images for 16
# epochs, and its kNN accuracy below the initialisation's (12.3 against 13.35; 0.5: 13.95).
declare -A FLAGS=(
    [simclr]="--temperature 0.2"
    [supcon]=""
    [simsiam]="--optimizer sgd --base_lr 0.1 --weight_decay 5e-4"
    [byol]="--ema_momentum 0.99 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [swav]="--num_prototypes 100 --num_crops 2 --jitter_strength 0.5"
    [barlowtwins]="--proj_hidden_dim 512 --proj_dim 512"
    [vicreg]="--proj_hidden_dim 512 --proj_dim 512"
    [mocov2]="--queue_size 4096 --ema_momentum 0.99"
    [mocov3]="--temperature 0.2 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [nnclr]="--queue_size 4096 --proj_hidden_dim 512 --pred_hidden_dim 512"
    [dino]="--out_dim 1024 --num_crops 2 --proj_hidden_dim 512 --ema_momentum 0.99 --use_bn_in_head"
)
ALL_METHODS=(simclr supcon simsiam byol swav barlowtwins vicreg mocov2 mocov3 nnclr dino)
# Methods without negatives or an explicit variance term start slowly: on the synthetic set their
# kNN accuracy first falls below the random initialisation's, and in an 8-epoch schedule they
# end below it (measured 2026-12-02 before the fidelity changes, README). Their pretraining runs
# this many times the script's EPOCHS.
declare -A EPOCH_FACTOR=([byol]=5 [swav]=5 [dino]=5)
# Each row is repeated with these seeds (the initial weights, the views and the data order
# change with it); the tables give the mean and spread. JOBS rows run side by side, one thread
# each (2 single-thread runs do ~1.7x the work of one 2-thread run on 2 cores).
read -r -a SEEDS <<< "${SEEDS:-123 124 125}"
JOBS=${JOBS:-1}

# One row: pretrain METHOD with SEED (COMMON, PRETRAIN, EPOCHS x its EPOCH_FACTOR, its FLAGS),
# then a linear probe (COMMON, LINEAR) of its last checkpoint; a row whose probe result exists
# is skipped, so an interrupted script continues where it stopped.
run_row() {
    local method=$1 seed=$2 name="${1}_s${2}"
    [ -e "$OUT/linear_$name/results.json" ] && return 0
    rm -rf "$OUT/pretrain_$name" "$OUT/ckpts/pretrain_$name" "$OUT/linear_$name" \
        "$OUT/ckpts/linear_$name"  # a row stopped half-way starts again
    # shellcheck disable=SC2086  # FLAGS holds several words on purpose
    python main.py "${COMMON[@]}" "${PRETRAIN[@]}" --model_name "$method" --seed "$seed" \
        --num_epochs $((EPOCHS * ${EPOCH_FACTOR[$method]:-1})) --run_name "pretrain_$name" \
        ${FLAGS[$method]} > "$OUT/log_$name.txt" 2>&1
    python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --model_name "$method" --seed "$seed" \
        --run_name "linear_$name" --ckpt "$OUT/ckpts/pretrain_$name/last.pt" \
        >> "$OUT/log_$name.txt" 2>&1
    local knn
    knn=$(grep -aoE 'knn_acc1 [0-9.]+' "$OUT/log_$name.txt" | tail -n 1)
    echo "== $method seed $seed: $knn, linear $(tail -n 1 "$OUT/log_$name.txt")"
}

# The probe of the untrained backbone of each seed: the baseline beside every row.
run_baseline() {
    local seed=$1
    [ -e "$OUT/linear_random_s$seed/results.json" ] && return 0
    rm -rf "$OUT/linear_random_s$seed" "$OUT/ckpts/linear_random_s$seed"
    python main_linear.py "${COMMON[@]}" "${LINEAR[@]}" --model_name simclr --random_init \
        --seed "$seed" --run_name "linear_random_s$seed" > "$OUT/log_random_s$seed.txt" 2>&1
    echo "== baseline seed $seed: $(tail -n 1 "$OUT/log_random_s$seed.txt")"
}

# Every row of METHODS x SEEDS and the baselines, JOBS at a time; then append this script's
# seconds to OUT/wall_seconds.txt (the tables sum them).
run_rows() {
    local method seed
    mkdir -p "$OUT"
    [ "$JOBS" -gt 1 ] && export OMP_NUM_THREADS=1
    for seed in "${SEEDS[@]}"; do
        run_baseline "$seed" &
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || echo "a row failed"; done
        for method in "${METHODS[@]}"; do
            run_row "$method" "$seed" &
            while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || echo "a row failed"; done
        done
    done
    wait
    echo "$SECONDS ${METHODS[*]} seeds ${SEEDS[*]}" >> "$OUT/wall_seconds.txt"
}
