#!/usr/bin/env bash
# Every method on the real CIFAR-10 at a budget 2 CPU cores can afford: pretraining of `small_cnn`
# at 32x32 on a class-balanced 10,000-image subset of the training set (Adam, batch 256, 6 epochs
# and 30 for BYOL, SwAV and DINO, which start slowly: their `slow_start` (methods/__init__.py);
# the method's own augmentation recipe, kNN with k=200 on the 10,000 test images at epoch 0 and
# every 2 epochs, the subset as memory bank), then a linear probe of the frozen backbone on
# features of all 50,000 training images computed once (`--precompute_features`, SGD with
# `--probe_bn`, 30 epochs), beside the same probe of the untrained backbone. Each row is run
# with the seeds 123, 124 and 125 (SEEDS=...), every method of a seed from the same random
# initialisation; the table gives mean ± standard deviation.
# The full recipes for a GPU box are in scripts/cifar10_reference.sh.
#
#   DATA=path/to/cifar10 bash scripts/cifar10_cpu.sh [OUT_DIR [METHOD...]]
#                                  (default OUT_DIR: runs/cifar10_cpu/<timestamp>; finished rows
#                                  of an OUT_DIR are kept)
#   docs/results/cifar10_cpu.md and the README's summary come from results/cifar10_cpu, where git
#   keeps the small result files and ignores checkpoints and plots: `python
#   scripts/results_pages.py` after a run into it.
#   DATA=path/to/cifar10           required: a CIFAR-10 ImageFolder copy with train/ and test/
#   JOBS=2 ...                     two rows at a time, one thread each
#   SEEDS="123" ...                one seed only
#   LIMIT=512 EPOCHS=1 ...         a smoke test of the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cifar10_cpu/$(date +%Y%m%d-%H%M%S)}
shift || true
METHODS=("$@")
DATA=${DATA:-}
[ -n "$DATA" ] && [ -d "$DATA/train" ] ||
    { echo "error: set DATA=path/to/cifar10, a CIFAR-10 ImageFolder with train/ and test/ (DATA='$DATA')" >&2; exit 2; }

source scripts/short_recipes.sh
[ ${#METHODS[@]} -eq 0 ] && METHODS=("${ALL_METHODS[@]}")
# the training flags: recipes/short/cifar10.args, then the method's recipe file; the images are
# decoded once and held in memory (--in_memory) and the views drawn in the training process (as
# fast on 2 cores as 2 loader workers, and leaves the second core to a second row with JOBS=2)
SHARED=recipes/short/cifar10.args
LINEAR_SHARED=recipes/short/cifar10_linear.args
COMMON=(--data_dir "$DATA" --device cpu --num_workers 0 --logs_dir "$OUT" --ckpt_dir "$OUT/ckpts")
PRETRAIN=(--limit "${LIMIT:-10000}")
EPOCHS=${EPOCHS:-6}  # BYOL, SwAV, DINO: 5x (their `slow_start`, methods/__init__.py)

run_rows

echo
python scripts/methods_table.py "$OUT"
