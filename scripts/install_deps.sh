#!/usr/bin/env bash
# Installs the Debian 12 packages qsweep needs, skipping what is already there.
#   scripts/install_deps.sh            build + test + run dependencies
#   scripts/install_deps.sh --torch    also python3-torch / python3-torchvision / python3-onnx (model training,
#                                      PyTorch peer benchmark, bench/export_resnet18.py)
# Idempotent: when nothing is missing it changes nothing and does not touch the network.
set -euo pipefail

packages=(
  cmake g++ make pkg-config git
  libdnnl-dev                      # oneDNN: CPU convolutions, pooling
  libonnx-dev libprotobuf-dev      # ONNX import, checker, shape inference
  libtomlplusplus-dev              # TOML configs
  libcli11-dev libfmt-dev nlohmann-json3-dev zlib1g-dev
  libjpeg62-turbo-dev              # libjpeg-turbo: JPEG image-folder datasets
  libpng-dev                       # libpng: PNG image-folder datasets
  libgtest-dev libbenchmark-dev    # tests and benchmarks
  dataset-fashion-mnist            # the built-in real dataset
  gnuplot-nox                      # figures (cairo terminals: pngcairo, svg)
)
for arg in "$@"; do
  case "$arg" in
    --torch) packages+=(python3-torch python3-torchvision python3-onnx) ;;
    *) echo "install_deps.sh: unknown option '$arg' (accepted: --torch)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps.sh: all ${#packages[@]} packages present"
  exit 0
fi
echo "install_deps.sh: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
