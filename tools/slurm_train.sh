#!/usr/bin/env bash
# Training on a Slurm cluster (srun starts one task per GPU; mmengine reads the Slurm variables).
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options...]
# Environment: GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS, PORT.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
WORK_DIR_ARGS=()
# A WORK_DIR is the first argument after CONFIG that is not an option (-h, --amp, ...).
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    WORK_DIR_ARGS=(--work-dir "$1")
    shift
fi
# shellcheck source=tools/slurm_run.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_run.sh"
slurm_run "$PARTITION" "$JOB_NAME" train.py "$CONFIG" \
    ${WORK_DIR_ARGS[@]+"${WORK_DIR_ARGS[@]}"} --launcher slurm "$@"
