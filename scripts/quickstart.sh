#!/usr/bin/env bash
# Installs what is missing, builds, and runs the built-in default: the shipped ResNet on
# Fashion-MNIST, every layer x weight bits 3..8, on the full 10,000-image test set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
build/qsweep run configs/quickstart.toml "$@"
