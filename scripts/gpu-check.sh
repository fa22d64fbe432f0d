#!/usr/bin/env bash
# One prepared GPU check for a lent GPU machine (nvcc 13.0, Python with torch and transformers,
# but no Rust toolchain and no network).
#
#   scripts/gpu-check.sh --prepare     here, with Rust: build the release test binaries, the
#                                      kernel bench and `icet` (kernels compiled by the pinned
#                                      nvcc), strip them and pack them into gpu-bundle/ (ignored
#                                      by git, <= 64 MiB), which the device call carries.
#   scripts/gpu-check.sh               on the GPU machine, from the repository root: unpack the
#                                      bundle, run the GPU kernel tests, the conformance suite
#                                      and the LLaVA fixture parity under CUDA (ICET_REQUIRE_GPU=1:
#                                      a skip is a failure), compute-sanitizer memcheck and
#                                      racecheck over the kernel tests, a short bench pass, the
#                                      demo sweep on
#                                      the GPU, `icet bench` beside transformers on a random
#                                      LLaVA-1.5-7B-shaped model (tools/bench/), and torch's
#                                      scaled_dot_product_attention at the ViT and prefill shapes
#                                      for comparison; write everything and a summary.md under
#                                      $OUT (default ./gpu-check-out).
#
# Every step has its own timeout; the whole run stays well inside 10 minutes. The device call:
#   run(command="bash scripts/gpu-check.sh", carry=["gpu-bundle"], timeout_s=600)
# then copy the summary's numbers into docs/gpu-results.md.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$root/gpu-bundle"

