#!/usr/bin/env bash
# The CPU backend against transformers (torch), stage by stage, in one interleaved run: the
# Done-when table of issue 15. For each round, shape and thread count it runs `icet bench` and the
# transformers twin (tools/bench/llava_reference_bench.py) on the same random checkpoint, the two
# in alternating order from round to round, then prints min and median over the rounds of each
# side's throughput and their ratio (icet ÷ torch, > 1 means icet is faster).
#
#   tools/bench/cpu_vs_torch.sh [--rounds 3] [--threads 1,2] [--shapes small,vitb-llama768]
#                               [--dir DIR] [--pin] [--repeat 3] [--new-tokens 32] [--summary-only]
#                               [--from-round N]   (add rounds N.. to an earlier run's DIR)
#
# Threads are pinned on both sides: RAYON_NUM_THREADS for icet (its GEMMs and loops run on
# rayon's pool), torch.set_num_threads plus OMP_NUM_THREADS/MKL_NUM_THREADS for torch; --pin also
# binds both to the first N cores with taskset (leave it off on a machine shared with other work:
# a busy pinned core hurts one side only). Checkpoints (f32) are made once under DIR/models:
# `small` with 4 text layers and `vitb-llama768` (the 0.19 G shape) with 8.
# Environment: PYTHON (default: the fixtures venv), ICET (default: target/release/icet, built).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3 THREADS=1,2 SHAPES=small,vitb-llama768 DIR=${TMPDIR:-/tmp}/icet-cpu-vs-torch PIN=0 REPEAT=3 NEW=32 ONLY_SUMMARY=0 FROM=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --summary-only) ONLY_SUMMARY=1; shift ;;
    --from-round) FROM=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --new-tokens) NEW=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "cpu_vs_torch.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-/work/main/tools/fixtures/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=tools/fixtures/.venv/bin/python
TWIN=tools/bench/llava_reference_bench.py
IMAGE=demo/images/checker.png
if [[ $ONLY_SUMMARY == 0 && -z ${ICET:-} ]]; then
  cargo build --release -p probe-cli >&2
  ICET=target/release/icet
fi
mkdir -p "$DIR/models" "$DIR/results"
for shape in ${SHAPES//,/ }; do
  layers=4; [[ $shape == vitb-llama768 ]] && layers=8
  if [[ ! -f $DIR/models/$shape/config.json ]]; then
    "$PYTHON" "$TWIN" make "$DIR/models/$shape" --shape "$shape" --text-layers "$layers" --dtype f32 >&2
  fi
done
pin() { # pin N CMD...: run CMD with N threads on both sides' knobs (and cores 0..N-1 with --pin)
  local n=$1; shift
  if [[ $PIN == 1 ]]; then set -- taskset -c "0-$((n - 1))" "$@"; fi
  RAYON_NUM_THREADS=$n OMP_NUM_THREADS=$n MKL_NUM_THREADS=$n "$@"
}
run_icet() { pin "$2" "$ICET" bench --model "$DIR/models/$1" --image "$IMAGE" --device cpu --repeat "$REPEAT" \
  --new-tokens "$NEW" --out "$3" > "$3.log" 2>&1; }
run_torch() { pin "$2" "$PYTHON" "$TWIN" bench "$DIR/models/$1" --device cpu --dtype f32 --image "$IMAGE" \
  --repeat "$REPEAT" --new-tokens "$NEW" --threads "$2" --out "$3" > "$3.log" 2>&1; }
if [[ $ONLY_SUMMARY == 0 ]]; then
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), rounds $ROUNDS, threads $THREADS, pin $PIN" \
  | tee "$DIR/results/run.txt"
for round in $(seq "$FROM" "$ROUNDS"); do
  for shape in ${SHAPES//,/ }; do
    for t in ${THREADS//,/ }; do
      base=$DIR/results/$shape-t$t-r$round
      echo "round $round: $shape, $t thread(s), load $(cut -d' ' -f1 /proc/loadavg)" >&2
      if (( round % 2 )); then run_icet "$shape" "$t" "$base-icet.json"; run_torch "$shape" "$t" "$base-torch.json"
      else run_torch "$shape" "$t" "$base-torch.json"; run_icet "$shape" "$t" "$base-icet.json"; fi
    done
  done
done
fi
summarise() { "$PYTHON" - "$DIR/results" "$ROUNDS" "$THREADS" "$SHAPES" <<'PY'
import json, statistics, sys
from pathlib import Path
res, rounds, threads, shapes = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4].split(",")
def load(shape, t, side):
    out = {}
    for r in range(1, rounds + 1):
        f = res / f"{shape}-t{t}-r{r}-{side}.json"
        if not f.exists():  # an interrupted run: summarise the rounds it finished
            continue
        for m in json.loads(f.read_text())["measurements"]:
            out.setdefault((m["stage"], m["batch"]), []).append(m["throughput"])
    return out
print("| shape | threads | stage | batch | icet max / median | torch max / median | ratio (median) | ratio (best) |")
print("|---|---|---|---|---|---|---|---|")
short = []
for shape in shapes:
    for t in threads:
        ours, ref = load(shape, t, "icet"), load(shape, t, "torch")
        for key in sorted(set(ours) & set(ref), key=lambda k: (["vision", "prefill", "decode"].index(k[0]), k[1])):
            o, r = ours[key], ref[key]
            ratio, best = statistics.median(o) / statistics.median(r), max(o) / max(r)
            unit = "img/s" if key[0] == "vision" else "tok/s"
            print(f"| {shape} | {t} | {key[0]} | {key[1]} | {max(o):.1f} / {statistics.median(o):.1f} {unit} | "
                  f"{max(r):.1f} / {statistics.median(r):.1f} {unit} | {ratio:.2f} | {best:.2f} |")
            if ratio < 1.0:
                short.append(f"{shape} t{t} {key[0]} b{key[1]}: {ratio:.2f}")
        p1, p8 = ours.get(("prefill", 1)), ours.get(("prefill", 8))
        if p1 and p8 and statistics.median(p8) < statistics.median(p1):
            short.append(f"{shape} t{t}: icet prefill tokens/s at batch 8 below batch 1")
print("\n(throughput: max = the best round, i.e. the minimum time; every round is itself the median of --repeat runs)")
print("below target: " + ("; ".join(short) if short else "none"))
PY
}
summarise
