#!/usr/bin/env bash
# A real SLURM cluster on this machine (scripts/slurm/cluster.sh): the default grid submitted
# by `qsweep submit` as a 4-task job array plus a dependent merge job must give results
# identical to a single-process run. Exits 77 (ctest: skipped) where it cannot run as root.
#   tests/slurm/slurm_test.sh QSWEEP_BINARY SOURCE_DIR
set -euo pipefail
qsweep=$1
src=$2
fixture="$src/scripts/slurm/cluster.sh"
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: the SLURM test starts slurmctld/slurmd/munged and needs root"
  exit 77
fi
if ! bash "$fixture" check; then
  echo "SKIPPED: the SLURM fixture cannot run here (see the line above)"
  exit 77
fi
dir=$(mktemp -d /tmp/qs-slurm.XXXXXX)  # short: munge's socket path must fit in 107 bytes
cleanup() {
  bash "$fixture" down "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
bash "$fixture" up "$dir"
# shellcheck disable=SC1091
source "$dir/env.sh"

echo "== qsweep submit (4-task array + afterok merge)"
submit_out=$("$qsweep" submit "$src/configs/quickstart.toml" --array 4 --out "$dir/cluster")
echo "$submit_out"
array_job=$(echo "$submit_out" | sed -n 's/^submitted array job \([0-9]*\) .* merge job \([0-9]*\) .*/\1/p')
merge_job=$(echo "$submit_out" | sed -n 's/^submitted array job \([0-9]*\) .* merge job \([0-9]*\) .*/\2/p')
[ -n "$array_job" ] && [ -n "$merge_job" ] || { echo "FAILED: could not read the job ids"; exit 1; }

echo "== waiting for jobs $array_job and $merge_job (at most 15 minutes)"
deadline=$((SECONDS + 900))
while [ -n "$(squeue -h -j "$array_job,$merge_job" 2>/dev/null)" ]; do
  if [ $SECONDS -gt $deadline ]; then
    echo "FAILED: jobs still queued after 15 minutes"; squeue; exit 1
  fi
  sleep 2
done
state=$(scontrol -o show job "$merge_job" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
exit_code=$(scontrol -o show job "$merge_job" | sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p')
echo "merge job: $state, exit code $exit_code"
# Job states can claim success when slurmd failed the job: check the outputs themselves.
merged=$(find "$dir/cluster/quickstart" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | head -n 1)
if [ "$state" != COMPLETED ] || [ "$exit_code" != "0:0" ] || [ -z "$merged" ] || [ ! -f "$merged/summary.json" ]; then
  echo "FAILED: no merged results"
  for f in "$dir"/cluster/quickstart/.*.work/slurm/*.out; do echo "--- $f"; tail -n 20 "$f"; done
  exit 1
fi

echo "== single-process run of the same config, checked against the merged folder (qsweep run --check)"
if ! "$qsweep" run "$src/configs/quickstart.toml" --quiet --out "$dir/single" --check "$merged"; then
  echo "FAILED: qsweep check finds numbers of the single-process run that differ from the SLURM array's"
  exit 1
fi
single=$(find "$dir/single/quickstart" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | head -n 1)
if ! cmp "$merged/layerwise.csv" "$single/layerwise.csv"; then
  echo "FAILED: the SLURM array's merged layerwise.csv differs from the single-process one"
  diff "$merged/layerwise.csv" "$single/layerwise.csv" | head -n 20
  exit 1
fi
echo "merged results of 4 SLURM array tasks are identical to the single-process run: 1 passed, 0 failed"
