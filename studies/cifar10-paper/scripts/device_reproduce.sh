#!/bin/bash
# One call on a lent GPU machine: continue reproduce_cifar10.py (beside this script) for at most DEADLINE_S
# seconds, then pack the run folder (checkpoints, resume files, logs, tables) into $OUT, so the
# next call, or a CPU session, continues exactly where this one stopped (train --resume).
#
# The machine is bare and sees only the working tree: carry the packed data, the wheels it lacks
# (pydantic and its needs; see the device README) and the run folder so far, e.g.
#   carry: [".gpu", ".whl", "runs/c10p"]
#   command: DEADLINE_S=500 bash studies/cifar10-paper/scripts/device_reproduce.sh --out runs/c10p \
#            --data npz:.gpu/cifar10-train-jpeg.npz --profile chen2015 --only dense,pruned,baselines ...
# and unpack what comes back here with: cat FILES_AT/runs.tgz.* | tar -xzf - -C runs
# It runs from the repository root wherever it is started: its arguments' paths (--out, --data,
# --reuse) and .whl/ are taken from there, as in the recorded commands.
set -u
cd "$(dirname -- "$0")/../../.." || exit 1
if ! python3 -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
# The checkout's own ftdeploy: the bare machine has not installed it, and the script and the
# `python -m ftdeploy` steps it starts run from the repository root.
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
out_dir=""
args=("$@")
for i in "${!args[@]}"; do
    [[ "${args[$i]}" == "--out" ]] && out_dir="${args[$((i + 1))]}"
done
[[ -n "$out_dir" ]] || { echo "device_reproduce.sh: give --out RUN_FOLDER" >&2; exit 2; }
dest="${OUT:-/tmp/device-out}"
mkdir -p "$dest"

# Its own process group, so the deadline stops exactly this run's steps (sweeps, trainings) and
# nothing else on the machine. Each training saved its last finished epoch (model.pt and
# resume.pt, written atomically): at most the epoch in flight is lost.
setsid python3 studies/cifar10-paper/scripts/reproduce_cifar10.py "$@" > "$dest/device-run.log" 2>&1 &
group=$!
(
    trap 'kill $sleeper 2>/dev/null; exit 0' TERM
    sleep "${DEADLINE_S:-480}" & sleeper=$!; wait $sleeper
    # TERM to the script alone: it stops its steps (each at its last saved epoch), records them
    # and renders; a background job ignores SIGINT, so TERM it is. KILL the group if that hangs.
    kill -TERM "$group" 2>/dev/null; sleep 30 & sleeper=$!; wait $sleeper
    kill -KILL -- "-$group" 2>/dev/null
) &
watchdog=$!
wait "$group"
echo "reproduce_cifar10.py exit $?" >> "$dest/device-run.log"
kill "$watchdog" 2>/dev/null
cat "$dest/device-run.log"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv >> "$dest/device-run.log" 2>/dev/null
# At most 8 files of 16 MiB come back: the run folder as 15 MiB parts.
tar -czf - -C "$(dirname "$out_dir")" "$(basename "$out_dir")" | split -b 15M - "$dest/runs.tgz."
ls -la "$dest"
