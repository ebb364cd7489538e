#!/usr/bin/env bash
# Build regnet_kernels._C with AddressSanitizer (REGNET_KERNELS_ASAN=1, see setup.py) in a scratch
# copy of the working tree -- the main build is never touched -- and run the CPU kernel tests
# (tests/test_cpu_backend.py: every op over the shared test shapes, strided views, tails,
# bad-input checks, the AVX2 and default ISA copies; tests/test_memory_pool.py: the CPU memory
# pool; tests/test_optimize.py: whole optimized models on the pool, after the pool's tests, the
# order in which ASan first caught a pool bug; tests/test_replay.py: CallList, the recorded op
# calls replayed from C++; tests/test_ops_api.py: every op's bad input through the public API and
# call_signature, the resolve cache's key, on odd arguments) under it.
# Exit status: non-zero if the build fails, a test fails, or ASan reports anything.
#
#   tools/asan_check.sh            # about 3.5 minutes on 2 cores (build ~165 s, tests ~30 s)
#   KEEP=1 tools/asan_check.sh     # keep the scratch directory (build log, ASan logs)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="$(mktemp -d /tmp/regnet_asan.XXXXXX)"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$SCRATCH"' EXIT; fi
echo "asan_check: scratch copy in $SCRATCH"

# Sources only: no .git, no build outputs (a stale non-ASan _C*.so must not be imported).
mkdir -p "$SCRATCH/src"
tar -C "$REPO" --exclude=.git --exclude=./build --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ \
  --exclude=./bench/results -cf - . | tar -C "$SCRATCH/src" -xf -
cd "$SCRATCH/src"

start=$(date +%s)
if ! REGNET_KERNELS_ASAN=1 REGNET_KERNELS_CUDA=0 python3 setup.py build_ext --inplace >"$SCRATCH/build.log" 2>&1; then
  tail -40 "$SCRATCH/build.log"
  echo "asan_check: FAILED to build"
  exit 1
fi
echo "asan_check: built in $(( $(date +%s) - start )) s"
ls regnet_kernels/_C*.so >/dev/null

# libasan must be loaded first (python itself is not instrumented), and libstdc++ with it: python
# does not link libstdc++, so without it ASan's __cxa_throw interceptor finds no real function
# and aborts at the first C++ exception (triton's import throws one). Leak checking is off:
# CPython and torch keep allocations alive until exit on purpose.
PRELOAD="$(gcc -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$SCRATCH/asan_report"
start=$(date +%s)
set +e
LD_PRELOAD="$PRELOAD" PYTHONPATH=. python3 -m pytest tests/test_cpu_backend.py tests/test_memory_pool.py tests/test_optimize.py tests/test_replay.py tests/test_ops_api.py -q -p no:cacheprovider -x
status=$?
set -e
echo "asan_check: tests took $(( $(date +%s) - start )) s, pytest exit status $status"

if compgen -G "$SCRATCH/asan_report*" >/dev/null; then
  head -60 "$SCRATCH"/asan_report*
  echo "asan_check: FAILED: AddressSanitizer reported errors (above)"
  exit 1
fi
if [[ $status != 0 ]]; then
  echo "asan_check: FAILED: tests failed under ASan"
  exit 1
fi
echo "asan_check: OK, no AddressSanitizer reports"
