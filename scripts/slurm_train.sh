#!/bin/bash
# Multi-node DDP training of fmb under SLURM.
#
# One SLURM task per GPU: srun starts every rank itself and Lightning reads the ranks,
# the master address and port from SLURM's environment, so it starts no processes of its
# own. Every rank picks the same run directory, runs/<name>/slurm-<job id>-<step id>
# (set run.dir=... to choose it); rank 0 alone writes config, checkpoints and summary.
#
#   sbatch scripts/slurm_train.sh                                  # 2 nodes x 4 GPUs
#   sbatch --nodes=4 scripts/slurm_train.sh -c configs/experiment/digits_v2s.yaml data.batch_size=128
#   fmb train --resume runs/<name>/slurm-<job id>-0 trainer.max_epochs=...   # continue it later
#
# Extra arguments go to `fmb train` unchanged. data.batch_size is per GPU: the global batch
# is nodes x GPUs per node x data.batch_size (x trainer.accumulate_grad_batches).
#
#SBATCH --job-name=fmb-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4        # one task per GPU: must equal --gpus-per-node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8          # loader workers per rank come from here
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

GPUS_PER_NODE=${SLURM_NTASKS_PER_NODE%%(*}   # "4" (or "4(x2)" on some clusters)
NODES=${SLURM_JOB_NUM_NODES}
WORKERS=$(( ${SLURM_CPUS_PER_TASK:-4} > 1 ? ${SLURM_CPUS_PER_TASK:-4} - 1 : 1 ))

echo "fmb: ${NODES} node(s) x ${GPUS_PER_NODE} GPU(s), job ${SLURM_JOB_ID}"
# --kill-on-bad-exit: one failed rank ends the step instead of leaving the others waiting.
srun --kill-on-bad-exit=1 .venv/bin/fmb train \
    trainer.accelerator=gpu \
    trainer.devices="${GPUS_PER_NODE}" \
    trainer.num_nodes="${NODES}" \
    trainer.strategy=ddp \
    data.num_workers="${WORKERS}" \
    "$@"
