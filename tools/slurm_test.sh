#!/usr/bin/env bash
# Testing on a Slurm cluster (one task per GPU).
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options...]
# Environment: GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS, PORT.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
# shellcheck source=tools/slurm_run.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_run.sh"
slurm_run "$PARTITION" "$JOB_NAME" test.py "$CONFIG" "$CHECKPOINT" --launcher slurm "$@"
