#!/usr/bin/env bash
# The emulated device and the kernels under AddressSanitizer + UndefinedBehaviorSanitizer: builds
# the emulator library with ICET_EMU_SANITIZE=1 (g++ -fsanitize=address,undefined, every UB check
# fatal) in a target directory of its own, then runs this checkout's GPU kernel tests on it
# (ICET_EMU_LIB, with libasan preloaded). Any sanitizer report fails the run.
#
#   scripts/emu-sanitize.sh                 gpu_kernels (emulated shapes) and gpu_conformance
#   scripts/emu-sanitize.sh FILTER...       only the gpu_kernels tests matching FILTER
#
# What ASan adds over the emulator's own checks: redzones on both sides of every device buffer
# (ASan's allocator instead of guard pages), poisoned bytes past the launch's dynamic shared
# memory (reads too, not only writes), use-after-free of device buffers, and stack/heap errors in
# the emulator itself; UBSan: signed overflow, bad shifts, misaligned loads, out-of-range array
# indices with known bounds, in the kernels as compiled for the CPU. (Not: static __shared__
# arrays, which are thread_local variables ASan does not pad.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${ICET_SANITIZE_TARGET:-$root/target/emu-sanitize}"
unset NVCC

echo "emu-sanitize: building the emulator with ASan + UBSan (target $target)" >&2
# Only icet-kernels is compiled there: its dependencies are linked from this checkout's build.
python3 scripts/seed_target.py "$root/target/debug" "$target/debug"
lib="$(ICET_EMU_SANITIZE=1 CARGO_TARGET_DIR="$target" cargo build -p icet-kernels --profile test --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line) if line.startswith("{") else {}
    if m.get("reason") == "build-script-executed" and "icet-kernels" in m["package_id"]:
        print(m["out_dir"] + "/emu/libicet_emu.so")
')"
[[ -f "$lib" ]] || { echo "emu-sanitize: no sanitized library built" >&2; exit 1; }

echo "emu-sanitize: building the test binaries" >&2
bins="$(cargo test --workspace --test gpu_kernels --test gpu_conformance --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line) if line.startswith("{") else {}
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu_kernels", "gpu_conformance"):
        print(m["target"]["name"], m["executable"])
')"
asan="$(g++ -print-file-name=libasan.so)"
[[ -f "$asan" ]] || { echo "emu-sanitize: libasan not found (apt-get install g++)" >&2; exit 1; }

log="$(mktemp)"
status=0
run() { # name binary args...
  local name="$1" bin="$2" t0=$SECONDS
  shift 2
  # Only the test process gets the sanitizer runtime; leak checking is off (the emulator keeps its
  # worker threads and fiber stacks for the life of the process, by design).
  if ! env LD_PRELOAD="$asan" ICET_EMU_LIB="$lib" ICET_CUDA_DEVICE=emu \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$bin" --test-threads=2 "$@" >"$log" 2>&1; then
    status=1
  fi
  if grep -qE 'ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$log"; then
    status=1
    grep -E -A12 'ERROR: AddressSanitizer|runtime error:' "$log" | head -40 >&2
  fi
  if grep -q 'SKIPPED' "$log"; then
    status=1
    grep 'SKIPPED' "$log" >&2
  fi
  echo "emu-sanitize: $name: $(grep -E '^test result:' "$log" | tail -1) ($((SECONDS - t0)) s)" >&2
  [[ $status == 0 ]] || tail -20 "$log" >&2
}
while read -r name bin; do
  if [[ $name == gpu_kernels ]]; then
    run "$name" "$bin" "$@"
  elif [[ $# == 0 ]]; then
    run "$name" "$bin"
  fi
done <<<"$bins"
rm -f "$log"
if [[ $status == 0 ]]; then
  echo "emu-sanitize: clean (no ASan or UBSan report)" >&2
else
  echo "emu-sanitize: FAILED" >&2
fi
exit $status
