#!/usr/bin/env bash
# The GPU check anyone can run: builds the whole project with CUDA (cuDNN from $CUDNN_ROOT,
# else PyTorch's nvidia-cudnn pip package, else the toolkit's folders), runs the Cuda* test
# suites and the GPU benchmark, prints the device, and writes a log to $OUT/gpu_check.log (or
# bench/gpu_logs/). Without a GPU it says so and exits 0 after the build.
#   bash bench/gpu_check.sh
# On a GPU machine without our Debian packages and without network: run scripts/gpu_deps.sh
# here first, carry .debs/ there (device tool: "carry": [".debs"]). The .deb files are unpacked
# with `dpkg -x` into a private prefix (never into /), CMake is pointed at it, LD_LIBRARY_PATH
# at its libraries, and /usr/share/datasets/fashion-mnist, when missing, becomes a link to the
# carried dataset. If that build cannot be configured, it falls back to a kernels-only build.
# Environment:
#   QSWEEP_DEBS=DIR          the .deb folder (default .debs)
#   QSWEEP_DEBROOT=DIR       where they are unpacked (default /tmp/qsweep-debroot)
#   QSWEEP_CUDA_ARCHS=LIST   CMAKE_CUDA_ARCHITECTURES (default 90)
#   QSWEEP_GPU_BUILD=DIR     build folder (default build-gpu)
#   QSWEEP_CMAKE_ARGS="..."  extra configure arguments (word-split)
#   QSWEEP_BENCH_TIMEOUT=S   seconds the GPU benchmark may run (default 300)
#   QSWEEP_SKIP_BENCH=1      build and run the Cuda* tests only
#   QSWEEP_BENCH_ARGS="..."  extra benchmark arguments (word-split), e.g. "--skip-torch --model resnet18"
#   QSWEEP_NCU=0             skip the Nsight Compute profile of the fused conv and cuDNN's
#                            kernels on ResNet18's shapes (default: run it when ncu exists;
#                            reports in $OUT/ncu_*.txt, a digest in the log)
#   QSWEEP_NCU_TIMEOUT=S     seconds each of the two ncu runs may take (default 120)
#   QSWEEP_NCU_WHAT="..."    which kernels ncu profiles: "fused cudnn" (default), "fused" or "cudnn"
#   QSWEEP_NCU_COUNT=N       launches profiled per kind (default: 11 fused, 24 cuDNN); the fused
#                            ones are the variant in use only, one per shape of ResNet18's 11
#   QSWEEP_FQCONV_VARIANT=V  the fused conv kernel variant the tests' grids and the benchmark's
#                            grids use (kernels/cuda/fq_conv.cuh; the conv table times them all)
#   QSWEEP_AFTER="..."       a command run at the end in the check's environment (its
#                            LD_LIBRARY_PATH; $QSWEEP_GPU_BUILD names the build folder), its
#                            output in the log and its exit status counted, e.g.
#                            "bash bench/gpu_variant.sh 11"
#   CUDNN_ROOT=DIR           a cuDNN folder holding include/cudnn.h and lib*/libcudnn.so*
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-bench/gpu_logs}
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1

orig_ld_path=${LD_LIBRARY_PATH:-}
# The fused conv's default variant (kernels/cuda/fq_conv.cu), for the fallback below and the
# QSWEEP_AFTER hook (bench/gpu_variant.sh).
QSWEEP_FQCONV_DEFAULT=$(sed -n 's/.*if (env == nullptr || \*env == .\\0.) return \([0-9]*\);.*/\1/p' kernels/cuda/fq_conv.cu)
export QSWEEP_FQCONV_DEFAULT
t0=$SECONDS
ts=$SECONDS
stage() {  # closes the previous stage with its time and opens the next
  echo "== [$((SECONDS - t0)) s total, previous stage $((SECONDS - ts)) s] $*"
  ts=$SECONDS
}
echo "== qsweep GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
# A copied working tree (the device tool's) can carry a .git older than its files.
git diff --quiet HEAD 2>/dev/null || echo "   (the working tree differs from that commit: name the commit it was copied at)"
have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  have_gpu=1
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
else
  echo "nvidia-smi: no GPU visible"
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
# CMake and ninja may come as pip packages of the image's Python environment only.
if ! command -v cmake >/dev/null 2>&1 && [ -x /opt/torch/.venv/bin/cmake ]; then
  export PATH=$PATH:/opt/torch/.venv/bin
