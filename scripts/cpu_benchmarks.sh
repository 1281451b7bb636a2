#!/usr/bin/env bash
# The CPU speed figures of docs/speed.md in one go, on real CIFAR-10 JPEGs (DATA=path/to/cifar10,
# required: an ImageFolder copy with train/ and test/) and idle cores (say in your note how loaded
# they were):
#   1. scripts/benchmark.py on SimCLR / ResNet-18 at 32 px, batch 64, 2 loader workers, in fp32,
#      --amp bf16, --channels_last and both (is bf16 faster on cores with AVX-512 BF16?), into
#      OUT/<name>.json and the `benchmark` block of docs/speed.md (UPDATE_README=1);
#   2. scripts/benchmark.py --whole_process: main.py against a bare loop as whole processes, beside the
#      in-process ratio of benchmark.py, into OUT/whole_process.json;
#   3. scripts/benchmark_methods.py: every method on ResNet-18 and ViT-Tiny at 32 px, batch 64,
#      into OUT/methods/ and the `speed_methods` block of docs/speed.md (UPDATE_README=1).
#
#   DATA=path/to/cifar10 bash scripts/cpu_benchmarks.sh [OUT_DIR]    (default: results/speed_cpu)
#   PARTS="1 3" ...                             some of the three
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/speed_cpu}
DATA=${DATA:-}
[ -n "$DATA" ] && [ -d "$DATA/train" ] ||
    { echo "error: set DATA=path/to/cifar10, a CIFAR-10 ImageFolder with train/ and test/ (DATA='$DATA')" >&2; exit 2; }
read -r -a PARTS <<< "${PARTS:-1 2 3}"
mkdir -p "$OUT"
README=(${UPDATE_README:+--readme docs/speed.md})
COMMON=(--model_name simclr --backbone resnet18 --image_size 32 --batch_size 64 --optimizer sgd
        --dataset_name imagefolder --data_dir "$DATA" --limit 10000 --num_workers 2 --device cpu
        --steps 10 --warmup_steps 3 --repeats 3 --data_batches 10)

for part in "${PARTS[@]}"; do
    case $part in
        1)
            python scripts/benchmark.py "${COMMON[@]}" --output "$OUT/fp32.json" > /dev/null
            for name in bf16 channels_last bf16_channels_last; do
                flags=()
                [[ $name == bf16* ]] && flags+=(--amp bf16)
                [[ $name == *channels_last ]] && flags+=(--channels_last)
                python scripts/benchmark.py "${COMMON[@]}" "${flags[@]}" --skip_knn \
                    --output "$OUT/$name.json" > /dev/null
            done
            python scripts/benchmark.py --from_json "$OUT"/{fp32,bf16,channels_last,bf16_channels_last}.json \
                "${README[@]}"
            ;;
        2)
            python scripts/benchmark.py --whole_process --dataset_name imagefolder \
                --data_dir "$DATA" --batch_size 64 --num_workers 2 --output "$OUT/whole_process.json"
            ;;
        3)
            python scripts/benchmark_methods.py "$OUT/methods" "${README[@]}"
            ;;
    esac
done
