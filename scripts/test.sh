#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (the README's test command; .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh "$@"
ctest --test-dir build --output-on-failure -j"$(nproc)"