fi
echo "host: $(uname -m), $(nproc) cores, $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo missing)"
echo "c++: $(c++ --version 2>/dev/null | head -1 || echo missing)"
echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not on PATH')"

# ---- cuDNN: a folder with cudnn.h and libcudnn.so* ($CUDNN_ROOT, the nvidia.cudnn package,
# anything under site-packages/nvidia); none found: CMake looks in the toolkit's folders.
cudnn_dirs=()
[ -n "${CUDNN_ROOT:-}" ] && cudnn_dirs+=("$CUDNN_ROOT")
for py in python3 /opt/torch/.venv/bin/python3 /usr/bin/python3; do
  command -v "$py" >/dev/null 2>&1 || continue
  while IFS= read -r d; do [ -n "$d" ] && cudnn_dirs+=("$d"); done < <("$py" - 2>/dev/null <<'EOF'
import os, site
out = []
try:
    import nvidia.cudnn as m
    out += [os.path.dirname(m.__file__)] if getattr(m, "__file__", None) else list(m.__path__)
except Exception:
    pass
for p in site.getsitepackages() + [site.getusersitepackages()]:
    out.append(os.path.join(p, "nvidia"))
print("\n".join(p for p in out if os.path.isdir(p)))
EOF
)
done
cudnn_include=''
cudnn_library=''
for d in "${cudnn_dirs[@]}"; do
  h=$(find -L "$d" -maxdepth 4 -name cudnn.h -print 2>/dev/null | head -1)
  [ -n "$h" ] || continue
  # libcudnn.so, else the highest libcudnn.so.N (the pip wheels ship only libcudnn.so.9)
  l=$(find -L "$d" -maxdepth 4 \( -name libcudnn.so -o -name 'libcudnn.so.[0-9]*' \) -print 2>/dev/null | sort -V | head -1)
  [ -n "$l" ] || continue
  cudnn_include=$(dirname "$h") cudnn_library=$l
  break
done
echo "cuDNN: ${cudnn_library:-(toolkit folders)} ${cudnn_include:+(headers $cudnn_include)}"

# ---- the project's dependencies: installed, or carried as .deb files
debs=${QSWEEP_DEBS:-.debs}
root=${QSWEEP_DEBROOT:-/tmp/qsweep-debroot}
arch_dir=$(gcc -print-multiarch 2>/dev/null || true)
arch_dir=${arch_dir:-x86_64-linux-gnu}
deps_installed() {
  local h
  for h in oneapi/dnnl/dnnl.hpp onnx/onnx_pb.h google/protobuf/message.h toml++/toml.h CLI/CLI.hpp \
           fmt/format.h nlohmann/json.hpp gtest/gtest.h benchmark/benchmark.h zlib.h jpeglib.h png.h; do
    [ -f "/usr/include/$h" ] || [ -f "/usr/local/include/$h" ] || return 1
  done
}
extract_deb() {  # dpkg -x, else ar + tar (data.tar.{xz,zst,gz}), else Python for the tar
  local deb=$1 dest=$2 tmp data
  if command -v dpkg-deb >/dev/null 2>&1; then dpkg-deb -x "$deb" "$dest"; return; fi
  tmp=$(mktemp -d)
  deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
  (cd "$tmp" && ar x "$deb") || { rm -rf "$tmp"; return 1; }
  data=$(ls "$tmp"/data.tar* | head -1)
  case "$data" in
    *.zst) zstd -dc "$data" | tar -x -C "$dest" ;;
    *) tar -xf "$data" -C "$dest" 2>/dev/null ||
         python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$data" "$dest" ;;
  esac
  local rc=$?
  rm -rf "$tmp"
  return $rc
}
use_debs=0
debs_ok=0
env_note=
if deps_installed; then
  echo "dependencies: installed"
