#!/usr/bin/env bash
# Run HERE (Debian 12, network to the Debian mirror): downloads, without installing, the .deb
# files the full project needs to build and run on a GPU machine that has the CUDA toolkit,
# a compiler and CMake but none of our Debian packages and no network. They go to .debs/
# (ignored by git); name `.debs` in the device tool's `carry` and run bench/gpu_check.sh
# there: it unpacks them with `dpkg -x` into a private prefix (never into /).
#   bash scripts/gpu_deps.sh                 .debs/*.deb + a cut copy of Fashion-MNIST
#   QSWEEP_TRAIN_IMAGES=60000 bash scripts/gpu_deps.sh   keep the whole train split
#   bash scripts/gpu_deps.sh --full-dataset  carry dataset-fashion-mnist's .deb instead (31 MB)
# The dataset copy, .debs/fashion-mnist/: the whole t10k test split (10000 images) and the
# first $QSWEEP_TRAIN_IMAGES (default 10000) images of the train split, as IDX files whose
# header holds the smaller count (calibration reads the first 512 train images).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.debs
full_dataset=0
for arg in "$@"; do
  case "$arg" in
    --full-dataset) full_dataset=1 ;;
    *) echo "gpu_deps.sh: unknown option '$arg' (accepted: --full-dataset)" >&2; exit 2 ;;
  esac
done

# Every package whose files the build or the binaries use; the GPU machine is assumed to have
# glibc, libstdc++, libgcc_s, libgomp (they come with its compiler) and nothing else of ours.
packages=(
  libdnnl-dev libdnnl2              # oneDNN 2.6 headers + libdnnl.so.2
  ocl-icd-libopencl1                # libOpenCL.so.1: libdnnl.so.2 links it (never used)
  libonnx-dev libonnx1 libonnxifi   # ONNX 1.12 headers, CMake config, libonnx*.so
  libprotobuf-dev libprotobuf32 libprotobuf-lite32   # protobuf 3.21 (FindProtobuf)
  libtomlplusplus-dev libtomlplusplus3
  libcli11-dev                      # header-only
  libfmt-dev libfmt9
  nlohmann-json3-dev                # header-only
  libgtest-dev libgmock-dev         # static libraries; GTestTargets.cmake names both
  libbenchmark-dev libbenchmark1debian
  zlib1g-dev zlib1g                 # zlib headers + the libz.so.1 its libz.so points to
  libjpeg62-turbo-dev libjpeg62-turbo   # libjpeg-turbo headers + libjpeg.so.62
  libpng-dev libpng16-16            # libpng headers + libpng16.so.16
)
[ "$full_dataset" = 1 ] && packages+=(dataset-fashion-mnist)

# apt-get download needs package lists; fetch them only when apt knows no candidate.
if ! apt-cache policy libdnnl-dev 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  apt-get update -qq
fi
rm -rf "$dest"
mkdir -p "$dest"
(cd "$dest" && apt-get download -qq "${packages[@]}")

if [ "$full_dataset" = 0 ]; then
  src=/usr/share/datasets/fashion-mnist
  tmp=
  if [ ! -f "$src/t10k-images-idx3-ubyte.gz" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb root)
    src=$tmp/root/usr/share/datasets/fashion-mnist
  fi
  python3 - "$src" "$dest/fashion-mnist" "${QSWEEP_TRAIN_IMAGES:-10000}" <<'EOF'
import gzip, os, shutil, sys
src, dst, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    shutil.copyfile(os.path.join(src, stem + ".gz"), os.path.join(dst, stem + ".gz"))
for stem, item in (("train-images-idx3-ubyte", 28 * 28), ("train-labels-idx1-ubyte", 1)):
    data = gzip.open(os.path.join(src, stem + ".gz")).read()
    head = 16 if item > 1 else 8
    n = min(keep, int.from_bytes(data[4:8], "big"))
    out = data[:4] + n.to_bytes(4, "big") + data[8:head] + data[head:head + n * item]
    with gzip.GzipFile(os.path.join(dst, stem + ".gz"), "wb", mtime=0) as f:
        f.write(out)
print(f"gpu_deps.sh: {dst}: t10k (10000 images) and the first {n} train images")
EOF
  [ -n "$tmp" ] && rm -rf "$tmp"
fi

grep -qxF '/.debs/' .gitignore 2>/dev/null || echo '/.debs/' >> .gitignore
ls -l "$dest"
echo "gpu_deps.sh: $(du -sh --apparent-size "$dest" | cut -f1) in $dest ($(ls "$dest"/*.deb | wc -l) .deb files); carry it: \"carry\": [\".debs\"]"
