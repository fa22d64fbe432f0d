#!/usr/bin/env python3
"""Proves the emulated GPU tests can fail: seeds known kinds of CUDA bug into a copy of the tree,
one at a time, and requires tests/gpu_kernels.rs on the emulated device to fail on every one
of them, under the round-robin or the greedy schedule. A mutant that survives, or that no longer
applies to the source (the kernel changed: update the mutant), fails the check.

    scripts/mutation-check.py                 all mutants (~5 min on 2 cores)
    scripts/mutation-check.py --only attn-    the mutants whose name starts so
    scripts/mutation-check.py --list          the mutant table

How: this checkout's gpu_kernels test binary is built as usual; the tree (tracked and unignored
files, without fixtures) is copied to a temporary directory and the mutants are built there, in
a target directory of their own (target/mutants: only icet-kernels and its few dependencies, so
the checkout's artifacts are never replaced by mutated ones). A kernel mutant rebuilds only the
emulator library (build.rs recompiles the one changed file) and runs the unmutated gpu_kernels
binary with ICET_EMU_LIB pointing at it; the launcher mutant (Rust) rebuilds icet-kernels' own
emulated flash test (crates/kernels/tests/emu_launchers.rs) and runs that. nvcc is never used.
Each run has a timeout; a hang counts as caught (and is reported as one).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_target import seed_target  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (name, kind, file, original text, mutated text, tests that must catch it, note)
MUTANTS = [
    ("attn-missing-barrier", "missing barrier", "kernels-cu/attention.cu",
     "        load_tile<T, HD>(Vs, L::LDQ, v + kv_off, kv_stride, BN, keys_here);\n        __syncthreads();\n",
     "        load_tile<T, HD>(Vs, L::LDQ, v + kv_off, kv_stride, BN, keys_here);\n",
     ["flash_attention_matches_twin"], "the K/V tile is read before every thread stored its part"),
    ("attn-causal-off-by-one", "off-by-one causal mask", "kernels-cu/attention.cu",
     "(c < keys_here && j <= last)", "(c < keys_here && j < last)",
     ["flash_attention_matches_twin"], "each query misses its own key"),
    ("attn-dropped-bounds-guard", "dropped bounds guard", "kernels-cu/attention.cu",
     "        if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * stride + c);",
     "        v = *reinterpret_cast<const uint4*>(src + r * stride + c);",
     ["flash_attention_matches_twin"], "tile rows past the sequence are loaded, not zeroed"),
    ("attn-lane-divergent-shuffle", "lane-divergent shuffle", "kernels-cu/attention.cu",
     "            psum = warp_sum(psum);", "            if (lane < 16) psum = warp_sum(psum);",
     ["flash_attention_matches_twin"], "half the warp skips a full-mask shuffle"),
    ("attn-loop-barrier", "barrier only a second schedule needs", "kernels-cu/attention.cu",
     "        __syncthreads();  // K/V/S tiles are reused by the next iteration\n", "",
     ["flash_attention_matches_twin"], "a warp that runs ahead overwrites the K/V tile others still read"),
    ("rel-attn-p2c-reads-c2p-row", "wrong index table", "kernels-cu/attention.cu",
     "pos_query + (long long)p2c[rp] * q_stride", "pos_query + (long long)c2p[rp] * q_stride",
     ["relative_attention_matches_twin"], "position->content reads the content->position bucket"),
    ("rel-attn-missing-barrier", "missing barrier", "kernels-cu/attention.cu",
     "    __syncthreads();  // every warp's state is stored before any thread merges them\n", "",
     ["relative_attention_matches_twin"], "warps merge before every warp stored its softmax state"),
    ("launcher-short-smem", "under-sized shared memory in a launcher", "crates/kernels/src/launch.rs",
     "(bm * ldq + 2 * bn * ldq + bm * ldp) * dtype.size() + bm * lds * 4 + bm * ldo * 4\n",
     "(bm * ldq + 2 * bn * ldq + bm * ldp) * dtype.size() + bm * lds * 4 + bm * ldo * 4 - 64\n",
     ["flash_attention_launcher_matches_twin_on_the_emulated_device"],
     "flash_smem_bytes 64 bytes short of the kernel's layout"),
    ("norms-block-sum-barrier", "barrier only a second schedule needs", "kernels-cu/common.cuh",
     "    __syncthreads();  // the previous use of `scratch` is finished\n", "",
     ["norms_and_fused_residual_norms_match_twins"], "warp 0 overwrites the mean before every warp read it"),
    ("norms-loop-bound", "dropped bounds guard", "kernels-cu/norms.cu",
     "    for (int c = threadIdx.x; c < cols; c += blockDim.x) orow[c] =",
     "    for (int c = threadIdx.x; c <= cols; c += blockDim.x) orow[c] =",
     ["norms_and_fused_residual_norms_match_twins"], "rms_norm writes one column past each row"),
    ("sampling-lane-divergent-shuffle", "lane-divergent shuffle", "kernels-cu/sampling.cu",
     "    m = warp_max(m);\n", "    if ((threadIdx.x & 31) < 16) m = warp_max(m);\n",
     ["argmax_and_sampling_choose_the_cpu_tokens"], "half the warp skips the max reduction"),
    ("sampling-missing-barrier", "missing barrier", "kernels-cu/sampling.cu",
     "        for (int j = k >> 1; j > 0; j >>= 1) {\n            __syncthreads();\n",
     "        for (int j = k >> 1; j > 0; j >>= 1) {\n",
     ["argmax_and_sampling_choose_the_cpu_tokens"], "bitonic steps overlap"),
    ("rows-bounds-guard", "dropped bounds guard", "kernels-cu/rows.cu",
     "    for (long long c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];",
     "    for (long long c = threadIdx.x; c <= cols; c += blockDim.x) dst[c] = src[c];",
     ["row_movement_is_exact"], "row copies run one element long"),
    ("pointwise-grid-loop-bound", "dropped bounds guard", "kernels-cu/common.cuh",
     "threadIdx.x; i < (long long)(n); \\", "threadIdx.x; i <= (long long)(n); \\",
     ["pointwise_kernels_match_twins"], "every grid-stride loop touches element n"),
]

SCHEDULES = ["rr", "greedy"]


def log(msg: str) -> None:
    print(msg, flush=True)


def cargo_json(args: list[str], cwd: Path, env: dict) -> list[dict]:
    p = subprocess.run(["cargo", *args, "--message-format=json"], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join(l for l in p.stdout.splitlines() if '"rendered"' in l)[-4000:]
        sys.exit(f"mutation-check: cargo {' '.join(args)} failed:\n{p.stderr[-4000:]}\n{tail}")
    return [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]


def executable(msgs: list[dict], target: str) -> str:
    for m in msgs:
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == target:
            return m["executable"]
    sys.exit(f"mutation-check: no executable for {target}")


def emu_library(msgs: list[dict]) -> Path:
    for m in msgs:
        if m.get("reason") == "build-script-executed" and "icet-kernels" in m["package_id"]:
            return Path(m["out_dir"]) / "emu" / "libicet_emu.so"
    sys.exit("mutation-check: the icet-kernels build script did not report its OUT_DIR")


def run_tests(binary: str, tests: list[str], env: dict, timeout: int) -> tuple[bool, str, float]:
    """(failed, evidence, seconds) for one run of `tests` in `binary`."""
    t0 = time.time()
    try:
        p = subprocess.run([binary, "--test-threads=1", *tests], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, f"timed out after {timeout} s (a hang)", time.time() - t0
    out = p.stdout + p.stderr
    if p.returncode == 0:
        if "SKIPPED" in out or " 0 passed" in out:
            sys.exit(f"mutation-check: {tests} did not run on the emulated device:\n{out[-2000:]}")
        return False, "", time.time() - t0
    evidence = ""
    lines = out.splitlines()
    for i, l in enumerate(lines):
        if "icet-emu:" in l or "emulated launch" in l or "emulated device" in l:
            evidence = l.strip()
            break
        if "panicked at" in l and i + 1 < len(lines):
            evidence = lines[i + 1].strip()
            break
    if not evidence:
        evidence = f"exit status {p.returncode}" + (" (killed by a signal)" if p.returncode < 0 else "")
    return True, evidence, time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the mutants whose name starts with this")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not first check that the unmutated tests pass (CI ran them already)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree")
    ap.add_argument("--all-schedules", action="store_true",
                    help="run every schedule on every mutant (by default a mutant caught under one is not run under the next)")
    args = ap.parse_args()
    mutants = [m for m in MUTANTS if m[0].startswith(args.only)]
    if args.list or not mutants:
        for name, kind, file, _, _, tests, note in MUTANTS:
            log(f"{name:34} {kind:40} {file:30} {note}")
        return 0 if args.list else 1

    work = Path(tempfile.mkdtemp(prefix="icet-mutants-"))
    tree = work / "tree"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for f in files:
        if not f or f.startswith(("tests/fixtures/", "demo/", "docs/")) or not (ROOT / f).is_file():
            continue
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tree / f)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ICET_", "NVCC"))}
    base_env["ICET_CUDA_DEVICE"] = "emu"
    env = {**base_env, "CARGO_TARGET_DIR": str(ROOT / "target" / "mutants")}

    t0 = time.time()
    log("mutation-check: building this checkout's gpu_kernels test binary")
    # --workspace, not -p: with -p cargo resolves features for that package alone and rebuilds
    # dependencies the checkout already built for `cargo test --workspace`.
    baseline = executable(cargo_json(["test", "--workspace", "--test", "gpu_kernels", "--no-run"], ROOT,
                                     base_env), "gpu_kernels")
    # Only icet-kernels is compiled for the copy: its dependencies are the checkout's.
    seed_target(ROOT / "target" / "debug", ROOT / "target" / "mutants" / "debug")
    log("mutation-check: building the copy's icet-kernels (target/mutants)")
    cargo_json(["build", "-p", "icet-kernels", "--profile", "test"], tree, env)
    log(f"mutation-check: built in {time.time() - t0:.0f} s")
    if not args.skip_baseline:
        tests = sorted({t for m in mutants for t in m[5] if m[2].endswith((".cu", ".cuh"))})
        for sched in SCHEDULES:
            failed, evidence, secs = run_tests(baseline, tests, {**env, "ICET_EMU_SCHEDULE": sched}, args.timeout)
            if failed:
                log(f"mutation-check: the UNMUTATED tests fail under {sched}: {evidence}")
                return 1
            log(f"mutation-check: baseline passes under {sched} ({secs:.0f} s)")

    results = []
    for name, kind, file, old, new, tests, note in mutants:
        path = tree / file
        original = path.read_text()
        if original.count(old) != 1:
            results.append((name, kind, file, "DOES NOT APPLY", {}, f"expected the text once, found it {original.count(old)} times"))
            continue
        path.write_text(original.replace(old, new))
        try:
            t1 = time.time()
            if file.endswith((".cu", ".cuh")):
                lib = emu_library(cargo_json(["build", "-p", "icet-kernels", "--profile", "test"], tree, env))
                saved = work / f"{name}.so"
                shutil.copy2(lib, saved)
                binary, run_env = baseline, {**env, "ICET_EMU_LIB": str(saved)}
            else:
                binary = executable(cargo_json(["test", "-p", "icet-kernels", "--test", "emu_launchers", "--no-run"], tree,
                                               env), "emu_launchers")
                run_env = dict(env)
            build_secs = time.time() - t1
            caught, evidence = {}, ""
            for sched in SCHEDULES:
                failed, ev, secs = run_tests(binary, tests, {**run_env, "ICET_EMU_SCHEDULE": sched}, args.timeout)
                caught[sched] = (failed, secs)
                if failed and not evidence:
                    evidence = f"[{sched}] {ev}"
                if failed and not args.all_schedules:
                    break  # caught: the next schedule would only say it again
            verdict = "caught" if any(f for f, _ in caught.values()) else "SURVIVED"
            results.append((name, kind, file, verdict, caught, evidence))
            log(f"mutation-check: {name}: {verdict} (build {build_secs:.0f} s; "
                + ", ".join(f"{s} {'fails' if f else 'passes'} in {t:.0f} s" for s, (f, t) in caught.items()) + ")")
        finally:
            path.write_text(original)


    log("")
    log("| mutant | kind | file | rr | greedy | verdict | first failure |")
    log("|---|---|---|---|---|---|---|")
    bad = 0
    for name, kind, file, verdict, caught, evidence in results:
        cell = lambda s: ("fails" if caught[s][0] else "passes") if s in caught else "-"
        log(f"| {name} | {kind} | {file} | {cell('rr')} | {cell('greedy')} | {verdict} | {evidence[:160]} |")
        bad += verdict != "caught"
    log("")
    log(f"mutation-check: {len(results) - bad} of {len(results)} mutants caught in {time.time() - t0:.0f} s")
    if args.keep or bad:
        log(f"mutation-check: tree kept at {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