elif ls "$debs"/*.deb >/dev/null 2>&1; then
  stage "unpacking $(ls "$debs"/*.deb | wc -l) .deb files from $debs into $root"
  use_debs=1
  rm -rf "$root" && mkdir -p "$root"
  debs_ok=1
  for f in "$debs"/*.deb; do extract_deb "$f" "$root" || { echo "cannot unpack $f"; debs_ok=0; }; done
  # Absolute links (libz.so -> /lib/.../libz.so.1.2.13) are pointed into the prefix.
  while IFS= read -r l; do
    t=$(readlink "$l")
    [ -e "$root$t" ] && ln -sfn "$root$t" "$l"
  done < <(find "$root" -type l -lname '/*')
  # The carried libz.so.1 only where the system has none (Python and the toolchain keep theirs).
  libdirs="$root/usr/lib/$arch_dir:$root/usr/lib"
  if [ ! -e "/lib/$arch_dir/libz.so.1" ] && [ ! -e "/usr/lib/$arch_dir/libz.so.1" ]; then
    libdirs="$libdirs:$root/lib/$arch_dir"
  fi
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  env_note="LD_LIBRARY_PATH=$libdirs"
  du -sh "$root"
else
  echo "dependencies: not installed and no .deb files in $debs (scripts/gpu_deps.sh makes them)"
fi
if [ -n "$cudnn_library" ]; then
  LD_LIBRARY_PATH="$(dirname "$cudnn_library")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi

# ---- the dataset: Debian's folder, else the carried copy (or the unpacked .deb)
data_dir=/usr/share/datasets/fashion-mnist
if [ ! -e "$data_dir" ]; then
  src=
  [ -d "$root/usr/share/datasets/fashion-mnist" ] && [ "$use_debs" = 1 ] && src=$root/usr/share/datasets/fashion-mnist
  [ -d "$debs/fashion-mnist" ] && src=$(cd "$debs/fashion-mnist" && pwd)
  if [ -n "$src" ] && mkdir -p "$(dirname "$data_dir")" && ln -s "$src" "$data_dir"; then
    echo "dataset: $data_dir -> $src ($(ls "$src" | tr '\n' ' '))"
  else
    echo "dataset: $data_dir missing and none carried; tests that need it skip"
  fi
else
  echo "dataset: $data_dir"
fi

# ---- configure and build
build=${QSWEEP_GPU_BUILD:-build-gpu}
args=(-DCMAKE_BUILD_TYPE=Release -DQSWEEP_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${QSWEEP_CUDA_ARCHS:-90}" -DQSWEEP_BENCH=ON)
[ -n "$cudnn_library" ] && args+=("-DCUDNN_ROOT=$(dirname "$cudnn_include")" "-DCUDNN_INCLUDE_DIR=$cudnn_include"
                                  "-DCUDNN_LIBRARY=$cudnn_library")
if [ "$use_debs" = 1 ]; then
  # CMake 4 (pip's) refuses config files that ask for policies older than 3.5.
  export CMAKE_POLICY_VERSION_MINIMUM=3.5
  # -include cstdint: headers of Debian 12 (ONNX 1.12, CLI11 2.1) predate GCC 13's leaner
  # transitive includes.
  args+=("-DCMAKE_PREFIX_PATH=$root/usr;$root/usr/lib/$arch_dir"
         "-DCMAKE_LIBRARY_PATH=$root/usr/lib/$arch_dir;$root/lib/$arch_dir;$root/usr/lib"
         "-DCMAKE_INCLUDE_PATH=$root/usr/include"
         "-DCMAKE_CXX_FLAGS=-include cstdint")
fi
# Ninja when there is one (the GPU image has it; make may be missing), for a new build folder.
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then args+=(-G Ninja); fi
# shellcheck disable=SC2206
[ -n "${QSWEEP_CMAKE_ARGS:-}" ] && args+=(${QSWEEP_CMAKE_ARGS})
stage "configure ($build): cmake ${args[*]}"
configured=0
if { deps_installed || [ "$debs_ok" = 1 ]; } && cmake -S . -B "$build" "${args[@]}"; then
  configured=1
fi
if [ "$configured" = 0 ]; then
  stage "full configure failed (dependencies missing here?): kernels-only build"
  rm -rf "$build"
  cmake -S . -B "$build" "${args[@]}" -DQSWEEP_KERNELS_ONLY=ON || { echo "FAILED: configure"; exit 1; }
fi
# Keep going past a failing target: the suites and the benchmark that did build still run.
keep_going=(-k)
grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$build/CMakeCache.txt" 2>/dev/null && keep_going=(-k 0)
stage "build: cmake --build $build -j$(nproc) -- ${keep_going[*]}"
build_status=0
if cmake --build "$build" -j"$(nproc)" -- "${keep_going[@]}"; then
  stage "built"
else
  build_status=1
  stage "FAILED: build (the errors are above); going on with the targets that were built"
fi
[ -n "$env_note" ] && echo "to run the binaries by hand: export $env_note"

if [ "$have_gpu" = 0 ]; then
  echo "== no GPU on this machine: built with CUDA; the Cuda* suites and the GPU benchmark need a device"
  exit "$build_status"
fi
stage "Cuda* test suites"
ctest --test-dir "$build" -R 'Cuda' --output-on-failure -j4 --timeout 180  # a hung kernel must not eat the lease
status=$?
[ "$build_status" = 0 ] || status=1
bench_args=()
if [ "${QSWEEP_SKIP_BENCH:-0}" = 1 ]; then
  stage "GPU benchmark: skipped (QSWEEP_SKIP_BENCH=1)"
elif [ -x "$build/bench/qsweep_bench_gpu" ]; then
  # The benchmark's ResNet-18 and its PyTorch peer need a python3 with torch, torchvision, onnx.
  torch_py=
  for py in python3 /opt/torch/.venv/bin/python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && LD_LIBRARY_PATH=$orig_ld_path "$py" -c 'import torch, torchvision, onnx' 2>/dev/null; then
      torch_py=$(command -v "$py")
      break
    fi
  done
  if [ -n "$torch_py" ] && [ "$torch_py" != "$(command -v python3)" ]; then
    PATH="$(dirname "$torch_py"):$PATH"
  fi
  if [ ! -f bench/resnet18.onnx ]; then
    stage "ResNet-18 for the benchmark: bench/export_resnet18.py (${torch_py:-no python3 with torch, torchvision and onnx})"
    [ -n "$torch_py" ] && LD_LIBRARY_PATH=$orig_ld_path "$torch_py" bench/export_resnet18.py
  fi
  # A fused-conv variant that fails its tests is not timed (a faulting kernel would end the
  # benchmark): each variant's tests run alone (with variant 0, their reference), the passing
  # ones are timed, and the grids use variant 0 unless the one chosen passes.
  if [ -x "$build/tests/cuda_backend_test" ] &&
     ! "$build/tests/cuda_backend_test" --gtest_filter='CudaFakeQuantConv.*' >/dev/null 2>&1; then
    nvar=$(sed -n 's/.*kFqConvVariants = \([0-9]*\);.*/\1/p' kernels/cuda/fq_conv.cuh)
    passing=()
    # (each run under a timeout: a hung kernel must not eat the lease)
    if QSWEEP_TEST_FQCONV_VARIANTS=0 timeout 120 "$build/tests/cuda_backend_test" --gtest_filter='CudaFakeQuantConv.*' >/dev/null 2>&1; then
      passing=(0)
      for ((v = 1; v < ${nvar:-1}; v++)); do
        QSWEEP_TEST_FQCONV_VARIANTS=$v timeout 120 "$build/tests/cuda_backend_test" --gtest_filter='CudaFakeQuantConv.*' \
          >/dev/null 2>&1 && passing+=("$v")
      done
    fi
    if [ ${#passing[@]} = 0 ]; then
      echo "CudaFakeQuantConv.* fails with variant 0 alone too (variant 0 is every variant's reference): see the test log above"
      passing=(0)
    fi
    chosen=${QSWEEP_FQCONV_VARIANT:-$QSWEEP_FQCONV_DEFAULT}
    case " ${passing[*]} " in *" $chosen "*) ;; *) export QSWEEP_FQCONV_VARIANT=0 ;; esac
    echo "CudaFakeQuantConv.* failed: variants passing their tests alone: ${passing[*]}; the benchmark times those," \
         "its grids use variant ${QSWEEP_FQCONV_VARIANT:-$chosen}"
    bench_args=(--variants "${passing[@]}")
  fi
  stage "GPU benchmark: $build/bench/qsweep_bench_gpu ${bench_args[*]} ${QSWEEP_BENCH_ARGS:-}"
  py_args=()
  [ -n "$torch_py" ] && py_args=(--python "env LD_LIBRARY_PATH=$orig_ld_path $torch_py")
  # shellcheck disable=SC2086
  timeout "${QSWEEP_BENCH_TIMEOUT:-300}" "$build/bench/qsweep_bench_gpu" "${py_args[@]}" "${bench_args[@]}" ${QSWEEP_BENCH_ARGS:-}
  rc=$?
  [ "$rc" = 124 ] && echo "qsweep_bench_gpu: stopped after ${QSWEEP_BENCH_TIMEOUT:-300} s (QSWEEP_BENCH_TIMEOUT)"
  [ "$rc" = 0 ] || { echo "qsweep_bench_gpu exited $rc"; status=1; }
