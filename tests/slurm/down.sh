#!/usr/bin/env bash
# Stops the daemons tests/slurm/up.sh started, by the PIDs it recorded, and nothing else: jobs
# still running are cancelled first. The state folder stays (its logs); up.sh reuses it.
set -uo pipefail
DIR=${LRA_SLURM_DIR:-/tmp/lra-slurm}
[[ -f $DIR/pids ]] || { echo "slurm-down: no cluster recorded in $DIR/pids" >&2; exit 0; }
export SLURM_CONF=$DIR/slurm.conf
scancel --full --user="$(id -un)" 2>/dev/null || true

pids=()
# the reverse order of the start: slurmd, slurmctld, slurmdbd, MariaDB, munged
while read -r name pid; do pids=("$pid" "${pids[@]}"); done <"$DIR/pids"
for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
left=()
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
rm -f "$DIR/pids"
if ((${#left[@]})); then
    echo "slurm-down: still running: ${left[*]}" >&2
    exit 1
fi
echo "slurm-down: stopped ${#pids[@]} daemons" >&2
