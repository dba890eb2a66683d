# One line per kernel launch profiled by Nsight Compute's default text report
# (ncu ... > report.txt): kernel, grid x block, duration, SM and memory throughput, achieved
# occupancy, registers per thread. Used by bench/gpu_check.sh.
#   awk -f scripts/ncu_digest.awk report.txt
function flush() {
  if (k != "") printf "  %-58.58s %-22s %10s | SM %6s%% | mem %6s%% | occ %6s%% | regs %s\n", k, g, d, c, m, o, r
  k = ""; g = ""; d = "-"; c = "-"; m = "-"; o = "-"; r = "-"
}
/^  [^ ].*\([0-9, ]+\)x\([0-9, ]+\)/ {
  flush()
  k = $0
  sub(/^ +(void )?/, "", k)
  gsub(/qsweep::cuda::\(anonymous namespace\)::/, "", k)
  if (match(k, / \([0-9, ]+\)x\([0-9, ]+\)/)) { g = substr(k, RSTART + 1, RLENGTH - 1); gsub(/ /, "", g); k = substr(k, 1, RSTART - 1) }
  sub(/\(.*$/, "", k)
  next
}
k != "" && /^    Duration / { d = $NF " " $(NF - 1) }
k != "" && /^    Compute \(SM\) Throughput / { c = $NF }
k != "" && /^    Memory Throughput +% / { m = $NF }  # the SpeedOfLight one, not the Gbyte/s of MemoryWorkloadAnalysis
k != "" && /^    Achieved Occupancy / { o = $NF }
k != "" && /^    Registers Per Thread / { r = $NF }
END { flush() }
