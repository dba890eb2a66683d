# One line per kernel launch profiled by Nsight Compute's default text report
# (ncu ... > report.txt): kernel, grid x block, duration, SM and memory throughput, achieved
# occupancy, registers per thread, and the three biggest stall reasons when the report holds
# the smsp__average_warps_issue_stalled_* metrics (cycles per issued instruction). Used by
# bench/gpu_check.sh.
#   awk -f scripts/ncu_digest.awk report.txt
function top_stalls(   out, i, j, best, bv) {
  out = ""
  for (i = 0; i < 3; ++i) {
    best = ""; bv = -1
    for (j in st) if (st[j] + 0 > bv) { bv = st[j] + 0; best = j }
    if (best == "") break
    out = out sprintf(" %s %.2f", best, bv)
    delete st[best]
  }
  return out
}
function flush(   s) {
  if (k != "") {
    s = top_stalls()
    printf "  %-58.58s %-22s %10s | SM %6s%% | mem %6s%% | occ %6s%% | regs %s%s\n", k, g, d, c, m, o, r,
           s == "" ? "" : " | stalls" s
  }
  k = ""; g = ""; d = "-"; c = "-"; m = "-"; o = "-"; r = "-"
  split("", st)
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
k != "" && match($0, /smsp__average_warps_issue_stalled_[a-z_]+_per_issue_active\.ratio/) {
  name = substr($0, RSTART + 34, RLENGTH - 34 - 23)
  st[name] = $NF
}
END { flush() }
