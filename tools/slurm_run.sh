# Sourced by tools/slurm_train.sh and tools/slurm_test.sh: srun with one task per GPU.
#   slurm_run PARTITION JOB_NAME SCRIPT [SCRIPT arguments...]
# Environment: GPUS (tasks in all, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS
# (more srun options), PORT (the rendezvous port, as MASTER_PORT; default 29500).
slurm_run() {
    local partition=$1 job_name=$2 script=$3
    shift 3
    local gpus=${GPUS:-8} per_node=${GPUS_PER_NODE:-8} cpus=${CPUS_PER_TASK:-5}
    local setting
    for setting in "GPUS=$gpus" "GPUS_PER_NODE=$per_node" "CPUS_PER_TASK=$cpus"; do
        if ! [[ "${setting#*=}" =~ ^[1-9][0-9]*$ ]]; then
            echo "$0: $setting is not valid; expected a number >= 1" >&2
            exit 2
        fi
    done
    # Fewer tasks than a node has GPUs: ask for the GPUs that are used, not a whole node's.
    if [ "$gpus" -lt "$per_node" ]; then
        per_node=$gpus
    fi
    # Words, as the shell splits them, but no glob expansion (--exclude=node[1-3]).
    local srun_args=()
    read -r -a srun_args <<< "${SRUN_ARGS:-}"
    # mmengine's Slurm setup reads MASTER_PORT; PORT names it, as for tools/dist_train.sh.
    if [ -n "${PORT:-}" ]; then
        export MASTER_PORT=$PORT
    fi
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    # ${a[@]+"${a[@]}"}: an empty array under set -u is an error in bash <= 4.3.
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" srun -p "$partition" --job-name="$job_name" \
        --gres=gpu:"$per_node" --ntasks="$gpus" --ntasks-per-node="$per_node" \
        --cpus-per-task="$cpus" --kill-on-bad-exit=1 ${srun_args[@]+"${srun_args[@]}"} \
        python -u "$root/tools/$script" "$@"
}
