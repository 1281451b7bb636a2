#!/usr/bin/env bash
# The speed figures of one GPU in one go (not run yet; 5 configurations of 240 timed steps each):
# scripts/benchmark.py on SimCLR / ResNet-18 at 32x32, batch 512, in fp32, bf16 and fp16 with
# channels_last, compiled, and with the views drawn on the GPU (--gpu_augment), each written to
# OUT/<name>.json, then one table with a column per configuration (also into docs/speed.md's
# benchmark_gpu block with UPDATE_README=1).
# The built-in synthetic set has CIFAR's size and shape (32x32 RGB, 10,000 training images), so
# that no download is needed; DATASET="imagefolder --data_dir PATH" measures real files instead.
#
#   bash scripts/gpu_benchmarks.sh [OUT_DIR]      (default: runs/gpu_benchmarks/<timestamp>)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_benchmarks/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
# shellcheck disable=SC2206  # DATASET may hold a flag and its value
DATASET=(${DATASET:-synthetic})
COMMON=(--model_name simclr --backbone resnet18 --image_size 32 --batch_size 512 --optimizer sgd
        --device cuda --dataset_name "${DATASET[@]}" --steps 30 --warmup_steps 10 --repeats 3)
WORKERS=(--num_workers "${WORKERS:-8}")

bench() {  # NAME FLAGS...
    local name=$1
    shift
    echo "== $name: $* =="
    # a configuration that fails (say, no kornia for --gpu_augment) leaves the others' figures
    python scripts/benchmark.py "${COMMON[@]}" "$@" --output "$OUT/$name.json" | tail -n 3 ||
        echo "== $name failed: no column for it =="
}

bench fp32 "${WORKERS[@]}"
bench bf16_cl "${WORKERS[@]}" --amp bf16 --channels_last --skip_knn
bench fp16_cl "${WORKERS[@]}" --amp fp16 --channels_last --skip_knn
bench bf16_cl_gpu_augment --num_workers 2 --amp bf16 --channels_last --gpu_augment --skip_knn
# the slowest to start (a minute of compilation), so last
bench bf16_cl_compile "${WORKERS[@]}" --amp bf16 --channels_last --compile --skip_knn

echo
saved=()
for name in fp32 bf16_cl fp16_cl bf16_cl_compile bf16_cl_gpu_augment; do
    [ -f "$OUT/$name.json" ] && saved+=("$OUT/$name.json")
done
python scripts/benchmark.py --from_json "${saved[@]}" \
    ${UPDATE_README:+--readme docs/speed.md --block benchmark_gpu}

# every method, ResNet-18 and ViT-Tiny at 32 px, bf16, batch 256 (METHODS=0 skips it)
if [ "${METHODS:-1}" = 1 ]; then
    python scripts/benchmark_methods.py "$OUT/methods" --device cuda --batch_size 256 \
        --amp bf16 --steps 20 --warmup_steps 5 --data_batches 20 --num_workers "${WORKERS:-8}"
fi
