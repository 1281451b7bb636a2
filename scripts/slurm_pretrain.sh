#!/usr/bin/env bash
# Multi-node pretraining under Slurm: one torchrun per node, each starting one process per GPU;
# the nodes meet at the first node of the allocation (c10d rendezvous). Submit with
#
#   sbatch scripts/slurm_pretrain.sh --model_name=simclr --backbone=resnet50 --batch_size=4096 ...
#
# --batch_size is the global batch, split across all GPUs of all nodes. Every flag given to
# sbatch after the script name goes to main.py. Adjust the #SBATCH lines to your cluster.
#SBATCH --job-name=ssl-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
# --signal: SIGTERM five minutes before the time limit; main.py then saves a resumable last.pt and
# exits; resubmit with --resume auto (and the same --run_name) to continue.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="${SLURM_GPUS_PER_NODE:-8}" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$head_node:29500" \
    main.py --num_workers 8 "$@"
