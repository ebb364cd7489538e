#!/usr/bin/env bash
# Build and run probe.cpp against oneDNN 3.2 from PyPI (onednn-cpu-gomp: GNU OpenMP, as torch's),
# downloaded into a scratch directory; nothing is installed. Needs g++ and pip.
#   bash tools/onednn_probe/probe.sh        # ~1 minute; prints us per call, fp32 and bf16
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps -d "$work/whl" "onednn-cpu-gomp==2023.2.0" "onednn-devel-cpu-gomp==2023.2.0"
for w in "$work"/whl/*.whl; do (cd "$work" && python3 -m zipfile -e "$w" .); done
inc=$(find "$work" -path '*/data/include' -type d | head -n 1)
lib=$(dirname "$(find "$work" -name 'libdnnl.so*' | head -n 1)")
g++ -O2 -std=c++17 -fopenmp "$here/probe.cpp" -I"$inc" -L"$lib" -ldnnl -Wl,-rpath,"$lib" -o "$work/probe"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$work/probe"
