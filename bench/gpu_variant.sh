#!/usr/bin/env bash
# A fused-conv variant measured beside the default one on a GPU machine, after
# bench/gpu_check.sh has built the project and timed the variants (run it as that script's
# QSWEEP_AFTER, which gives it the check's environment):
#   QSWEEP_AFTER="bash bench/gpu_variant.sh 11 12 13" bash bench/gpu_check.sh
# Of several variants named, V is the one with the lowest geometric mean over ResNet18's conv
# shapes in the check's log ($OUT/gpu_check.log), else the first. Steps, each with its output
# in the log:
#   1. the CudaFakeQuantConv tests of variant V alone (with variant 0, their reference); the
#      script stops here when they fail;
#   2. the CudaGrid and CudaSession tests with V as the process-wide variant (every grid cell
#      against the CPU backend);
#   3. the ResNet18 grid timed with the default variant and with V, one after the other;
#   4. Nsight Compute on V's kernels over ResNet18's conv shapes ($OUT/ncu_variant_V.txt, a
#      digest here), when ncu exists;
#   5. the fused-conv table of the shipped MobileNetV2 (default variant and V).
# Environment: QSWEEP_GPU_BUILD (build folder, default build-gpu), OUT (report folder),
# QSWEEP_FQCONV_DEFAULT (the default variant; gpu_check.sh sets these).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -ge 1 ] || { echo "usage: bench/gpu_variant.sh VARIANT..."; exit 2; }
build=${QSWEEP_GPU_BUILD:-build-gpu}
out=${OUT:-bench/gpu_logs}
mkdir -p "$out"
v=$1
if [ $# -gt 1 ] && [ -f "$out/gpu_check.log" ]; then
  # The conv table's summary lines of the last model (ResNet18), one per variant timed.
  best=$(awk -v want=" $* " '
    /^== / { r = /^== torchvision resnet18/ }
    r && /^conv     :   variant [0-9]+: geometric mean/ {
      n = $4; sub(":", "", n); g = $7; sub("x,", "", g)
      if (index(want, " " n " ") && (best == "" || g + 0 < bestg)) { best = n; bestg = g + 0 }
    }
    END { print best }' "$out/gpu_check.log")
  if [ -n "$best" ]; then
    v=$best
    echo "-- candidates $*: variant $v has the lowest geometric mean on ResNet18's shapes"
  else
    echo "-- candidates $*: none timed on ResNet18's shapes in $out/gpu_check.log; taking the first, $v"
  fi
fi
default=${QSWEEP_FQCONV_DEFAULT:?run this script as bench/gpu_check.sh's QSWEEP_AFTER hook, which sets it}
bench="$build/bench/qsweep_bench_gpu"
grid_args=(--model resnet18 --skip-torch --skip-tf32 --skip-transforms --skip-bias-correction --skip-conv --skip-cudnn-convs)
echo "-- variant $v (default $default): 1. CudaFakeQuantConv tests of variant $v alone"
if ! QSWEEP_TEST_FQCONV_VARIANTS=$v "$build/tests/cuda_backend_test" --gtest_filter='CudaFakeQuantConv.*' 2>&1 | tail -25; then
  echo "-- variant $v fails its tests: stopping"
  exit 1
fi
echo "-- 2. CudaGrid and CudaSession tests with QSWEEP_FQCONV_VARIANT=$v"
status=0
QSWEEP_FQCONV_VARIANT=$v timeout 240 "$build/tests/cuda_backend_test" --gtest_filter='*CudaGrid*:CudaSession.*' 2>&1 |
  grep -E '^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|Failure|worst|Expected|Which is' | tail -60
[ "${PIPESTATUS[0]}" = 0 ] || status=1
if [ -f bench/resnet18.onnx ]; then
  for w in "$default" "$v"; do
    echo "-- 3. ResNet18 grid, QSWEEP_FQCONV_VARIANT=$w: $bench ${grid_args[*]}"
    QSWEEP_FQCONV_VARIANT=$w timeout 120 "$bench" "${grid_args[@]}" 2>&1 | grep -E '^(qsweep|device|   )' | head -8
  done
  ncu_bin=$(command -v ncu 2>/dev/null || true)
  [ -z "$ncu_bin" ] && [ -x /usr/local/cuda/bin/ncu ] && ncu_bin=/usr/local/cuda/bin/ncu
  if [ -n "$ncu_bin" ]; then
    metrics=
    for r in barrier long_scoreboard short_scoreboard mio_throttle math_pipe_throttle wait not_selected \
             selected dispatch_stall lg_throttle no_instruction branch_resolving; do
      metrics+="${metrics:+,}smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
    done
    echo "-- 4. ncu, variant $v's kernels on ResNet18's shapes ($out/ncu_variant_$v.txt)"
    QSWEEP_FQCONV_VARIANT=$v timeout 90 "$ncu_bin" --kernel-name 'regex:implicit_gemm(_async|_tap)?_kernel' \
      --launch-count 11 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --metrics "$metrics" "$bench" --conv-only --model resnet18 --reps 1 --in-use-only > "$out/ncu_variant_$v.txt" 2>&1
    awk -f scripts/ncu_digest.awk "$out/ncu_variant_$v.txt" | head -40
  fi
fi
echo "-- 5. MobileNetV2's conv table, variants $default and $v"
timeout 60 "$bench" --model mobilenetv2 --conv-only --variants "$default,$v" 2>&1 | tail -30
exit $status
