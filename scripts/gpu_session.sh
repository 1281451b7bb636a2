#!/usr/bin/env bash
# Everything a short GPU loan should measure, in one command of about 9 minutes on an H100/H200
# class GPU: the speed table (scripts/gpu_benchmarks.sh: fp32, bf16/fp16 with channels_last,
# --gpu_augment, --compile), a SimCLR CIFAR-10 convergence run with the reference recipe
# (scripts/gpu_convergence.sh, as many epochs as about 160 s allow at the measured rate), then the
# per-method speed table in whatever time is left. Each stage is time-boxed, and everything lands
# in OUT_DIR/results.tgz after each stage, so that a stage that fails or runs out of time costs
# only itself. Figures go into docs/speed.md from those files (scripts/benchmark.py --from_json,
# scripts/benchmark_methods.py --table_only), never by hand.
#
# Prepare on a machine with internet or a package index, in the repository root (both folders
# are git-ignored through .git/info/exclude, and travel with the device call's carry):
#   mkdir -p .gpu && tar czf .gpu/c10.tgz -C path/to cifar10/train cifar10/test  (20 MB: the
#       CIFAR-10 ImageFolder copy at path/to/cifar10, for the convergence run)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl kornia==0.9.0 kornia_rs==0.2.0
# (the GPU machine's own Python has torch and timm but no kornia; match its Python version).
#
#   OUT_DIR=$OUT bash scripts/gpu_session.sh      (default OUT_DIR: runs/gpu_session)
#   DATA=path/to/cifar10 ...                      the CIFAR-10 ImageFolder where .gpu/c10.tgz is
#                                                 absent (one of the two is required)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT_DIR:-runs/gpu_session}
BUDGET=${BUDGET:-545}  # seconds for the three stages together
SPEED_S=${SPEED_S:-220}  # at most for the speed table
CONV_S=${CONV_S:-290}  # at most for the convergence run
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }
R=$(mktemp -d)/res
mkdir -p "$R" "$OUT"
pack() { tar czf "$OUT/results.tgz" -C "$(dirname "$R")" res; }

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
if ! command -v python >/dev/null; then  # the scripts call python
    mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python && export PATH=/tmp/bin:$PATH
fi
DATA=${DATA:-}
if [ -f .gpu/c10.tgz ]; then
    tar xzf .gpu/c10.tgz -C /tmp && DATA=/tmp/cifar10
fi
if [ -z "$DATA" ] || [ ! -d "$DATA/train" ]; then
    echo "error: no .gpu/c10.tgz: set DATA=path/to/cifar10, a CIFAR-10 ImageFolder with train/ and test/ (DATA='$DATA')" >&2
    exit 2
fi
{
    nvidia-smi
    echo "cpus: $(nproc)"
    python -c "import torch, torchvision; print('torch', torch.__version__, torchvision.__version__)"
    python -c "import kornia; print('kornia', kornia.__version__)"
} > "$R/env.txt" 2>&1
cat "$R/env.txt"

echo "== [$(elapsed) s] speed =="
METHODS=0 WORKERS=8 timeout "$SPEED_S" bash scripts/gpu_benchmarks.sh "$R/bench" 2>&1 | tee "$R/bench.log"
pack

# about 160 s of training at 0.6 x the batch-512 rate (batch 256, LARC, probe), leaving ~100 s
# of the stage for start-up and the kNN passes: 5-60 epochs
rate=$(python -c "import json; print(json.load(open('$R/bench/bf16_cl_gpu_augment.json'))['with_data_images_per_s'])" 2>/dev/null || echo 5000)
EPOCHS=${EPOCHS:-$(python -c "print(max(5, min(60, int(0.6 * 160 * $rate / 50000))))")}
echo "== [$(elapsed) s] convergence: $EPOCHS epochs (fed rate $rate images/s) =="
DATA=$DATA EPOCHS=$EPOCHS timeout "$CONV_S" bash scripts/gpu_convergence.sh "$R/conv" 2>&1 |
    tee "$R/conv.log" | tr '\r' '\n' | grep -v 'it/s'
rm -rf "$R/conv/ckpts"  # 45 MB a checkpoint: the logs are what comes back
pack

left=$((BUDGET - $(elapsed)))
echo "== [$(elapsed) s] per-method speed: $left s =="
if [ "$left" -gt 40 ]; then
    timeout "$left" python scripts/benchmark_methods.py "$R/bench/methods" --device cuda \
        --batch_size 256 --amp bf16 --steps 20 --warmup_steps 5 --data_batches 20 \
        --num_workers 8 2>&1 | tee "$R/methods.log" | tail -40
fi
pack
echo "== [$(elapsed) s] done: $OUT/results.tgz =="
