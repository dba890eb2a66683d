#!/usr/bin/env bash
# The GPU check anyone can run: builds with CUDA (cuDNN from $CUDNN_ROOT, else PyTorch's
# nvidia.cudnn package, else the toolkit's folders), runs the Cuda* test suites, prints the
# device, and writes a log to $OUT/gpu_check.log (or bench/gpu_logs/). Without a GPU it says
# so and exits 0 after the build.
#   bash bench/gpu_check.sh
# Falls back to a kernels-only build (kernels/ and their tests) when the project's other
# dependencies are not installed on the GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/gpu_logs}
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
echo "== qsweep GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

cudnn_root=${CUDNN_ROOT:-}
if [ -z "$cudnn_root" ]; then
  for py in python3 /usr/bin/python3; do
    cudnn_root=$("$py" -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' 2>/dev/null) && break
  done
fi
echo "cuDNN root: ${cudnn_root:-(toolkit folders)}"
build=build-gpu
args=(-DCMAKE_BUILD_TYPE=Release -DQSWEEP_CUDA=ON -DQSWEEP_BENCH=OFF)
[ -n "$cudnn_root" ] && args+=("-DCUDNN_ROOT=$cudnn_root")
if ! cmake -S . -B "$build" "${args[@]}"; then
  echo "== full configure failed (dependencies missing here?): kernels-only build"
  rm -rf "$build"
  cmake -S . -B "$build" "${args[@]}" -DQSWEEP_KERNELS_ONLY=ON || { echo "FAILED: configure"; exit 1; }
fi
cmake --build "$build" -j"$(nproc)" || { echo "FAILED: build"; exit 1; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "== no GPU on this machine: built with CUDA; the Cuda* suites and the GPU benchmark need a device"
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
echo "== Cuda* test suites"
ctest --test-dir "$build" -R '^Cuda' --output-on-failure
status=$?
echo "== GPU grid benchmark: pending the CUDA backend (issue 3); nothing measured"
exit $status
