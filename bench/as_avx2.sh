#!/usr/bin/env bash
# Run a command as on an AVX2-only x86-64 CPU, at native speed (bench/avx2_only.c):
#   bash bench/as_avx2.sh python bench/backends.py --static
# Needs a C compiler and a CPU/kernel with CPUID faulting (grep cpuid_fault /proc/cpuinfo).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lib="$(mktemp -d)/avx2_only.so"
cc -O2 -shared -fPIC -o "$lib" "$here/avx2_only.c" -ldl
LD_PRELOAD="$lib" exec "$@"
