#!/usr/bin/env bash
# Every method on the built-in synthetic set (no download): a short pretraining of `small_cnn` at
# 16x16 on 4,000 images (Adam, batch 128, 8 epochs and 40 for the slow starters BYOL, SwAV and
# DINO: their `slow_start` (methods/__init__.py), read by scripts/short_recipes.sh; kNN on the test set at epoch 0 and every 2
# epochs), then a linear probe of the frozen backbone; plus the same probe of the untrained
# backbone, the baseline. Each row is run with the seeds 123, 124 and 125 (SEEDS=...), every
# method of a seed from the same random initialisation; the table gives mean ± standard
# deviation. The flags are recipe files (recipes/short/): they shorten the papers' recipes so that
# a CPU shows learning in minutes.
#
#   bash scripts/methods.sh [OUT_DIR [METHOD...]]   (default: runs/methods/<timestamp>, all methods;
#                                                    an existing OUT_DIR gets the METHODs added,
#                                                    finished rows are kept)
#   docs/results/synthetic.md and the README's summary come from results/methods, where git keeps
#   the small result files (args.json, metrics.csv, summary.json, results.json) and ignores
#   checkpoints and plots: `python scripts/results_pages.py` after a run into it.
#   JOBS=2 ...                     two rows at a time, one thread each (faster on 2 cores)
#   SEEDS="123" ...                one seed only
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/methods/$(date +%Y%m%d-%H%M%S)}
shift || true
METHODS=("$@")

source scripts/short_recipes.sh
[ ${#METHODS[@]} -eq 0 ] && METHODS=("${ALL_METHODS[@]}")
# the training flags: recipes/short/synthetic.args, then the method's recipe file
SHARED=recipes/short/synthetic.args
LINEAR_SHARED=recipes/short/synthetic_linear.args
COMMON=(--device cpu --num_workers 0 --logs_dir "$OUT" --ckpt_dir "$OUT/ckpts")
PRETRAIN=()
EPOCHS=${EPOCHS:-8}  # BYOL, SwAV, DINO: 5x (their `slow_start`, methods/__init__.py)

run_rows

echo
python scripts/methods_table.py "$OUT"
