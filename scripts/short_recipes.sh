# shellcheck shell=bash
# The loop of the short CPU runs (scripts/methods.sh, scripts/cifar10_cpu.sh), sourced by both.
# Their flags are recipe files: recipes/short/<method>.args per method (why some depart from their
# paper: recipes/short/README.md) after the script's shared one (SHARED, LINEAR_SHARED).
# every registered method (methods/__init__.py): a new one needs no line here
read -r -a ALL_METHODS <<< "$(python -c 'from methods import METHODS; print(*METHODS)')"
# the methods that train a Vision Transformer (MAE, I-JEPA): their recipes name their own backbone,
# so each gets a probe of its own untrained backbone (as it initialises it) beside the shared one
read -r -a VIT_METHODS <<< "$(python -c \
    'from methods import METHODS; print(*[m for m, c in METHODS.items() if c.requires_vit])')"
# A method that starts slowly pretrains this many times the script's EPOCHS: its `slow_start`
# (methods/__init__.py; the epochs are the script's, not a recipe file's)
declare -A EPOCH_FACTOR
while read -r name factor; do EPOCH_FACTOR[$name]=$factor; done < <(python -c \
    'from methods import METHODS; [print(m, c.slow_start) for m, c in METHODS.items()]')
# Each row is repeated with these seeds (the initial weights, the views and the data order
# change with it); the tables give the mean and spread. JOBS rows run side by side, one thread
# each (2 single-thread runs do ~1.7x the work of one 2-thread run on 2 cores).
read -r -a SEEDS <<< "${SEEDS:-123 124 125}"
JOBS=${JOBS:-1}

# One row: pretrain METHOD with SEED (the SHARED recipe, then the method's, then COMMON, PRETRAIN
# and EPOCHS x its EPOCH_FACTOR), then a linear probe (LINEAR_SHARED, COMMON) of its last checkpoint; a row
# whose probe result exists is skipped, and a finished pretraining is kept, so an interrupted
# script continues where it stopped.
run_row() {
    local method=$1 seed=$2 name="${1}_s${2}"
    [ -e "$OUT/linear_$name/results.json" ] && return 0
    rm -rf "$OUT/linear_$name" "$OUT/ckpts/linear_$name"  # a probe stopped half-way starts again
    # a finished pretraining (its summary.json is written last) is kept; a stopped one starts again
    if [ ! -e "$OUT/pretrain_$name/summary.json" ] || [ ! -e "$OUT/ckpts/pretrain_$name/last.pt" ]; then
        rm -rf "$OUT/pretrain_$name" "$OUT/ckpts/pretrain_$name"
        python main.py --config "$SHARED" --config "recipes/short/$method.args" "${COMMON[@]}" \
            "${PRETRAIN[@]}" --model_name "$method" --seed "$seed" --run_name "pretrain_$name" \
            --num_epochs $((EPOCHS * ${EPOCH_FACTOR[$method]:-1})) > "$OUT/log_$name.txt" 2>&1
    fi
    local backbone
    read -r -a backbone <<< "$(python scripts/recipe_backbone.py "$SHARED" "recipes/short/$method.args")"
    python main_linear.py --config "$LINEAR_SHARED" "${COMMON[@]}" "${backbone[@]}" \
        --model_name "$method" --seed "$seed" --run_name "linear_$name" \
        --ckpt "$OUT/ckpts/pretrain_$name/last.pt" >> "$OUT/log_$name.txt" 2>&1
    local knn
    knn=$(grep -aoE 'knn_acc1 [0-9.]+' "$OUT/log_$name.txt" | tail -n 1)
    echo "== $method seed $seed: $knn, linear $(tail -n 1 "$OUT/log_$name.txt")"
}

# A ViT method's own baseline: the probe of its untrained backbone, initialised as it does.
run_vit_baseline() {
    local method=$1 seed=$2 name="random_${1}_s${2}"
    [ -e "$OUT/linear_$name/results.json" ] && return 0
    rm -rf "$OUT/linear_$name" "$OUT/ckpts/linear_$name"
    local backbone
    read -r -a backbone <<< "$(python scripts/recipe_backbone.py --init "$method" "$SHARED" \
        "recipes/short/$method.args")"  # the backbone and how the method initialises it
    python main_linear.py --config "$LINEAR_SHARED" "${COMMON[@]}" "${backbone[@]}" \
        --model_name "$method" --random_init --seed "$seed" --run_name "linear_$name" \
        > "$OUT/log_$name.txt" 2>&1
    echo "== $method's untrained backbone, seed $seed: $(tail -n 1 "$OUT/log_$name.txt")"
}

# The probe of the untrained backbone of each seed: the baseline beside every row, with bilinear
# resizes as it was measured (methods evaluated bicubically, SimCLR's, differ by the resize too:
# scripts/interpolation_check.sh measures the same probe with bicubic ones).
run_baseline() {
    local seed=$1
    [ -e "$OUT/linear_random_s$seed/results.json" ] && return 0
    rm -rf "$OUT/linear_random_s$seed" "$OUT/ckpts/linear_random_s$seed"
    python main_linear.py --config "$LINEAR_SHARED" "${COMMON[@]}" --model_name simclr --random_init \
        --eval_interpolation bilinear --seed "$seed" --run_name "linear_random_s$seed" \
        > "$OUT/log_random_s$seed.txt" 2>&1
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
            if [[ " ${VIT_METHODS[*]} " == *" $method "* ]]; then
                run_vit_baseline "$method" "$seed" &
                while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || echo "a row failed"; done
            fi
        done
    done
    wait
    echo "$SECONDS ${METHODS[*]} seeds ${SEEDS[*]}" >> "$OUT/wall_seconds.txt"
}