else
  stage "GPU benchmark: pending ($build/bench/qsweep_bench_gpu not built)"
fi

# ---- Nsight Compute: where the fused conv's time goes, next to cuDNN's kernels, on ResNet18's
# conv shapes (the benchmark's conv table only, one timed call per kernel and variant).
ncu_bin=$(command -v ncu 2>/dev/null || true)
[ -z "$ncu_bin" ] && [ -x /usr/local/cuda/bin/ncu ] && ncu_bin=/usr/local/cuda/bin/ncu
if [ "${QSWEEP_NCU:-1}" = 0 ] || [ "${QSWEEP_SKIP_BENCH:-0}" = 1 ]; then
  stage "ncu: skipped"
elif [ -z "$ncu_bin" ] || [ ! -x "$build/bench/qsweep_bench_gpu" ] || [ ! -f bench/resnet18.onnx ]; then
  stage "ncu: skipped (${ncu_bin:-no ncu}; needs $build/bench/qsweep_bench_gpu and bench/resnet18.onnx)"
else
  ncu_sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
                --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis)
  # Why warps wait (cycles per issued instruction, by reason): the WarpStateStats section's
  # breakdown, which its text output leaves out.
  ncu_metrics=
  for r in barrier long_scoreboard short_scoreboard mio_throttle math_pipe_throttle wait not_selected \
           selected dispatch_stall lg_throttle no_instruction branch_resolving; do
    ncu_metrics+="${ncu_metrics:+,}smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
  done
  for what in ${QSWEEP_NCU_WHAT:-fused cudnn}; do
    ncu_args=("${bench_args[@]}")
    if [ "$what" = fused ]; then
      filter='regex:implicit_gemm(_async|_tap)?_kernel'; count=${QSWEEP_NCU_COUNT:-11}  # one launch per ResNet18 shape
      # the variant in use only, so the launches cover more shapes
      [ ${#bench_args[@]} = 0 ] && ncu_args=(--in-use-only)
    else
      filter='regex:xmma|convolve|fprop|cudnn|sgemm'; count=${QSWEEP_NCU_COUNT:-24}
    fi
    stage "ncu ($what kernels, $count launches): $ncu_bin --kernel-name $filter"
    profile() {  # extra ncu arguments; the report goes to $out/ncu_$what.txt
      timeout "${QSWEEP_NCU_TIMEOUT:-120}" "$ncu_bin" --kernel-name "$filter" --launch-count "$count" \
        "${ncu_sections[@]}" "$@" \
        "$build/bench/qsweep_bench_gpu" --conv-only --model resnet18 --reps 1 "${ncu_args[@]}" > "$out/ncu_$what.txt" 2>&1
    }
    profile --metrics "$ncu_metrics"
    rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -qi "metric" "$out/ncu_$what.txt"; then
      echo "ncu refused the stall metrics (this ncu names them otherwise): again with the sections only"
      profile
      rc=$?
    fi
    [ "$rc" = 124 ] && echo "ncu: stopped after ${QSWEEP_NCU_TIMEOUT:-120} s (QSWEEP_NCU_TIMEOUT); the report is partial"
    [ "$rc" = 0 ] || [ "$rc" = 124 ] || echo "ncu exited $rc (not counted as a failure): $(tail -3 "$out/ncu_$what.txt")"
    # Digest: one line per profiled launch (the full report comes back in $OUT).
    awk -f scripts/ncu_digest.awk "$out/ncu_$what.txt" | head -60
  done
fi
if [ -n "${QSWEEP_AFTER:-}" ] && [ "$have_gpu" = 1 ]; then
  stage "after: $QSWEEP_AFTER"
  QSWEEP_GPU_BUILD=$build OUT=$out bash -c "$QSWEEP_AFTER" || { echo "after: exited $?"; status=1; }
fi
stage "done, exit $status"
exit $status