prepare() {
  set -e
  local nvcc target json
  nvcc="$(scripts/install-nvcc.sh)"
  export NVCC="$nvcc"
  # A target directory of its own: other builds in this tree (without NVCC) must not flip the
  # kernels off under us.
  target="${ICET_GPU_TARGET:-$root/target/gpu-check}"
  export CARGO_TARGET_DIR="$target"
  rm -rf "$bundle"
  mkdir -p "$bundle/bin"
  json="$(mktemp)"
  echo "gpu-check: building release test binaries and the kernel bench (NVCC=$nvcc)" >&2
  cargo test --release --no-run --message-format=json -p icet-models \
    --test gpu_kernels --test gpu_conformance --test gpu_parity --test mllama_parity --test judges_parity >"$json"
  cargo bench --no-run --message-format=json -p icet-models --bench kernels >>"$json"
  cargo build --release -p probe-cli --bin icet >&2
  python3 - "$json" "$bundle/bin" <<'PY'
import json, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
want = {"gpu_kernels": "gpu_kernels", "gpu_conformance": "gpu_conformance", "gpu_parity": "gpu_parity",
        "mllama_parity": "mllama_parity", "judges_parity": "judges_parity", "kernels": "kernels_bench"}
found = {}
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        found[want[m["target"]["name"]]] = m["executable"]
missing = set(want.values()) - set(found)
if missing:
    sys.exit(f"gpu-check: no executable for {sorted(missing)}")
for name, path in found.items():
    shutil.copy(path, f"{dst}/{name}")
PY
  cp "$target/release/icet" "$bundle/bin/icet"
  strip "$bundle"/bin/*
  git rev-parse HEAD >"$bundle/commit" 2>/dev/null || true
  { date -u +%FT%TZ; "$nvcc" --version | tail -1; } >"$bundle/built"
  # Every binary embeds the same fatbins; gzip (present everywhere, unlike xz) packs the set well below the carry limit.
  tar -C "$bundle" -czf "$bundle/bin.tar.gz" bin
  rm -rf "$bundle/bin"
  du -b "$bundle"/* >&2
  local size
  size=$(du -sb "$bundle" | cut -f1)
  if ((size > 64 * 1024 * 1024)); then
    echo "gpu-check: bundle is $size bytes, over the 64 MiB carry limit" >&2
    exit 1
  fi
  rm -f "$json"
  echo "gpu-check: bundle ready in gpu-bundle/ ($size bytes); device call: bash scripts/gpu-check.sh with carry [gpu-bundle]" >&2
}

# Directories holding libcublasLt (cudarc loads it by name at run time) and libcuda.
cuda_lib_dirs() {
  {
    ldconfig -p 2>/dev/null | awk '/libcublasLt\.so|libcuda\.so/ {print $NF}' | xargs -r -n1 dirname
    ls -d /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib 2>/dev/null
    python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(base, "nvidia", "*", "lib")):
        if glob.glob(os.path.join(d, "libcublas*")):
            print(d)
PY
  } | awk '!seen[$0]++'
}

device() {
  local out="${OUT:-$root/gpu-check-out}"
  mkdir -p "$out"
  local summary="$out/summary.md" start=$SECONDS
  : >"$summary"
  say() { echo "$*" | tee -a "$summary"; }
  [[ -f "$bundle/bin.tar.gz" ]] || { say "gpu-check: no gpu-bundle/bin.tar.gz (run --prepare first and carry gpu-bundle)"; exit 1; }
  local work
  work="$(mktemp -d)"
  tar -C "$work" -xzf "$bundle/bin.tar.gz"
  local bin="$work/bin"

  say "# GPU check $(date -u +%FT%TZ)"
  say ""
  say "- commit: $(cat "$bundle/commit" 2>/dev/null || echo unknown); bundle built $(tr '\n' ' ' <"$bundle/built" 2>/dev/null)"
  say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"
  local dirs
  dirs="$(cuda_lib_dirs | paste -sd: -)"
  export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "- library path: $LD_LIBRARY_PATH"
  # (cudarc dlopens libcublasLt.so, .so.13, .so.12, ... along this path.)
  export ICET_REQUIRE_GPU=1 ICET_FIXTURES="$root/tests/fixtures" RUST_BACKTRACE=1
  say ""

  local status=0
  step() { # name timeout command...
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    local result
    result="$(grep -E '^test result:' "$out/$name.log" | tail -1)"
    say "- $name: exit $rc in $((SECONDS - t0)) s ${result:+— $result}"
    if ((rc != 0)); then
      status=1
      # The first failures with their messages, else the log's tail.
      { grep -E -A2 'panicked at|^error' "$out/$name.log" | grep -v -e '^--$' -e 'stack backtrace' || tail -5 "$out/$name.log"; } |
        head -24 | sed 's/^/    /' | tee -a "$summary"
    fi
  }

  say "## Tests (ICET_REQUIRE_GPU=1)"
  # ICET_CUDA_SYNC=1: every launch is waited for, so a kernel fault names its kernel.
  step gpu_kernels 240 env ICET_CUDA_SYNC=1 "$bin/gpu_kernels"
  step gpu_conformance 120 env ICET_CUDA_SYNC=1 "$bin/gpu_conformance"
  step gpu_parity 120 env ICET_CUDA_SYNC=1 "$bin/gpu_parity" --test-threads=1
  step mllama_gpu_parity 120 env ICET_CUDA_SYNC=1 "$bin/mllama_parity" gpu_ --test-threads=1
  step judges_gpu_parity 120 env ICET_CUDA_SYNC=1 "$bin/judges_parity" gpu_ --test-threads=1 --nocapture
  grep -h '^PARITY' "$out/gpu_parity.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"

  say ""
  say "## compute-sanitizer over the kernel tests (memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory hazards)"
  # What the emulated device cannot see (it runs one legal schedule at a time and has no shadow
  # memory for races): the GPU's own checker. --error-exitcode makes any report fail the step.
  local sanitizer
  sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1 || true)"
  if [[ -n "$sanitizer" && -x "$sanitizer" ]]; then
    step memcheck 240 "$sanitizer" --tool memcheck --error-exitcode 3 --print-limit 20 "$bin/gpu_kernels" --test-threads=1
    step racecheck 240 "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 3 --print-limit 20 \
      "$bin/gpu_kernels" --test-threads=1 flash_attention row_attention norms argmax
    grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$out/memcheck.log" "$out/racecheck.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"
  else
    say "- compute-sanitizer: NOT RUN — not found on this machine (it ships with the CUDA toolkit, not with the pip nvcc)"
  fi

  say ""
  say "## icet on the GPU (embedded demo)"
  step demo_cuda_f32 60 "$bin/icet" sweep --device cuda --out "$out/demo-cuda-f32"
  step demo_cuda_bf16 60 "$bin/icet" sweep --device cuda --dtype bf16 --out "$out/demo-cuda-bf16"
  step demo_cpu 120 "$bin/icet" sweep --device cpu --out "$out/demo-cpu"
  grep -h 'answers/s' "$out"/demo_*.log 2>/dev/null | sed 's/^/    /' | tee -a "$summary"

  say ""
  say "## Kernel benches (bf16; achieved vs H100 roofline)"
  step kernels_bench 180 "$bin/kernels_bench" --bench
  grep -h '^ROOFLINE' "$out/kernels_bench.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"

  say ""
  say "## End to end at LLaVA-1.5-7B shapes (random bf16 weights, 4 of 32 text layers): icet bench vs transformers"
  local synth="$work/llava7b-4l" stages=(--vision-batches 1,8 --batch-sizes 1,8,32,128 --new-tokens 32)
  step synth_model 180 python3 tools/bench/llava_reference_bench.py make "$synth" --shape llava-7b --text-layers 4
  step icet_bench 180 "$bin/icet" bench --model "$synth" --device cuda --dtype bf16 --image demo/images/checker.png \
    "${stages[@]}" --out "$out/icet-bench.json"
  grep -h -A12 '^stage' "$out/icet_bench.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"
  step reference_bench 240 python3 tools/bench/llava_reference_bench.py bench "$synth" --device cuda --dtype bf16 \
    "${stages[@]}" --out "$out/reference-bench.json"
  grep -h '^REF\|^transformers' "$out/reference_bench.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"
  step bench_ratio 30 python3 tools/bench/llava_reference_bench.py compare "$out/icet-bench.json" "$out/reference-bench.json"
  grep -h '^RATIO' "$out/bench_ratio.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"
  rm -rf "$synth"

  say ""
  say "## torch scaled_dot_product_attention at the same shapes"
  step sdpa_baseline 120 python3 - <<'PY'
import torch, torch.nn.functional as F
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
dev, dt = "cuda", torch.bfloat16
# (name, causal, batch, len, heads, head_dim) — the shapes of benches/kernels.rs's flash_attention.
for name, causal, b, n, h, d in [
    ("vit_8x577_16x64", False, 8, 577, 16, 64),
    ("prefill_causal_1x600_32x128", True, 1, 600, 32, 128),
    ("prefill_causal_1x1000_32x128", True, 1, 1000, 32, 128),
    ("prefill_causal_4x800_32x128", True, 4, 800, 32, 128),
]:
    q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=dt) for _ in range(3))
    for _ in range(5):
        F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(20):
        start.record()
        F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    flops = 4 * b * n * n * h * d / (2 if causal else 1)
    print(f"SDPA {name:<34} {best * 1e6:9.1f} us {flops / best / 1e12:8.1f} TFLOP/s")
PY
  grep -h '^SDPA\|^torch' "$out/sdpa_baseline.log" 2>/dev/null | sed 's/^/    /' | tee -a "$summary"

  say ""
  say "total: $((SECONDS - start)) s, status $status"
  rm -rf "$work"
  exit $status
}

case "${1:-}" in
  --prepare) prepare ;;
  "") device ;;
  *)
    echo "usage: scripts/gpu-check.sh [--prepare]" >&2
    exit 2
    ;;
esac
